"""ONNX Runtime CPU latency of FP32, FP16 and INT8 (TensorRT S8S8 and CPU U8S8) graphs, and their agreement.

    python benchmarks/precision_cpu.py --model small --checkpoint tests/data/small_synth.pth --dataset SYNTH_VAL
    python benchmarks/precision_cpu.py --model r50 [--runs 2]

small: the committed pfcn-train checkpoint, 128x128 fixed graph; ΔPQ of every graph vs PyTorch FP32 on the held-out
synthetic set (``--dataset``), calibration on its first ``--calib`` images. r50: the official R50 architecture with
calibrated random weights (same compute as a trained one), the COCO sample photos resized to 600x1000 (network canvas
800x1344, the test resize gives 800x1333), calibrated on those two photos in a trained network's numerical
regime (decisive class logits, residual gain 0.25); pixel agreement vs the FP32 graph.
Median of ``--runs`` timed runs after one warm-up, batch 1, ONNX Runtime's default threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "coco_panoptic_sample" / "input_images"


def timed(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_graphs(fp32: Path, calib, work: Path, method: str) -> dict[str, Path]:
    from pfcn.calibration.int8 import quantize_int8
    from pfcn.export.precision import convert_fp16_file

    graphs = {"fp32": fp32}
    start = time.perf_counter()
    graphs["fp16"] = convert_fp16_file(fp32, work / "fp16.onnx")
    print(f"fp16 pass {time.perf_counter() - start:.1f} s", flush=True)
    for target in ("tensorrt", "cpu"):
        start = time.perf_counter()
        r = quantize_int8(fp32, work / f"int8_{target}.onnx", calib, target=target, method=method,
                          cache_dir=work / "cache")
        print(f"int8 {target} {time.perf_counter() - start:.1f} s (cache hit {r.cache_hit})", flush=True)
        graphs[f"int8_{target}"] = r.path
    return graphs


def latency(graphs: dict[str, Path], images, runs: int) -> dict[str, float]:
    from pfcn.runtime import open_model
    from pfcn.runtime.backend import canvas_for

    out = {}
    for name, path in graphs.items():
        backend = open_model(path)
        canvas, sizes = canvas_for(backend, images[:1])
        out[name] = timed(lambda: backend.run(canvas, sizes), runs)
        print(f"{name}: {out[name]:.3f} s", flush=True)
        backend.close()
    return out


def op_profile(path: Path, images, work: Path) -> dict[str, float]:
    """Milliseconds per ONNX op type in one run (ONNX Runtime's profiler), largest first: where the time goes."""
    from pfcn.contract import make_canvas

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(work / f"profile_{path.stem}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    canvas, sizes = make_canvas(images[:1])
    feed = {"images": canvas, "sizes": sizes}
    session.run(None, feed)
    trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + event["dur"] / 1000.0
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])[:12])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["small", "r50"], required=True)
    p.add_argument("--checkpoint", default=str(REPO / "tests" / "data" / "small_synth.pth"))
    p.add_argument("--dataset", help="held-out pfcn-synth folder (small)")
    p.add_argument("--calib-images", help="calibration image folder (small; default: the dataset's images)")
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--method", default="max")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / f"precision_cpu_{time.strftime('%Y%m%d')}.json"))
    args = p.parse_args()

    from pfcn.calibration.data import ImageSet, load_images
    from pfcn.calibration.gates import GATES, compare, panoptic_results, pq_of
    from pfcn.runtime import open_model

    out_path = Path(args.out)
    report = json.loads(out_path.read_text()) if out_path.is_file() else {}
    report.update({"machine": platform.processor() or platform.machine(), "onnxruntime": ort.__version__,
                   "cpus": __import__("os").cpu_count()})
    with tempfile.TemporaryDirectory(prefix="pfcn-precision-") as tmp:
        work = Path(tmp)
        if args.model == "small":
            import torch

            from pfcn.export.onnx_export import export_onnx
            from pfcn.predictor import Predictor
            from pfcn.runtime.loader import load_model_config

            val = load_images(dataset=args.dataset, with_gt=True)
            calib = (load_images(args.calib_images, limit=args.calib) if args.calib_images
                     else load_images(dataset=args.dataset, limit=args.calib))
            cfg = load_model_config(args.checkpoint, None)
            pred = Predictor.from_files(cfg, args.checkpoint, "cpu")
            h, w = val.images[0].shape[:2]
            fp32 = export_onnx(pred.model, cfg, pred.meta, work / "fp32.onnx", input_size=(h, w))
            graphs = build_graphs(fp32, calib, work, args.method)
            ref = open_model(args.checkpoint)
            ref_results = panoptic_results(ref, val)
            pq_ref = pq_of(ref_results, val, ref)["PQ_All"]
            t_torch = timed(lambda: ref.run(*__import__("pfcn.runtime.backend", fromlist=["x"]).canvas_for(
                ref, val.images[:1])), args.runs)
            entry = {"graph": f"e2e fixed {h}x{w}, batch 1", "checkpoint": Path(args.checkpoint).name,
                     "held_out_images": len(val.images), "calibration_images": len(calib.images),
                     "method": args.method, "pq_pytorch_fp32": pq_ref, "pytorch_eager_s": t_torch,
                     "latency_s": latency(graphs, val.images, args.runs), "gates": {}}
            for name, path in graphs.items():
                g = compare(open_model(path), ref_results, val, GATES[name.split("_")[0]], reference_pq=pq_ref)
                entry["gates"][name] = g.as_dict()
                print(name, g.as_dict(), flush=True)
            report["small"] = entry
            del torch
        else:
            import torch
            from PIL import Image

            from pfcn.config import load_config
            from pfcn.export.onnx_export import export_onnx
            from pfcn.image_io import read_image
            from pfcn.model import build_model
            from pfcn.predictor import default_meta
            from pfcn.random_init import calibrate_random_model
            from pfcn.runtime.compare import result_agreement
            from pfcn.runtime.backend import predict

            photos = sorted(SAMPLE.glob("*.jpg"))
            if not photos:
                sys.exit(f"no COCO sample photos in {SAMPLE}")
            images = [np.asarray(Image.fromarray(read_image(p)).resize((1000, 600), Image.BILINEAR)) for p in photos]
            torch.manual_seed(0)
            cfg = load_config(REPO / "configs" / "PanopticFCN-R50-1x.yaml", ["MODEL.DEVICE", "cpu"])
            model = build_model(cfg).eval()
            start = time.perf_counter()
            # the regime of a trained network (see tests/calibration/test_r50_photos.py): decisive class logits,
            # residual branches at a quarter gain; a unit-gain random R50 amplifies rounding ~100x
            calibrate_random_model(model, images, seed=0, class_logit_std=3.0, residual_gain=0.25)
            fp32 = export_onnx(model, cfg, default_meta(cfg), work / "fp32.onnx", input_size=(600, 1000))
            print(f"R50 model + export {time.perf_counter() - start:.1f} s", flush=True)
            del model
            calib = ImageSet("coco sample (600x1000)", [p.name for p in photos], images)
            graphs = build_graphs(fp32, calib, work, args.method)
            lat = latency(graphs, images, args.runs)
            profile = {name: op_profile(graphs[name], images, work) for name in ("fp32", "int8_cpu")}
            print(json.dumps(profile, indent=1), flush=True)
            base = predict(open_model(fp32), images)
            agree = {}
            for name, path in graphs.items():
                if name == "fp32":
                    continue
                res = predict(open_model(path), images)
                agree[name] = [result_agreement(a, b).as_dict() for a, b in zip(base, res)]
            report["r50"] = {"graph": "e2e fixed 600x1000 (network canvas 800x1344), batch 1",
                             "weights": "calibrated random (seed 0, class_logit_std 3, residual_gain 0.25)", "calibration_images": len(images),
                             "method": args.method, "latency_s": lat,
                             "speedup_vs_fp32": {k: lat["fp32"] / v for k, v in lat.items()},
                             "op_time_ms_one_run": profile, "agreement_vs_fp32_graph": agree}
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
