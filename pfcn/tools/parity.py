"""pfcn-parity: does an artifact give what the reference gives? Tensors, panoptic maps and PQ, with gates.

    pfcn-parity --model A [--reference R] [--config C] (--dataset NAME | --images DIR [--gt-json J --gt-png DIR])
                [--out DIR] [--max-dpq 0.05] [--min-pixel-agreement 0.999] [--limit N] [KEY VALUE ...]

A and R are any artifacts (checkpoint, .onnx of any precision, .engine). The reference is by default the PyTorch
checkpoint given by --reference/--weights, built from --config, the config stored in the checkpoint, or the config
embedded in A. Both see the same uint8 canvas per image. Reported: per output the max/mean absolute and max relative
error over the slots both mark valid; per image the pixel agreement and segment matching of the panoptic maps; with
ground truth, PQ/SQ/RQ of both and their difference. Exit code 1 when a gate fails or an image could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pfcn.arguments import add_model_args, add_progress_arg, ensure_dir, make_parser, parse_with_overrides, run_cli
from pfcn.contract import ArtifactError, ArtifactInfo, atomic_write_bytes
from pfcn.data.ground_truth import ground_truth, image_path_for, model_categories
from pfcn.evaluation.panoptic_format import PanopticGroundTruth
from pfcn.image_io import ImageReadError, list_images, read_image
from pfcn.result import results_from_outputs
from pfcn.runtime import open_model
from pfcn.runtime.backend import Backend, canvas_for
from pfcn.runtime.compare import result_agreement, tensor_errors


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("pfcn-parity", __doc__)
    p.add_argument("--model", "--onnx", dest="model", required=True, metavar="PATH",
                   help="the artifact under test: .onnx (any precision), .engine or a checkpoint")
    p.add_argument("--reference", "--weights", dest="reference", default=None, metavar="PATH",
                   help="the reference artifact (default kind: a PyTorch checkpoint)")
    p.add_argument("--dataset", help="dataset name (under $PFCN_DATASETS) or a dataset folder")
    p.add_argument("--images", help="folder of images")
    p.add_argument("--gt-json", help="COCO panoptic ground truth (enables the PQ gate)")
    p.add_argument("--gt-png", help="ground-truth PNG folder (default: the JSON path without .json)")
    p.add_argument("--out", default="parity_out", help="output folder for parity.json / parity.md")
    p.add_argument("--limit", type=int, default=0, help="compare at most N images (0 = all)")
    p.add_argument("--max-dpq", type=float, default=0.05, help="gate: |PQ(model) - PQ(reference)| in PQ points")
    p.add_argument("--min-pixel-agreement", type=float, default=0.999, help="gate: per-image pixel agreement")
    add_progress_arg(p)
    add_model_args(p, model_flag=False)
    return p


def _inputs(args) -> tuple[list[tuple[Any, Path]], PanopticGroundTruth | None]:
    """(image_id, path) pairs and the ground truth (if any)."""
    if args.dataset or args.gt_json:
        gt, images = ground_truth(args.dataset, args.images, args.gt_json, args.gt_png)
        if images is None:
            raise ValueError("--gt-json needs --images (the photographs)")
        return [(i, image_path_for(gt, images, i)) for i in gt.image_ids], gt
    if args.images:
        return [(p.stem, p) for p in list_images([args.images])], None
    raise ValueError("give --dataset NAME or --images DIR")


def _evaluate(gt: PanopticGroundTruth, results: list[tuple[Any, Any]]) -> dict[str, Any]:
    from pfcn.evaluation.evaluator import PanopticEvaluator

    evaluator = PanopticEvaluator(gt, instance_ap=False, semantic=False)
    for image_id, result in results:
        evaluator.process(result, image_id)
    return evaluator.evaluate(require_all=False)


def _pq_row(metrics: dict[str, Any]) -> dict[str, float]:
    """PQ/SQ/RQ (percent) of All/Things/Stuff as flat keys, e.g. PQ_All."""
    pq = metrics["panoptic"]
    return {f"{k}_{group}": float(pq[group][k]) for group in ("All", "Things", "Stuff") for k in ("PQ", "SQ", "RQ")}


def open_reference(args, model: Backend) -> Backend:
    """The reference backend: --reference, with the config from --config, the checkpoint, or the model artifact."""
    from pfcn.runtime.loader import artifact_kind, load_model_config

    if args.reference is None and not args.random_weights:
        raise ValueError("give the reference: --reference/--weights CHECKPOINT (the PyTorch model the artifact was "
                         "exported from), or another artifact")
    cfg = None
    if args.reference is None or artifact_kind(args.reference) == "checkpoint":
        embedded = model.info.props.get("config")
        cfg = load_model_config(args.reference, args.config, args.opts,
                                fallback=(embedded, f"{model.info.source} (embedded config)") if embedded else None)
    ref = open_model(args.reference, device=args.device, providers=args.providers, threads=args.threads,
                     random_weights=args.random_weights, cfg=cfg)
    if model.info.net_size is not None and hasattr(ref, "fixed_net_size"):
        ref.fixed_net_size = model.info.net_size  # run PyTorch on the fixed graph's network canvas
    return ref


# Config keys that do not change what a model computes at inference: where its weights were read from, and the
# training, data and logging settings. Two artifacts that differ only there are the same model.
NOT_INFERENCE = ("MODEL.WEIGHTS", "OUTPUT_DIR", "SEED", "VIS_PERIOD", "CUDNN_BENCHMARK", "SOLVER.", "DATASETS.",
                 "DATALOADER.")


def config_difference(a: ArtifactInfo, b: ArtifactInfo) -> list[str]:
    """Config keys whose values differ between two artifacts and change what they compute (empty when equal,
    unknown, or differing only in ``NOT_INFERENCE`` keys)."""
    ha, hb = a.config_hash, b.config_hash
    if not ha or not hb or ha == hb:
        return []
    import yaml

    def flat(text: str) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def walk(node: Any, prefix: str) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, f"{prefix}{k}.")
            else:
                out[prefix[:-1]] = node
        walk(yaml.safe_load(text) or {}, "")
        return out

    fa, fb = flat(a.props.get("config", "")), flat(b.props.get("config", ""))
    keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
    if fa and fb and keys and all(_not_inference(k) for k in keys):
        return []
    return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in keys] or [f"config_hash {ha} vs {hb}"]


def _not_inference(key: str) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in NOT_INFERENCE)


def _canvas(model: Backend, ref: Backend, image, name: str):
    """One canvas both backends accept: the fixed-size artifact's, else the image's own."""
    fixed = {b.info.fixed_hw for b in (model, ref) if b.info.fixed_hw is not None}
    if len(fixed) > 1:
        raise ArtifactError(f"the two artifacts have different fixed inputs {sorted(fixed)}; compare artifacts of "
                            "one input size")
    return canvas_for(model if model.info.fixed_hw else ref, [image], [name])


def _main(argv: list[str] | None) -> int:
    args = parse_with_overrides(build_parser(), argv)
    model = open_model(args.model, device=args.device, providers=args.providers, threads=args.threads)
    ref = open_reference(args, model)
    differs = config_difference(ref.info, model.info)
    if differs:
        print(f"pfcn-parity: NOTE the two artifacts come from different configs ({len(differs)} key(s) differ); "
              "expect the gates to fail:\n  " + "\n  ".join(differs[:15]), file=sys.stderr)
    items, gt = _inputs(args)
    if args.limit:
        items = items[: args.limit]
    if not items:
        raise ValueError("no images to compare")
    meta = model.info.meta
    if gt is not None:
        meta = model_categories(meta, gt.meta, model.info.source)
    sums: dict[str, dict[str, float]] = {}
    per_image, res_ref, res_model, failures = [], [], [], []
    seconds = {"reference": 0.0, "model": 0.0}
    for image_id, path in tqdm(items, desc="pfcn-parity", unit="img", disable=args.no_progress):
        try:
            image = read_image(path)
        except (ImageReadError, OSError) as e:
            failures.append((path, str(e)))
            continue
        canvas, sizes = _canvas(model, ref, image, str(path))
        start = time.perf_counter()
        out_ref = ref.run(canvas, sizes)
        seconds["reference"] += time.perf_counter() - start
        start = time.perf_counter()
        out_model = model.run(canvas, sizes)
        seconds["model"] += time.perf_counter() - start
        for name, e in tensor_errors(out_ref, out_model).items():
            acc = sums.setdefault(name, {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0, "mismatch": 0.0,
                                         "compared": 0})
            acc["max_abs"] = max(acc["max_abs"], e["max_abs"])
            acc["max_rel"] = max(acc["max_rel"], e["max_rel"])
            acc["mean_abs"] += e["mean_abs"] * e["compared"]
            acc["mismatch"] += e["mismatch"] * e["compared"]
            acc["compared"] += e["compared"]
        size = [tuple(sizes[0].tolist())]
        a = results_from_outputs({k: v[:1] for k, v in out_ref.items()}, size, meta, [path.name], [image_id])[0]
        b = results_from_outputs({k: v[:1] for k, v in out_model.items()}, size, meta, [path.name], [image_id])[0]
        per_image.append({"image": str(path.name), **result_agreement(a, b).as_dict()})
        res_ref.append((image_id, a))
        res_model.append((image_id, b))
    errors = {name: dict(e, mean_abs=e["mean_abs"] / max(1, e["compared"]),
                         mismatch=e["mismatch"] / max(1, e["compared"])) for name, e in sums.items()}
    report: dict[str, Any] = {
        "model": str(args.model), "reference": ref.info.source, "backends": [model.name, ref.name],
        "precision": model.info.precision, "images": len(per_image), "config_differences": differs,
        "tensor_errors": errors, "per_image": per_image, "seconds": seconds,
        "failed_images": [{"image": str(p), "error": why} for p, why in failures]}
    gates: dict[str, dict[str, Any]] = {}
    if per_image:
        worst = min(r["pixel_agreement"] for r in per_image)
        gates["pixel_agreement"] = {"value": worst, "limit": args.min_pixel_agreement,
                                    "ok": worst >= args.min_pixel_agreement}
    if gt is not None and per_image:
        pq_r, pq_m = _pq_row(_evaluate(gt, res_ref)), _pq_row(_evaluate(gt, res_model))
        dpq = abs(pq_r.get("PQ_All", 0.0) - pq_m.get("PQ_All", 0.0))
        report["pq"] = {"reference": pq_r, "model": pq_m}
        gates["delta_pq"] = {"value": dpq, "limit": args.max_dpq, "ok": dpq <= args.max_dpq}
    report["gates"] = gates
    report["ok"] = bool(gates) and all(g["ok"] for g in gates.values()) and not failures

    out_dir = ensure_dir(args.out)
    text = format_report(report)
    print(text)
    atomic_write_bytes(out_dir / "parity.json", json.dumps(report, indent=1).encode())
    atomic_write_bytes(out_dir / "parity.md", ("```\n" + text + "\n```\n").encode())
    if failures:
        print(f"{len(failures)} image(s) could not be read:", file=sys.stderr)
        for path, why in failures:
            print(f"  {path}: {why}", file=sys.stderr)
    return 0 if report["ok"] else 1


def format_report(report: dict[str, Any]) -> str:
    lines = [f"pfcn-parity: {report['model']} ({report['backends'][0]}, {report['precision']}) vs "
             f"{report['reference']} ({report['backends'][1]}) on {report['images']} image(s)",
             "tensor errors over the slots both sides mark valid:",
             f"{'output':<24}{'compared':>10}{'max abs':>12}{'mean abs':>12}{'max rel':>12}{'mismatch':>10}"]
    for name, e in report["tensor_errors"].items():
        lines.append(f"{name:<24}{e['compared']:>10}{e['max_abs']:>12.3g}{e['mean_abs']:>12.3g}{e['max_rel']:>12.3g}"
                     f"{100 * e['mismatch']:>9.3f}%")
    lines.append(f"{'image':<28}{'pixels':>10}{'matched':>9}{'unmatched':>11}{'cat diff':>9}{'semantic':>10}")
    for r in report["per_image"]:
        lines.append(f"{r['image'][:27]:<28}{100 * r['pixel_agreement']:>9.3f}%{r['matched']:>9}"
                     f"{r['unmatched_a'] + r['unmatched_b']:>11}{r['category_mismatch']:>9}"
                     f"{100 * r['semantic_agreement']:>9.3f}%")
    if "pq" in report:
        lines.append(f"{'':<10}{'PQ':>8}{'SQ':>8}{'RQ':>8}{'PQ_th':>8}{'PQ_st':>8}")
        for name in ("reference", "model"):
            row = report["pq"][name]
            lines.append(f"{name:<10}{row.get('PQ_All', 0):>8.2f}{row.get('SQ_All', 0):>8.2f}"
                         f"{row.get('RQ_All', 0):>8.2f}{row.get('PQ_Things', 0):>8.2f}{row.get('PQ_Stuff', 0):>8.2f}")
    s = report["seconds"]
    lines.append(f"time: reference {s['reference']:.2f} s, model {s['model']:.2f} s")
    for name, g in report["gates"].items():
        lines.append(f"gate {name}: {g['value']:.5g} (limit {g['limit']}) {'PASS' if g['ok'] else 'FAIL'}")
    if report["failed_images"]:
        lines.append(f"FAIL: {len(report['failed_images'])} image(s) could not be read")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
