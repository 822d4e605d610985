"""Export PanopticFCN to an AOTInductor package (``.pt2``): the end-to-end pipeline compiled ahead of time.

The package holds the ``EndToEndGraph`` (the module the ONNX e2e graph is made from) compiled by AOTInductor into a
shared library for one device, so it takes exactly the ONNX graph's inputs (``images`` uint8 [B, 3, H, W], ``sizes``
int64 [B, 2]) and returns its outputs as a flat tuple in ``pfcn.contract.E2E_OUTPUTS`` order. pfcn's metadata
(``pfcn.contract.METADATA_KEYS`` + ``precision`` + ``device``) is embedded through the inductor option
``aot_inductor.metadata``, so Python (``aoti_load_package(p).get_metadata()``) and C++
(``torch::inductor::AOTIModelPackageLoader::get_metadata()``) read it from the package itself.

A model with deformable convs calls torchvision's registered ``torchvision::deform_conv2d`` operator from the
package: ``import torchvision`` (Python) or link torchvision's operator library (C++) before loading it.
"""

from __future__ import annotations

import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pfcn.contract import E2E_INPUTS, E2E_OUTPUTS
from pfcn.metadata import CategoryMeta
from pfcn.model import PanopticFCN

from .engine import Spinner
from .graphs import EndToEndGraph
from .onnx_export import ExportError, _example_inputs, check_export_args, metadata
from .symbolics import DEFORM_CONV_OPSET

PRECISIONS = ("fp32", "fp16")
DEVICES = ("cpu", "cuda")
NOT_ONNX = "none (AOTInductor package)"  # the "opset" key of a package: there is no ONNX opset


def check_aoti_args(device: str, precision: str, out: Path, dynamic) -> None:
    """Validate what only the AOTInductor export adds; ExportError naming the argument and the value."""
    if device not in DEVICES and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ExportError(f"--device {device!r}: an AOTInductor package is compiled for cpu or cuda")
    if precision not in PRECISIONS:
        raise ExportError(f"--precision {precision!r}: an AOTInductor package is {' or '.join(PRECISIONS)}")
    if precision == "fp16" and not device.startswith("cuda"):
        raise ExportError("--precision fp16: FP16 packages are compiled for CUDA (--device cuda); on the CPU use fp32")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExportError(f"--device {device}: CUDA is not available on this machine; a CUDA package is compiled on "
                          "a machine with the GPU (or export a CPU package with --device cpu)")
    if out.suffix != ".pt2":
        raise ExportError(f"--out {out}: an AOTInductor package must be named *.pt2")
    if dynamic is not None:
        # The network canvas follows the input through the shortest-edge rule (float scale, rounding, then a
        # multiple of 32): torch.export cannot express that canvas as a function of symbolic H, W, and the static
        # pipeline sizes every intermediate from it. Dynamic H, W is what the ONNX graph offers.
        raise ExportError("--dynamic: AOTInductor packages have a fixed input size (the network canvas derived from "
                          "H, W by the shortest-edge rule does not export symbolically); use --input-size H W, one "
                          "package per canvas size, or a dynamic ONNX graph (--format onnx --dynamic ...)")


def package_metadata(model: PanopticFCN, cfg, meta: CategoryMeta, spec, precision: str, device: str
                     ) -> dict[str, str]:
    """pfcn's metadata of a package: the ONNX graph's keys (same input spec) + precision and device."""
    import torchvision

    props = metadata(model, cfg, meta, spec, DEFORM_CONV_OPSET)
    props["opset"] = NOT_ONNX
    props["exported_with"] = f"torch {torch.__version__}, torchvision {torchvision.__version__}, AOTInductor"
    props["precision"] = precision
    props["device"] = "cuda" if device.startswith("cuda") else "cpu"
    return props


def export_program(model: PanopticFCN, meta: CategoryMeta, spec, device: str = "cpu", precision: str = "fp32"):
    """``torch.export`` of the end-to-end graph at the spec's fixed size; the ExportedProgram AOTInductor compiles.

    FP32 exports ``EndToEndGraph`` (the ONNX e2e graph's module). FP16 exports the fast path's
    ``MixedPrecisionGraph``: the network body traced under FP16 autocast (GroupNorm and deformable convs stay FP32),
    everything after the heads in FP32 — same inputs, same outputs in the same order.
    """
    model = copy.deepcopy(model).eval().to(device)
    if precision == "fp16":
        from pfcn.runtime.torch_gpu import MixedPrecisionGraph

        module: torch.nn.Module = MixedPrecisionGraph(model, meta, spec.net_size, torch.float16, E2E_OUTPUTS,
                                                      channels_last=True)
    else:
        module = EndToEndGraph(model, meta, spec.net_size)
    module = module.to(device).eval()
    images, sizes = (t.to(device) for t in _example_inputs(model, spec))
    with torch.no_grad():
        return torch.export.export(module, (images, sizes), strict=False)


def export_aoti(model: PanopticFCN, cfg, meta: CategoryMeta, out: str | Path,
                input_size: tuple[int, int] | None = None, dynamic: tuple[int, int, int, int] | None = None,
                batch: int = 1, device: str = "cpu", precision: str = "fp32") -> Path:
    """Export ``model`` to an AOTInductor package at ``out`` (``*.pt2``) and return the path.

    Args:
        input_size: fixed input canvas (H, W); default (MIN_SIZE_TEST, MAX_SIZE_TEST).
        dynamic: not supported (ExportError with the alternatives): packages have a fixed size.
        batch: fixed batch size.
        device: "cpu" or "cuda[:i]": the package runs on this device type only.
        precision: "fp32", or "fp16" (CUDA): the network body under FP16 autocast, post-processing in FP32.
    Compiling takes minutes (about 1.5 min for the small config on two CPU cores); progress goes to stderr.
    """
    out = Path(out)
    check_aoti_args(device, precision, out, dynamic)
    spec = check_export_args(model, "e2e", input_size, None, batch, False, DEFORM_CONV_OPSET)
    props = package_metadata(model, cfg, meta, spec, precision, device)
    start = time.perf_counter()
    print(f"pfcn-export: torch.export of the e2e graph at {spec.batch}x3x{spec.height}x{spec.width} ({device}, "
          f"{precision})", file=sys.stderr)
    program = export_program(model, meta, spec, device, precision)
    print(f"pfcn-export: exported in {time.perf_counter() - start:.1f} s; compiling with AOTInductor (minutes)",
          file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.pt2")  # AOTInductor insists on the .pt2 suffix
    options: dict[str, Any] = {"aot_inductor.metadata": props}
    try:
        with Spinner("pfcn-export: AOTInductor compile"):
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=options)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


__all__ = ["E2E_INPUTS", "E2E_OUTPUTS", "PRECISIONS", "export_aoti", "export_program", "package_metadata"]
