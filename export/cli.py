"""pfcn-export: PanopticFCN to a static ONNX graph, and ``--check`` of any ONNX file for TensorRT.

    pfcn-export --config C --weights W --format onnx --out model.onnx
                [--input-size H W | --dynamic MIN_H MIN_W MAX_H MAX_W] [--batch N | --dynamic-batch]
                [--graph e2e|network] [--opset N] [KEY VALUE ...]
    pfcn-export --check model.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pfcn.predictor import Predictor
from pfcn.tools.common import add_model_args, load_cfg, parse_with_overrides, run_cli

from .check import check_onnx
from .onnx_export import export_onnx


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfcn-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", metavar="ONNX", help="only check an ONNX file (ONNX checker + TensorRT report)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="artifact format (engines: pfcn-build later)")
    p.add_argument("--out", default="model.onnx", help="output path (default: model.onnx)")
    p.add_argument("--graph", default="e2e", choices=["e2e", "network"],
                   help="e2e: uint8 images + sizes -> panoptic result; network: resized images -> kernels + feature")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                      help="fixed input canvas (default: MIN_SIZE_TEST MAX_SIZE_TEST)")
    size.add_argument("--dynamic", nargs=4, type=int, metavar=("MIN_H", "MIN_W", "MAX_H", "MAX_W"),
                      help="dynamic input height/width within this range (e2e only)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="fixed batch size (default 1)")
    batch.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis")
    p.add_argument("--opset", type=int, default=19, help="ONNX opset (>= 19 for DeformConv; default 19)")
    p.add_argument("--no-check", action="store_true", help="skip the check of the exported file")
    # --config is required only when exporting; add_model_args marks it required, so relax it here
    add_model_args(p)
    for action in p._actions:
        if action.dest == "config":
            action.required = False
    return p


def _main(argv: list[str] | None) -> int:
    args = parse_with_overrides(build_parser(), argv)
    if args.check:
        report = check_onnx(args.check)
        print(report.to_text())
        return 0 if report.ok else 1
    if not args.config:
        raise ValueError("--config is required to export (or use --check ONNX)")
    cfg = load_cfg(args)
    predictor = Predictor.from_files(cfg, args.weights, "cpu")
    start = time.perf_counter()
    out = export_onnx(predictor.model, cfg, predictor.meta, args.out, graph=args.graph,
                      input_size=tuple(args.input_size) if args.input_size else None,
                      dynamic=tuple(args.dynamic) if args.dynamic else None, batch=args.batch,
                      dynamic_batch=args.dynamic_batch, opset=args.opset)
    size_mb = Path(out).stat().st_size / 2**20
    print(f"pfcn-export: wrote {out} ({size_mb:.1f} MB, {args.graph} graph) in {time.perf_counter() - start:.1f} s")
    if not args.no_check:
        report = check_onnx(out)
        print(report.to_text())
        if not report.ok:
            return 1
    weights = f" --weights {args.weights}" if args.weights else ""
    print(f"next: pfcn-parity --config {args.config}{weights} --onnx {out} --images DIR")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
