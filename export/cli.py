"""pfcn-export: PanopticFCN to a static ONNX graph, and ``--check`` of any ONNX file for TensorRT.

    pfcn-export --model W [--config C] --format onnx --out model.onnx
                [--input-size H W | --dynamic MIN_H MIN_W MAX_H MAX_W] [--batch N | --dynamic-batch]
                [--graph e2e|network] [--outputs all|panoptic] [--opset N] [KEY VALUE ...]
    pfcn-export --format engine --onnx model.onnx --out model.engine [--precision P] [--profile MIN OPT MAX]
                [--workspace GIB] [--timing-cache FILE]
    pfcn-export --format aoti --model W [--config C] --out model.pt2 [--input-size H W] [--batch N]
                [--device cpu|cuda] [--precision fp32|fp16]
    pfcn-export --check model.onnx
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pfcn.arguments import add_model_args, load_cfg, make_parser, model_path, parse_with_overrides, run_cli
from pfcn.contract import OUTPUT_SETS

from .check import check_onnx
from .engine import add_engine_args, engine_from_args
from .onnx_export import export_onnx


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("pfcn-export", __doc__)
    p.add_argument("--check", metavar="ONNX", help="only check an ONNX file (ONNX checker + TensorRT report)")
    p.add_argument("--format", default="onnx", choices=["onnx", "engine", "aoti"],
                   help="onnx: a static ONNX graph from a checkpoint; engine: a TensorRT engine from --onnx; "
                        "aoti: an AOTInductor .pt2 package from a checkpoint")
    p.add_argument("--out", default="model.onnx", help="output path")
    p.add_argument("--graph", default="e2e", choices=["e2e", "network"],
                   help="e2e: uint8 images + sizes -> panoptic result; network: resized images -> kernels + feature")
    p.add_argument("--outputs", default="all", choices=sorted(OUTPUT_SETS),
                   help="e2e outputs: all, or panoptic (no [B, 100, H, W] instance masks, 107 MB per 800x1333 "
                        "image: the panoptic map, segment and instance tables only)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"),
                      help="fixed input canvas (default: INPUT.MIN_SIZE_TEST INPUT.MAX_SIZE_TEST)")
    size.add_argument("--dynamic", nargs=4, type=int, metavar=("MIN_H", "MIN_W", "MAX_H", "MAX_W"),
                      help="dynamic input height/width within this range (e2e only)")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=1, help="fixed batch size")
    batch.add_argument("--dynamic-batch", action="store_true", help="dynamic batch axis")
    p.add_argument("--opset", type=int, default=19, help="ONNX opset (>= 19 for DeformConv)")
    p.add_argument("--no-check", action="store_true", help="skip the check of the exported file")
    add_model_args(p, device=False, runtime=False)  # export traces on the CPU
    add_engine_args(p)
    p.add_argument_group("AOTInductor package (--format aoti)").add_argument(
        "--device", default=None, help="cpu (default) or cuda: the device the package is compiled for "
                                       "(--precision fp32, or fp16 on cuda)")
    return p


def _main(argv: list[str] | None) -> int:
    args = parse_with_overrides(build_parser(), argv)
    if args.check:
        report = check_onnx(args.check)
        print(report.to_text())
        return 0 if report.ok else 1
    if args.outputs != "all" and args.format != "onnx":
        where = "an engine keeps the outputs of its --onnx graph" if args.format == "engine" else \
            "AOTInductor packages return all outputs"
        raise ValueError(f"--outputs {args.outputs}: output sets are chosen when exporting an e2e ONNX graph ({where})")
    if args.format == "engine":
        return engine_from_args(args)
    from pfcn.runtime.loader import artifact_kind, load_model_config
    from pfcn.predictor import Predictor

    weights = model_path(args)
    if weights is not None and artifact_kind(weights) != "checkpoint":
        raise ValueError(f"--model {weights}: pfcn-export exports a PyTorch checkpoint (.pth/.pkl); to check an ONNX "
                         "file use --check")
    cfg = load_cfg(args) if args.config else load_model_config(weights, None, args.opts)
    predictor = Predictor.from_files(cfg, weights, "cpu", random_weights=args.random_weights)
    if weights is None:
        print("pfcn-export: WARNING: exporting random weights (--random-weights); the graph's outputs mean nothing",
              file=sys.stderr)
    start = time.perf_counter()
    if args.format == "aoti":
        return _aoti(args, predictor, cfg, weights, start)
    if args.precision == "int8":
        raise ValueError("--precision int8: INT8 graphs need calibration data; export FP32, then run "
                         "pfcn-calibrate --model model.onnx --images DIR (TensorRT or CPU target)")
    out = export_onnx(predictor.model, cfg, predictor.meta, args.out, graph=args.graph,
                      input_size=tuple(args.input_size) if args.input_size else None,
                      dynamic=tuple(args.dynamic) if args.dynamic else None, batch=args.batch,
                      dynamic_batch=args.dynamic_batch, opset=args.opset, outputs=args.outputs)
    if args.precision == "fp16":  # the FP32 graph, then the FP16 pass with pfcn's FP32 islands
        from .precision import convert_fp16_file

        convert_fp16_file(out, out)
    size_mb = Path(out).stat().st_size / 2**20
    kind = f"{args.graph} graph" + (f", {args.outputs} outputs" if args.outputs != "all" else "")
    print(f"pfcn-export: wrote {out} ({size_mb:.1f} MB, {kind}, {args.precision or 'fp32'}) in "
          f"{time.perf_counter() - start:.1f} s")
    if not args.no_check:
        report = check_onnx(out)
        print(report.to_text())
        if not report.ok:
            return 1
    ref = f" --reference {weights}" if weights else " --random-weights"
    config = f" --config {args.config}" if args.config else ""
    print(f"next: pfcn-predict IMAGES --model {out}")
    print(f"next: pfcn-parity --model {out}{ref}{config} --images DIR")
    return 0


def _aoti(args, predictor, cfg, weights, start: float) -> int:
    """``--format aoti``: compile the e2e pipeline into a .pt2 package (the default --out becomes model.pt2)."""
    from .aoti import export_aoti

    out = Path(args.out)
    if out.suffix.lower() == ".onnx":  # the exporter's default --out
        out = out.with_suffix(".pt2")
    if args.graph != "e2e":
        raise ValueError("--format aoti packages the e2e graph only (drop --graph network)")
    if args.dynamic_batch:
        raise ValueError("--format aoti: packages have a fixed batch; use --batch N")
    device, precision = args.device or "cpu", args.precision or "fp32"
    out = export_aoti(predictor.model, cfg, predictor.meta, out,
                      input_size=tuple(args.input_size) if args.input_size else None,
                      dynamic=tuple(args.dynamic) if args.dynamic else None, batch=args.batch, device=device,
                      precision=precision)
    size_mb = Path(out).stat().st_size / 2**20
    print(f"pfcn-export: wrote {out} ({size_mb:.1f} MB, AOTInductor {device} {precision}) in "
          f"{time.perf_counter() - start:.1f} s")
    ref = f" --reference {weights}" if weights else " --random-weights"
    config = f" --config {args.config}" if args.config else ""
    flag = f" --device {device}" if device != "cpu" else ""
    print(f"next: pfcn-predict IMAGES --model {out}{flag}")
    print(f"next: pfcn-parity --model {out}{ref}{config}{flag} --images DIR")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
