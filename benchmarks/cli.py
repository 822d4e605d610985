"""pfcn-bench: time pfcn artifacts side by side with the official algorithm, per stage, as % of the compute floor.

    pfcn-bench --model model_final.pth model.onnx [model_network.onnx] [--config C] --sizes 800x1333
               [--images DIR] [--batch N] [--warmup N] [--iters N] [--threads N] [--device cpu|cuda]
               [--fast fp16 fp16+panoptic fp16+panoptic+compile ...]
               [--out DIR] [--profile] [--compare old.json [--max-regression 0.1]]
    pfcn-bench --compare old.json --against new.json

Every artifact runs through ``pfcn.runtime.open_model`` and ``Backend.run``. A PyTorch checkpoint also gets a
per-stage row (the model's own stage functions) and the official baseline row (same weights, same images). A
``--graph network`` ONNX export next to an end-to-end one splits the latter into network and the rest. ``--fast``
adds rows of the PyTorch fast path (``pfcn.runtime.torch_gpu``) on the checkpoint's weights, one per spec.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

import numpy as np


from pfcn.arguments import add_progress_arg, run_cli

from . import report
from .environment import environment, machine_name
from .floor import BYTES_NOTE, DEFORM_NOTE, cached_gemm_peak, count_network, gpu_gemm_peak
from .measure import RSS_METHOD, GpuPeak, PeakRSS, latency_stats, median
from .rows import BackendRow, NetworkRow, OfficialRow, PyTorchStages, profile_by_stage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfcn-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    p.add_argument("--model", nargs="+", default=[], metavar="ARTIFACT",
                   help="checkpoints (.pth/.pt/.pkl), ONNX graphs (e2e or network, any precision), engines")
    p.add_argument("--config", help="config YAML for checkpoints (default: the config stored in the checkpoint)")
    p.add_argument("--sizes", nargs="+", default=["800x1333"], metavar="HxW", help="input image sizes (default 800x1333)")
    p.add_argument("--images", help="folder of images, resized to each size (default: synthetic images)")
    p.add_argument("--batch", type=int, default=1, help="images per iteration (default 1)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations per row (default 1)")
    p.add_argument("--iters", type=int, default=5, help="timed iterations per row (default 5)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every backend (default: library's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    p.add_argument("--out", default="bench_out", help="folder for <machine>_<date>.json/.md/.png (default bench_out)")
    p.add_argument("--name", help="file stem of the results (default <machine>_<date>)")
    p.add_argument("--fast", nargs="+", default=[], metavar="SPEC",
                   help="rows of the PyTorch fast path on the checkpoint's weights: a precision (fp32, fp16, bf16) "
                        "joined by '+' to options: panoptic (instance masks stay on the device), compile "
                        "(torch.compile), eager (no CUDA graphs), interpolate (the official F.interpolate resize, one "
                        "graph per image size); e.g. fp16 fp16+panoptic+compile")
    p.add_argument("--no-official", action="store_true", help="skip the official baseline row")
    p.add_argument("--no-stages", action="store_true", help="skip the per-stage PyTorch row")
    p.add_argument("--no-interleave", action="store_true",
                   help="run rows one after another (default: one iteration of each row in turn)")
    p.add_argument("--profile", action="store_true",
                   help="also profile each end-to-end ONNX graph once (ONNX Runtime node profiling, by stage)")
    p.add_argument("--compare", metavar="OLD_JSON", help="compare with an earlier result; exit 1 past the threshold")
    p.add_argument("--against", metavar="NEW_JSON", help="with --compare and no --model: compare two result files")
    p.add_argument("--max-regression", type=float, default=0.1,
                   help="allowed slow-down of a row's median for --compare (default 0.1 = 10 %%)")
    add_progress_arg(p)
    return p


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--sizes {text!r}: expected HxW, e.g. 800x1333") from None
    if h < 1 or w < 1:
        raise ValueError(f"--sizes {text!r}: height and width must be positive")
    return h, w


# ------------------------------------------------------------------------------------------------ inputs
def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random colour field (coarse noise upsampled) with fine noise: photo-like statistics, deterministic."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.int16)
    noise = rng.integers(-12, 13, size=(h, w, 3), dtype=np.int16)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def image_pool(size: tuple[int, int], folder: str | None, count: int) -> list[np.ndarray]:
    if folder is None:
        return [synthetic_image(size[0], size[1], seed) for seed in range(count)]
    from PIL import Image

    from pfcn.image_io import list_images, read_image

    paths = list_images([folder])
    if not paths:
        raise ValueError(f"--images {folder}: no images found")
    out = []
    for path in paths[:count]:
        im = read_image(path)
        if im.shape[:2] != size:
            im = np.asarray(Image.fromarray(im).resize((size[1], size[0]), Image.BILINEAR))
        out.append(im)
    return out


# ------------------------------------------------------------------------------------------------ models
FAST_OPTIONS = {"panoptic": ("outputs", "panoptic"), "compile": ("compile", True), "eager": ("cuda_graphs", False),
                "interpolate": ("resize", "interpolate")}


def parse_fast(spec: str) -> dict[str, Any]:
    """``fp16+panoptic+compile`` -> TorchGpuBackend options; ValueError naming the spec and the bad part."""
    from pfcn.runtime.torch_gpu import HALF_DTYPES

    precision, *flags = spec.lower().split("+")
    if precision not in HALF_DTYPES:
        raise ValueError(f"--fast {spec!r}: starts with a precision ({', '.join(HALF_DTYPES)}), got {precision!r}")
    options: dict[str, Any] = {"precision": precision}
    for flag in flags:
        if flag not in FAST_OPTIONS:
            raise ValueError(f"--fast {spec!r}: unknown option {flag!r} (choose from {', '.join(FAST_OPTIONS)})")
        key, value = FAST_OPTIONS[flag]
        options[key] = value
    if options.get("compile"):
        options["compile_mode"] = "default"  # autotuning would take minutes per input signature
    return options


def fast_label(backend: Any) -> str:
    """A fast-path row's label, from what the backend does."""
    parts = ["CUDA graphs" if backend.runner.cuda_graphs else "static buffers"]
    if backend.output_set == "panoptic":
        parts.append("panoptic outputs")
    if backend.compiled:
        parts.append("torch.compile")
    if backend.resize == "interpolate":
        parts.append("interpolate resize")
    return f"pytorch fast {backend.precision} e2e ({', '.join(parts)})"


class Opened:
    """One artifact: its backend, kind, config and the model used for FLOP counting."""

    def __init__(self, path: str, backend: Any, kind: str, cfg: Any):
        self.path, self.backend, self.kind, self.cfg = path, backend, kind, cfg
        self.precision = backend.info.precision
        self.graph = backend.info.graph
        self.config_hash = backend.info.config_hash


def onnx_graph_kind(path: str) -> str:
    """The "graph" metadata of a pfcn ONNX file, read without building a session."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return props.get("graph", "e2e")


def open_artifact(path: str, args: argparse.Namespace) -> Opened:
    from pfcn.runtime.loader import artifact_kind, load_model_config, open_model

    kind = artifact_kind(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"--model {path}: no such file")
    if kind == "onnx" and onnx_graph_kind(path) == "network":
        from pfcn.runtime.ort import OrtBackend  # open_model opens e2e graphs only; a network graph is bench-only

        backend = OrtBackend(path, device=args.device, threads=args.threads, batch_size=args.batch, graph="network")
        return Opened(path, backend, "onnxruntime-network", _stored_cfg(backend, path))
    backend = open_model(path, config=args.config if kind == "checkpoint" else None, device=args.device,
                         threads=args.threads, batch_size=args.batch)
    if kind == "checkpoint":
        return Opened(path, backend, "pytorch", load_model_config(path, args.config))
    return Opened(path, backend, backend.name if backend.name in report.KINDS else "other",
                  _stored_cfg(backend, path))


def _open_fast(args: argparse.Namespace, pytorch: Opened | None) -> list[tuple[Opened, str]]:
    """The ``--fast`` rows: the fast path built from the checkpoint's backend (same weights, own copy)."""
    if not args.fast:
        return []
    if pytorch is None:
        raise ValueError("--fast runs the PyTorch fast path on a checkpoint's weights: pass a .pth with --model")
    from pfcn.runtime.torch_gpu import TorchGpuBackend

    out = []
    for spec in args.fast:
        backend = TorchGpuBackend.from_predictor(pytorch.backend, **parse_fast(spec))
        out.append((Opened(pytorch.path, backend, "pytorch-fast", pytorch.cfg), fast_label(backend)))
    return out


def _stored_cfg(backend: Any, path: str) -> Any:
    from pfcn.config import config_from_yaml

    stored = backend.info.props.get("config")
    return config_from_yaml(stored, [], source=f"{path} (stored config)") if stored else None


def _labels(models: list[Opened]) -> list[str]:
    base = []
    for m in models:
        name = {"pytorch": "pytorch eager", "onnxruntime": "onnxruntime", "onnxruntime-network": "onnxruntime",
                "tensorrt": "tensorrt"}.get(m.kind, m.kind)
        base.append(f"{name} {m.precision} {m.graph}")
    return [f"{b} [{Path(m.path).name}]" if base.count(b) > 1 else b for b, m in zip(base, models)]


# ------------------------------------------------------------------------------------------------ the run
def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pfcn.model import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        raise ValueError("--batch and --iters must be >= 1 and --warmup >= 0")
    sizes = [parse_size(s) for s in args.sizes]
    models = [open_artifact(p, args) for p in args.model]
    labels = _labels(models)
    pytorch = next((m for m in models if m.kind == "pytorch"), None)
    fast = _open_fast(args, pytorch)
    notes: list[str] = []
    skipped: list[str] = []

    plan: list[dict[str, Any]] = []  # one entry per row and size
    for size in sizes:
        for m, label in zip(models, labels):
            fixed = m.backend.info.fixed_hw
            if m.kind != "onnxruntime-network" and fixed is not None and (size[0] > fixed[0] or size[1] > fixed[1]):
                skipped.append(f"{label} at {size[0]}x{size[1]}: larger than the graph's fixed input "
                               f"{fixed[0]}x{fixed[1]}")
                continue
            if m.kind == "onnxruntime-network":
                inp = m.cfg.INPUT
                row: Any = NetworkRow(m.backend, label, inp.MIN_SIZE_TEST, inp.MAX_SIZE_TEST)
            else:
                row = BackendRow(m.backend, label, args.device)
            plan.append({"row": row, "model": m, "size": size, "kind": m.kind})
            if m.kind == "pytorch" and not args.no_stages:
                plan.append({"row": PyTorchStages(m.backend, f"{label} (stages)", args.device), "model": m,
                             "size": size, "kind": "pytorch-stages"})
            if m is pytorch:
                plan += [{"row": BackendRow(f.backend, label_, args.device), "model": f, "size": size,
                          "kind": "pytorch-fast"} for f, label_ in fast]
        if pytorch is not None and not args.no_official:
            plan.insert(len(plan) - sum(1 for p in plan if p["size"] == size),
                        {"row": OfficialRow(pytorch.backend, pytorch.cfg, "official (detectron2-style, dynamic)",
                                            args.device), "model": pytorch, "size": size, "kind": "official"})
    if not plan:
        raise ValueError("nothing to run: " + ("; ".join(skipped) if skipped else "pass --model"))
    if pytorch is None and not args.no_official:
        notes.append("no official row: the official baseline runs on a PyTorch checkpoint's weights; pass one with "
                     "--model")

    pools = {size: image_pool(size, args.images, max(args.batch, 2)) for size in sizes}
    total = len(plan) * (args.warmup + args.iters)
    progress = _progress(total, args.no_progress)
    state = [{"times": [], "stages": [], "rss": 0.0, "gpu": None} for _ in plan]

    def one(i: int, it: int, timed: bool) -> None:
        entry = plan[i]
        pool = pools[entry["size"]]
        images = [pool[(it * args.batch + k) % len(pool)] for k in range(args.batch)]
        progress.set_description(f"{entry['row'].label} {entry['size'][0]}x{entry['size'][1]}")
        with PeakRSS() as rss, GpuPeak(args.device) as gpu:
            seconds, stages = entry["row"].step(images)
        st = state[i]
        st["rss"] = max(st["rss"], rss.mb)
        if gpu.mb is not None:
            st["gpu"] = max(st["gpu"] or 0.0, gpu.mb)
        if timed:
            st["times"].append(seconds)
            st["stages"].append(stages)
        progress.update(1)

    if args.no_interleave:
        for i in range(len(plan)):
            for it in range(args.warmup + args.iters):
                one(i, it, it >= args.warmup)
    else:
        for it in range(args.warmup + args.iters):
            for i in range(len(plan)):
                one(i, it, it >= args.warmup)
    progress.close()

    # ---- the compute floor
    out_dir = Path(args.out)
    cpu_key = environment()["cpu"]["model"]
    if args.device.startswith("cuda"):
        gemm = gpu_gemm_peak(args.device)
    else:
        gemm = cached_gemm_peak(out_dir / "gemm_peak.json",
                                f"{cpu_key}|threads={args.threads}|torch={torch.__version__}", args.threads)
    counts: dict[str, dict[str, Any]] = {}
    flops_of: dict[tuple, int] = {}
    for entry in plan:
        m, size = entry["model"], entry["size"]
        if m.cfg is None:
            continue
        net_model = m.backend.model if m.kind in ("pytorch", "pytorch-fast") else build_model(m.cfg)
        net = net_model.network_size(*size)
        key = (m.config_hash or m.path, net)
        if key not in flops_of:
            c = count_network(net_model, net, args.batch)
            flops_of[key] = c["flops"]
            counts.setdefault(Path(m.path).name, {})[f"{net[0]}x{net[1]} batch {args.batch}"] = c
        entry["flops"], entry["net"] = flops_of[key], net

    # ---- rows
    rows = []
    for entry, st in zip(plan, state):
        lat = latency_stats(st["times"])
        stages = {k: median([s.get(k, 0.0) for s in st["stages"]]) for k in st["stages"][0]} if st["stages"][0] else {}
        m = entry["model"]
        flops = entry.get("flops")
        precision = "fp32" if entry["kind"] == "official" else m.precision
        peak = gemm.get("by_precision", {}).get(precision, gemm["peak_flops"])
        rows.append({
            "label": entry["row"].label, "kind": entry["kind"], "artifact": Path(m.path).name,
            "precision": precision,
            "graph": "official" if entry["kind"] == "official" else m.graph,
            "size": list(entry["size"]), "net_size": list(entry.get("net") or ()), "batch": args.batch,
            "latency_s": lat, "fps": 1.0 / lat["p50"] * args.batch, "throughput": args.batch / lat["p50"],
            "stages_s": stages, "peak_rss_mb": st["rss"], "gpu_peak_mb": st["gpu"],
            "flops": flops, "floor_pct": (100.0 * flops / lat["p50"] / peak) if flops else None,
            "vs_official": None, "includes": entry["row"].includes,
        })
    _pair_network_rows(rows, plan)
    for r in rows:
        official = next((o for o in rows if o["kind"] == "official" and o["size"] == r["size"]), None)
        if official is not None:
            r["vs_official"] = official["latency_s"]["p50"] / r["latency_s"]["p50"]

    if args.profile:
        _profile_rows(rows, plan, pools, args, out_dir)

    notes += [f"skipped {s}" for s in skipped]
    notes += [f"peak RSS: {RSS_METHOD}", DEFORM_NOTE, BYTES_NOTE,
              "% of floor = network FLOPs / median end-to-end latency / measured GEMM peak (on a GPU: the peak of the "
              "row's precision)",
              "fps = images per second at the median latency (batch / p50); throughput is the same figure"]
    for m in models + [f for f, _ in fast]:
        m.backend.close()
    return {
        "schema": report.SCHEMA,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": ["pfcn-bench"] + [a if not a.startswith("/") else Path(a).name for a in sys.argv[1:]],
        "settings": {"batch": args.batch, "warmup": args.warmup, "iters": args.iters, "threads": args.threads,
                     "device": args.device, "sizes": [list(s) for s in sizes],
                     "images": Path(args.images).name if args.images else "synthetic",
                     "interleave": not args.no_interleave},
        "environment": environment(),
        "floor": {"peak_flops": gemm["peak_flops"], "gemm": gemm, "models": counts},
        "rows": rows,
        "notes": notes,
    }


def _pair_network_rows(rows: list[dict], plan: list[dict]) -> None:
    """Split each end-to-end ONNX row by the network graph of the same model, size and batch."""
    for r, entry in zip(rows, plan):
        if entry["kind"] != "onnxruntime":
            continue
        for n, other in zip(rows, plan):
            if (other["kind"] == "onnxruntime-network" and other["size"] == entry["size"]
                    and other["model"].config_hash == entry["model"].config_hash
                    and n["precision"] == r["precision"]):
                net = n["latency_s"]["p50"]
                r["stages_s"] = {"network": net, "non_network": max(0.0, r["latency_s"]["p50"] - net)}
                r["network_row"] = n["label"]
                break


def _profile_rows(rows: list[dict], plan: list[dict], pools: dict, args: argparse.Namespace, out_dir: Path) -> None:
    """One profiled run of each end-to-end ONNX graph (a separate session: profiling slows every node)."""
    from pfcn.runtime.backend import canvas_for
    from pfcn.runtime.ort import OrtBackend

    profiles = out_dir / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    for r, entry in zip(rows, plan):
        if entry["kind"] != "onnxruntime":
            continue
        backend = OrtBackend(entry["model"].path, device=args.device, threads=args.threads, batch_size=args.batch,
                             profile=profiles / Path(entry["model"].path).stem)
        images = pools[entry["size"]][: min(args.batch, backend.max_batch())]
        canvas, sizes = canvas_for(backend, images)
        for _ in range(2):  # the first run allocates; the profile is read from the last
            backend.run(canvas, sizes)
        path = backend.end_profiling()
        r["profile"] = profile_by_stage(path, last_run_only=True)
        r["profile"]["file"] = f"profiles/{path.name}"
        backend.close()


def _progress(total: int, disabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=disabled, unit="run", dynamic_ncols=True, file=sys.stderr)


# ------------------------------------------------------------------------------------------------ entry point
def write_outputs(doc: dict, out_dir: Path, stem: str) -> dict[str, Path]:
    import json

    errors = report.validate(doc)
    if errors:  # a bug in pfcn-bench, not a user error
        raise RuntimeError("pfcn-bench produced an invalid result: " + "; ".join(errors))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    report.atomic_write_text(paths["json"], json.dumps(doc, indent=1) + "\n")
    report.chart(doc, paths["png"])
    report.atomic_write_text(paths["md"], report.markdown(doc, paths["png"].name))
    return paths


def do_compare(old_path: str, new: dict, threshold: float) -> int:
    old = report.load_result(old_path)
    pairs, regressed = report.compare(old, new, threshold)
    if not pairs:
        print(f"compare: no row of {old_path} matches this run (rows match by label, size and batch)")
        return 1
    print(f"compare with {old_path} (new / old median; regression past {threshold:.0%}):")
    for key, a, b, ratio in pairs:
        flag = "  REGRESSION" if b > a * (1 + threshold) else ""
        print(f"  {key}: {a:.4g} s -> {b:.4g} s  ({ratio:.2f}x){flag}")
    return 1 if regressed else 0


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_regression < 0:
        raise ValueError("--max-regression must be >= 0")
    if not args.model:
        if args.compare and args.against:
            return do_compare(args.compare, report.load_result(args.against), args.max_regression)
        raise ValueError("pass --model ARTIFACT [...] (or --compare OLD --against NEW)")
    if args.against:
        raise ValueError("--against compares two files; it cannot be combined with --model")
    doc = run_benchmark(args)
    stem = args.name or f"{machine_name()}_{dt.date.today().isoformat()}"
    paths = write_outputs(doc, Path(args.out), stem)
    report.print_table(doc)
    print("pfcn-bench: wrote " + ", ".join(str(p) for p in paths.values()))
    if args.compare:
        return do_compare(args.compare, doc, args.max_regression)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
