"""Time one R50 inference at 800x1333 on this machine: PyTorch eager (per stage) and ONNX Runtime end to end.

    python benchmarks/eager_vs_onnxruntime.py [--runs 3] [--out benchmarks/results/cpu_r50_800x1333.json]

The model is the official R50 architecture with calibrated random weights (same compute as a trained one; the
post-processing work depends a little on how many candidates survive). The photo is the COCO sample 000000142238
resized to 600x1000, which the test resize maps to exactly 800x1333 (network canvas 800x1344). Both backends run in
this one process on the same input; the median of ``--runs`` timed runs after one warm-up is reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from pfcn.config import load_config
from pfcn.export.onnx_export import export_onnx
from pfcn.image_io import read_image
from pfcn.inference import postprocess
from pfcn.model import build_model
from pfcn.predictor import default_meta, to_canvas
from pfcn.random_init import calibrate_random_model

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "data" / "coco_panoptic_sample" / "input_images" / "000000142238.jpg"


def timed(fn, runs: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu_r50_800x1333.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "PanopticFCN-R50-1x.yaml", ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    photo = np.asarray(Image.fromarray(read_image(PHOTO)).resize((1000, 600), Image.BILINEAR))
    calibrate_random_model(model, [photo], seed=0)
    canvas, sizes = to_canvas([photo])
    net = model.network_size(600, 1000)
    results: dict[str, object] = {"machine": platform.processor() or platform.machine(),
                                  "threads": torch.get_num_threads(), "torch": torch.__version__,
                                  "onnxruntime": ort.__version__, "image": [600, 1000], "network_canvas": list(net)}
    with torch.no_grad():
        t_pre, (x, resized) = timed(lambda: model.preprocess(canvas, sizes, net), args.runs)
        t_net, heads = timed(lambda: model.forward_features(x), args.runs)
        t_post, _ = timed(lambda: postprocess(heads, model.thing_generator, model.stuff_generator, resized, sizes,
                                              (600, 1000), model.params, model.merge), args.runs)
        t_e2e, out = timed(lambda: model(canvas, sizes, net), args.runs)
    results["eager_s"] = {"preprocess": t_pre, "network": t_net, "postprocess": t_post, "end_to_end": t_e2e}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, cfg, default_meta(cfg), Path(tmp) / "r50.onnx", input_size=(600, 1000))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"images": canvas.numpy(), "sizes": sizes.numpy()}
        t_ort, ort_out = timed(lambda: session.run(None, feed), args.runs)
    results["onnxruntime_cpu_s"] = {"end_to_end": t_ort}
    results["speedup_onnxruntime_vs_eager"] = t_e2e / t_ort
    results["segments"] = int(out["segment_valid"].sum())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
