"""pfcn-parity: does an exported graph give what PyTorch gives? Tensors, panoptic maps and PQ, with gates.

    pfcn-parity --config C [--weights W] --onnx model.onnx (--dataset NAME | --images DIR [--gt-json J --gt-png DIR])
                [--out DIR] [--max-dpq 0.05] [--min-pixel-agreement 0.999] [--limit N] [KEY VALUE ...]

Both backends see the same uint8 canvas per image: PyTorch eager runs the model's static forward, ONNX Runtime the
graph (CUDA provider where installed, else CPU). Reported: per output the max/mean absolute and max relative error;
per image the pixel agreement and segment matching of the panoptic maps; with ground truth, PQ/SQ/RQ of both and
their difference. Exit code 1 when a gate fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pfcn.evaluation.panoptic_format import PanopticGroundTruth
from pfcn.image_io import list_images, read_image
from pfcn.predictor import Predictor
from pfcn.result import results_from_outputs
from pfcn.runtime.compare import result_agreement, tensor_errors
from pfcn.runtime import open_model
from pfcn.runtime.backend import canvas_for
from pfcn.tools.common import add_model_args, ensure_dir, load_cfg, parse_with_overrides, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfcn-parity", description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="the exported end-to-end graph")
    p.add_argument("--dataset", help="dataset name (under $PFCN_DATASETS) or a pfcn-synth folder")
    p.add_argument("--images", help="folder of images")
    p.add_argument("--gt-json", help="COCO panoptic ground truth (enables the PQ gate)")
    p.add_argument("--gt-png", help="ground-truth PNG folder (default: the JSON path without .json)")
    p.add_argument("--out", default="parity_out", help="output folder for parity.json / parity.md")
    p.add_argument("--limit", type=int, default=0, help="compare at most N images (0 = all)")
    p.add_argument("--max-dpq", type=float, default=0.05, help="gate: |PQ(onnx) - PQ(torch)| in PQ points")
    p.add_argument("--min-pixel-agreement", type=float, default=0.999, help="gate: per-image pixel agreement")
    add_model_args(p)
    return p


def _inputs(args) -> tuple[list[tuple[Any, Path]], PanopticGroundTruth | None]:
    """(image_id, path) pairs and the ground truth (if any)."""
    from pfcn.tools.evaluate import _resolve_dataset, image_path_for

    gt = None
    if args.dataset:
        images, gt_json, gt_png = _resolve_dataset(args.dataset)
        gt = PanopticGroundTruth(gt_json, gt_png)
    elif args.gt_json:
        if not args.images:
            raise ValueError("--gt-json needs --images (the photographs)")
        images, gt = Path(args.images), PanopticGroundTruth(args.gt_json, args.gt_png)
    elif args.images:
        paths = list_images([args.images])
        return [(p.stem, p) for p in paths], None
    else:
        raise ValueError("give --dataset NAME or --images DIR")
    ids = list(gt.image_ids)
    return [(i, image_path_for(gt, images, i)) for i in ids], gt


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


def _main(argv: list[str] | None) -> int:
    args = parse_with_overrides(build_parser(), argv)
    cfg = load_cfg(args)
    torch_predictor = Predictor.from_files(cfg, args.weights, args.device)
    backend = open_model(args.onnx)
    items, gt = _inputs(args)
    if args.limit:
        items = items[: args.limit]
    if not items:
        raise ValueError("no images to compare")
    meta = backend.info.meta
    if gt is not None:
        from pfcn.tools.evaluate import _model_meta

        meta = _model_meta(backend.info.meta, gt.meta, args.onnx)
    model = torch_predictor.model
    errors: dict[str, dict[str, float]] = {}
    per_image, res_torch, res_onnx = [], [], []
    t_torch = t_onnx = 0.0
    for image_id, path in tqdm(items, desc="pfcn-parity", unit="img"):
        image = read_image(path)
        canvas, sizes = canvas_for(backend, [image], [str(path)])
        net = backend.info.net_size or model.network_size(*image.shape[:2])
        start = time.perf_counter()
        with torch.no_grad():
            ref = model(torch.from_numpy(canvas).to(torch_predictor.device), torch.from_numpy(sizes).to(
                torch_predictor.device), net)
        t_torch += time.perf_counter() - start
        start = time.perf_counter()
        out = backend.run(canvas, sizes)
        t_onnx += time.perf_counter() - start
        for name, e in tensor_errors(ref, out).items():
            acc = errors.setdefault(name, {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0, "mismatch": 0.0})
            acc["max_abs"] = max(acc["max_abs"], e["max_abs"])
            acc["max_rel"] = max(acc["max_rel"], e["max_rel"])
            acc["mean_abs"] += e["mean_abs"] / len(items)
            acc["mismatch"] += e["mismatch"] / len(items)
        size = [tuple(sizes[0].tolist())]
        a = results_from_outputs({k: v[:1] for k, v in ref.items()}, size, meta, [path.name], [image_id])[0]
        b = results_from_outputs({k: v[:1] for k, v in out.items()}, size, meta, [path.name], [image_id])[0]
        agreement = result_agreement(a, b)
        per_image.append({"image": str(path.name), **agreement.as_dict()})
        res_torch.append((image_id, a))
        res_onnx.append((image_id, b))

    report: dict[str, Any] = {"onnx": str(args.onnx), "images": len(items), "tensor_errors": errors,
                              "per_image": per_image, "seconds": {"torch": t_torch, "onnx": t_onnx}}
    worst = min(r["pixel_agreement"] for r in per_image)
    gates = {"pixel_agreement": {"value": worst, "limit": args.min_pixel_agreement,
                                 "ok": worst >= args.min_pixel_agreement}}
    if gt is not None:
        pq_t, pq_o = _pq_row(_evaluate(gt, res_torch)), _pq_row(_evaluate(gt, res_onnx))
        dpq = abs(pq_t.get("PQ_All", 0.0) - pq_o.get("PQ_All", 0.0))
        report["pq"] = {"torch": pq_t, "onnx": pq_o}
        gates["delta_pq"] = {"value": dpq, "limit": args.max_dpq, "ok": dpq <= args.max_dpq}
    report["gates"] = gates
    ok = all(g["ok"] for g in gates.values())
    report["ok"] = ok

    out_dir = ensure_dir(args.out)
    text = format_report(report)
    print(text)
    (out_dir / "parity.json").write_text(json.dumps(report, indent=1))
    (out_dir / "parity.md").write_text("```\n" + text + "\n```\n")
    return 0 if ok else 1


def format_report(report: dict[str, Any]) -> str:
    lines = [f"pfcn-parity: {report['onnx']} vs PyTorch eager on {report['images']} image(s)",
             f"{'output':<22}{'max abs':>12}{'mean abs':>12}{'max rel':>12}{'mismatch':>10}"]
    for name, e in report["tensor_errors"].items():
        lines.append(f"{name:<22}{e['max_abs']:>12.3g}{e['mean_abs']:>12.3g}{e['max_rel']:>12.3g}"
                     f"{100 * e['mismatch']:>9.3f}%")
    lines.append(f"{'image':<28}{'pixels':>10}{'matched':>9}{'unmatched':>11}{'cat diff':>9}{'semantic':>10}")
    for r in report["per_image"]:
        lines.append(f"{r['image'][:27]:<28}{100 * r['pixel_agreement']:>9.3f}%{r['matched']:>9}"
                     f"{r['unmatched_a'] + r['unmatched_b']:>11}{r['category_mismatch']:>9}"
                     f"{100 * r['semantic_agreement']:>9.3f}%")
    if "pq" in report:
        t, o = report["pq"]["torch"], report["pq"]["onnx"]
        lines.append(f"{'':<10}{'PQ':>8}{'SQ':>8}{'RQ':>8}{'PQ_th':>8}{'PQ_st':>8}")
        for name, row in (("torch", t), ("onnx", o)):
            lines.append(f"{name:<10}{row.get('PQ_All', 0):>8.2f}{row.get('SQ_All', 0):>8.2f}{row.get('RQ_All', 0):>8.2f}"
                         f"{row.get('PQ_Things', 0):>8.2f}{row.get('PQ_Stuff', 0):>8.2f}")
    lines.append(f"time: torch {report['seconds']['torch']:.2f} s, onnxruntime {report['seconds']['onnx']:.2f} s")
    for name, g in report["gates"].items():
        lines.append(f"gate {name}: {g['value']:.5g} (limit {g['limit']}) {'PASS' if g['ok'] else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
