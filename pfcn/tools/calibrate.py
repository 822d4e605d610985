"""pfcn-calibrate: an exported FP32 pfcn graph -> an INT8 Q/DQ graph (TensorRT S8S8 or CPU U8S8), or an FP16 graph.

    pfcn-calibrate --onnx model.onnx --out model_int8.onnx (--images DIR | --dataset NAME) [--limit N]
                   [--target tensorrt|cpu] [--method max|entropy|percentile] [--cache-dir DIR] [--exclude NODE ...]
                   [--val-dataset NAME --reference REF [--sensitivity] [--auto-exclude] [--budget 1.0]
                    [--per-layer] [--report DIR]]
    pfcn-calibrate --onnx model.onnx --out model_fp16.onnx --precision fp16

Calibration images go through the graph's own preprocessing (uint8 canvases, ``pfcn.contract.make_canvas``). Ranges
are cached per (model hash, data hash, method) and reused for both targets. With ``--val-dataset`` and
``--reference`` (the PyTorch checkpoint or FP32 graph), the result is scored: ΔPQ against the reference, gated at 0.2
(FP16) / 1.0 (INT8) PQ points; ``--sensitivity`` adds the per-block ΔPQ table and ``--auto-exclude`` keeps the worst
blocks in float until |ΔPQ| <= ``--budget``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pfcn.arguments import make_parser, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("pfcn-calibrate", __doc__)
    p.add_argument("--model", "--onnx", dest="onnx", required=True, metavar="ONNX",
                   help="the FP32 graph written by pfcn-export (e2e)")
    p.add_argument("--out", required=True, help="where to write the INT8 / FP16 graph")
    p.add_argument("--precision", default="int8", choices=["int8", "fp16"])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", help="folder of calibration images")
    src.add_argument("--dataset", help="calibration dataset: a name under $PFCN_DATASETS or a pfcn-synth folder")
    p.add_argument("--limit", type=int, default=64, help="calibration images used (0 = all; default 64)")
    p.add_argument("--target", default="tensorrt", choices=["tensorrt", "cpu"],
                   help="tensorrt: S8S8 symmetric, zero point 0; cpu: U8S8, fast in ONNX Runtime on x86")
    p.add_argument("--method", default="max", choices=["max", "entropy", "percentile"], help="calibration method")
    p.add_argument("--percentile", type=float, default=99.999, help="for --method percentile")
    p.add_argument("--cache-dir", help="calibration cache folder (default: $PFCN_CACHE/calibration or "
                                       "~/.cache/pfcn/calibration)")
    p.add_argument("--exclude", nargs="*", default=[], metavar="NODE", help="Conv node names kept in float")
    p.add_argument("--val-dataset", help="held-out dataset with ground truth for ΔPQ")
    p.add_argument("--val-limit", type=int, default=0, help="validation images used (0 = all)")
    p.add_argument("--reference", help="reference artifact for ΔPQ: the PyTorch checkpoint (or the FP32 .onnx)")
    p.add_argument("--sensitivity", action="store_true", help="per-block ΔPQ table (needs --val-dataset)")
    p.add_argument("--auto-exclude", action="store_true",
                   help="keep the worst blocks in float until |ΔPQ| <= --budget (implies --sensitivity)")
    p.add_argument("--budget", type=float, default=1.0, help="ΔPQ budget in PQ points (default 1.0)")
    p.add_argument("--per-layer", action="store_true", help="sensitivity per Conv instead of per block (slow)")
    p.add_argument("--report", help="folder for sensitivity.{json,md} and gate.json (default: next to --out)")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from pfcn.calibration.data import load_images
    from pfcn.calibration.gates import GATES, compare, panoptic_results, pq_of
    from pfcn.export.precision import convert_fp16_file
    from pfcn.runtime import open_model

    out = Path(args.out)
    report_dir = Path(args.report) if args.report else out.parent
    if (args.sensitivity or args.auto_exclude) and args.precision != "int8":
        raise ValueError("--sensitivity / --auto-exclude apply to --precision int8")
    if (args.sensitivity or args.auto_exclude) and not (args.val_dataset and args.reference):
        raise ValueError("--sensitivity / --auto-exclude need --val-dataset (with ground truth) and --reference")
    val = ref_results = pq_ref = None
    if args.val_dataset:
        if not args.reference:
            raise ValueError("--val-dataset needs --reference (the PyTorch checkpoint or the FP32 graph)")
        val = load_images(dataset=args.val_dataset, limit=args.val_limit, with_gt=True)
        reference = open_model(args.reference)
        ref_results = panoptic_results(reference, val)
        pq_ref = pq_of(ref_results, val, reference)["PQ_All"]
        print(f"pfcn-calibrate: reference {args.reference}: PQ {pq_ref:.2f} on {len(val.images)} image(s)")
    start = time.perf_counter()
    if args.precision == "fp16":
        convert_fp16_file(args.onnx, out)
        print(f"pfcn-calibrate: wrote {out} (fp16) in {time.perf_counter() - start:.1f} s")
    else:
        from pfcn.calibration.int8 import quantize_int8
        from pfcn.calibration.sensitivity import analyse

        if not (args.images or args.dataset):
            raise ValueError("INT8 needs calibration images: --images DIR or --dataset NAME")
        calib = load_images(args.images, args.dataset, limit=args.limit)
        exclude = list(args.exclude)
        if args.sensitivity or args.auto_exclude:
            rep = analyse(args.onnx, calib, val, pq_ref, args.target, args.method, args.budget, args.auto_exclude,
                          args.per_layer, args.cache_dir)
            paths = rep.write(report_dir)
            print(rep.to_markdown())
            print(f"pfcn-calibrate: sensitivity report {paths[1]}")
            if args.auto_exclude:
                exclude += [c for g in rep.kept_float for c in rep.groups[g]]
        r = quantize_int8(args.onnx, out, calib, args.target, args.method, exclude=exclude, cache_dir=args.cache_dir,
                          percentile=args.percentile)
        print(f"pfcn-calibrate: wrote {out} (int8, {args.target}, {args.method}): {len(r.quantized)} Conv INT8, "
              f"{len(r.excluded)} float; calibration {len(calib.images)} image(s), cache "
              f"{'reused' if r.cache_hit else 'written'}: {r.cache} ({time.perf_counter() - start:.1f} s)")
    if val is not None:
        gate = compare(open_model(out), ref_results, val, GATES[args.precision], reference_pq=pq_ref)
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "gate.json").write_text(json.dumps(gate.as_dict(), indent=1))
        print(f"pfcn-calibrate: PQ {gate.pq_model:.2f} vs reference {gate.pq_reference:.2f}: ΔPQ {gate.delta_pq:+.3f} "
              f"(limit {gate.limit}) {'PASS' if gate.ok else 'FAIL'}; pixel agreement min "
              f"{100 * gate.min_pixel_agreement:.2f}% mean {100 * gate.mean_pixel_agreement:.2f}%")
        if not gate.ok:
            return 1
    print(f"next: pfcn-export --check {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
