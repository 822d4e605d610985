"""ONNX symbolics that PyTorch's exporter lacks for pfcn's operators.

``torchvision.ops.deform_conv2d`` has no ONNX export of its own. ONNX ``DeformConv`` (opset 19) takes the same
inputs in the same layout — interleaved (dy, dx) offsets per tap, the mask as a probability — so the mapping is
one node; TensorRT >= 10.1 parses it into its ``ModulatedDeformConv2d`` plugin and ONNX Runtime runs it on the CPU.
"""

from __future__ import annotations

import torch
from torch.onnx import register_custom_op_symbolic
from torch.onnx.symbolic_helper import parse_args

DEFORM_CONV_OPSET = 19
_registered = False


@parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
def _deform_conv2d(g, x, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   weight_groups, offset_groups, use_mask):
    sizes = weight.type().sizes()
    if sizes is None:
        raise RuntimeError("DeformConv export needs a weight of known shape (it is a parameter in pfcn)")
    inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
    return g.op("DeformConv", *inputs, strides_i=[stride_h, stride_w], pads_i=[pad_h, pad_w, pad_h, pad_w],
                dilations_i=[dil_h, dil_w], group_i=weight_groups, offset_group_i=offset_groups,
                kernel_shape_i=list(sizes[2:]))


def register_symbolics() -> None:
    """Register pfcn's symbolics with the TorchScript-based exporter (idempotent)."""
    global _registered
    if not _registered:
        register_custom_op_symbolic("torchvision::deform_conv2d", _deform_conv2d, DEFORM_CONV_OPSET)
        _registered = True


def model_needs_deform(model: torch.nn.Module) -> bool:
    from pfcn.layers import ModulatedDeformConv

    return any(isinstance(m, ModulatedDeformConv) for m in model.modules())
