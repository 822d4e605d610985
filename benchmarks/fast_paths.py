"""Latency of the PyTorch GPU paths of one checkpoint: FP32 eager, FP16 + CUDA graphs (all outputs and panoptic
only), and FP16 + CUDA graphs + torch.compile, at one size and batch. Run by ``benchmarks/device_suite.sh``.

    python benchmarks/fast_paths.py --model R50.pth --size 800x1333 --batch 1 --out DIR [--iters 20] [--no-compile]

pfcn-bench opens artifacts by file (``open_model``) and has no switch for these in-process options yet, so their
rows are written here: ``fast_paths_b<batch>.json`` (per row: p50/p90/p99/mean latency in ms per batch, FPS =
batch / p50, setup seconds = capture/compile time) and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def synthetic(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 8, 3)).astype(np.float32)
    yy = np.linspace(0, 5, h)[:, None].astype(int)
    xx = np.linspace(0, 7, w)[None, :].astype(int)
    return np.clip(coarse[yy, xx] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def time_row(backend, canvas: np.ndarray, sizes: np.ndarray, warmup: int, iters: int) -> dict:
    import torch

    start = time.perf_counter()
    for _ in range(warmup):  # includes the CUDA-graph capture / torch.compile of the first call
        backend.run(canvas, sizes)
    torch.cuda.synchronize()
    setup = time.perf_counter() - start
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        backend.run(canvas, sizes)  # returns host arrays: the device work is complete
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    p50 = float(np.percentile(ms, 50))
    return {"p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "fps": canvas.shape[0] * 1e3 / p50, "iters": iters,
            "warmup_and_setup_s": setup}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a PyTorch checkpoint (config stored in it, or --config)")
    p.add_argument("--config", default=None)
    p.add_argument("--size", default="800x1333")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    p.add_argument("--out", default="bench_out")
    args = p.parse_args(argv)

    import torch

    from pfcn.contract import atomic_write_bytes, make_canvas
    from pfcn.runtime import open_model
    from pfcn.runtime.torch_gpu import TorchGpuBackend

    if not torch.cuda.is_available():
        print("fast_paths: no CUDA device", file=sys.stderr)
        return 2
    h, w = (int(v) for v in args.size.lower().split("x"))
    canvas, sizes = make_canvas([synthetic(h, w, i) for i in range(args.batch)])
    eager = open_model(args.model, config=args.config, device="cuda", batch_size=args.batch)
    rows = {"eager fp32": lambda: eager}
    variants = {"fp16 + CUDA graphs": {"precision": "fp16"},
                "fp16 + CUDA graphs, panoptic outputs": {"precision": "fp16", "outputs": "panoptic"},
                "fp32 + CUDA graphs": {"precision": "fp32"}}
    if not args.no_compile:
        variants["fp16 + CUDA graphs + torch.compile, panoptic outputs"] = {
            "precision": "fp16", "outputs": "panoptic", "compile": True, "compile_mode": "default"}
    for label, options in variants.items():
        rows[label] = lambda options=options: TorchGpuBackend.from_predictor(eager, **options)
    results = {}
    for label, make in rows.items():
        try:
            backend = make()
            results[label] = time_row(backend, canvas, sizes, args.warmup, args.iters)
            if backend is not eager:
                backend.close()
        except Exception as e:  # one failing path must not hide the others' numbers
            results[label] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        torch.cuda.empty_cache()
        print(f"{label:<55} {json.dumps(results[label])}", flush=True)
    doc = {"size": [h, w], "batch": args.batch, "device": torch.cuda.get_device_name(),
           "torch": torch.__version__, "model": args.model, "rows": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"fast_paths_b{args.batch}.json", json.dumps(doc, indent=1).encode())
    lines = [f"PyTorch GPU paths, {h}x{w}, batch {args.batch}, {doc['device']}, torch {doc['torch']}", "",
             "| path | p50 ms | p99 ms | FPS | setup s |", "|---|---|---|---|---|"]
    for label, r in results.items():
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error'][:80]} | | | |")
        else:
            lines.append(f"| {label} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['fps']:.1f} | "
                         f"{r['warmup_and_setup_s']:.1f} |")
    atomic_write_bytes(out / f"fast_paths_b{args.batch}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
