"""Building blocks shared by the backbone and the heads.

Each layer keeps detectron2's parameter layout (``conv.weight``, ``conv.norm.weight``, ``dcnv2.weight`` ...), because
the official checkpoints are detectron2 state dicts and must load with strict key matching.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import deform_conv2d


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all stored as buffers (detectron2's FrozenBN).

    The official ResNet is trained with frozen BN, so these four tensors are buffers, not parameters, and there is no
    ``num_batches_tracked``. The forward takes detectron2's two branches, so that every network tensor is bit-identical
    to the official model's: ``F.batch_norm`` in inference mode when no gradient flows through ``x`` (inference, and a
    frozen stem in training), the precomputed per-channel scale and shift when one does (it saves the memory
    ``batch_norm``'s backward would spend on gradients of the frozen statistics). Both are a per-channel affine map
    that runtimes fold into the preceding convolution (ONNX ``BatchNormalization`` / ``Mul`` + ``Add``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def get_norm(norm: str, channels: int) -> nn.Module | None:
    """The normalisation layer named by a config string ("" = none), as detectron2's ``get_norm``."""
    if not norm:
        return None
    if norm == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unsupported norm {norm!r}; expected one of '', 'FrozenBN', 'GN', 'BN'")


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional norm and activation (detectron2's wrapper, same state_dict keys)."""

    def __init__(self, *args, norm: nn.Module | None = None,
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class ModulatedDeformConv(nn.Module):
    """Modulated deformable 3x3 convolution (DCNv2) through ``torchvision.ops.deform_conv2d``.

    Offsets are interleaved (dy, dx) pairs per kernel tap and the mask is already a probability: the layout the
    official CUDA kernel, torchvision and ONNX ``DeformConv`` all share.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, bias: bool = True, norm: nn.Module | None = None,
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.norm = norm
        self.activation = activation
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # in the weights' precision (FP32) on every device: under CPU autocast torchvision has no FP32 rule for this
        # op and its CPU kernel has no bf16/fp16 version. Cast only what differs: an exported graph must not gain
        # Cast nodes (the FP16 pass would keep them as FP32 islands)
        dtype = self.weight.dtype
        x, offset, mask = (t if t.dtype == dtype else t.to(dtype) for t in (x, offset, mask))
        x = deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                          dilation=self.dilation, mask=mask)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class ModulatedDeformConvWithOff(nn.Module):
    """DCNv2 whose offsets and mask come from a plain 3x3 conv on the same input.

    The offset/mask conv has 27 channels: 0-17 the interleaved offsets, 18-26 the mask logits.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 bias: bool = True, norm: nn.Module | None = None,
                 activation: Callable[[torch.Tensor], torch.Tensor] | None = None):
        super().__init__()
        taps = kernel_size * kernel_size
        self.offset_mask_conv = nn.Conv2d(in_channels, 3 * taps, kernel_size, stride=stride, padding=padding)
        self.dcnv2 = ModulatedDeformConv(in_channels, out_channels, kernel_size, stride, padding, bias=bias,
                                         norm=norm, activation=activation)
        self._taps = taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset_mask = self.offset_mask_conv(x)
        offset = offset_mask[:, : 2 * self._taps]
        mask = torch.sigmoid(offset_mask[:, 2 * self._taps:])
        return self.dcnv2(x, offset, mask)


def coord_features(feat: torch.Tensor) -> torch.Tensor:
    """Append two coordinate channels in [-1, 1]: the first varies along the height, the second along the width.

    This is the official CoordConv input (``meshgrid(linspace(H), linspace(W))`` with 'ij' indexing).
    """
    n, _, h, w = feat.shape
    ys = linspace_pm1(h, feat)
    xs = linspace_pm1(w, feat)
    grid_y = ys.reshape(1, 1, h, 1).expand(n, 1, h, w)
    grid_x = xs.reshape(1, 1, 1, w).expand(n, 1, h, w)
    return torch.cat([feat, grid_y, grid_x], dim=1)


def linspace_pm1(steps, like: torch.Tensor) -> torch.Tensor:
    """``torch.linspace(-1, 1, steps)``, exported as arange arithmetic.

    ONNX export turns ``linspace`` into a division by ``steps - 1``, which is NaN for a one-pixel level (P7 of a
    small image) in a dynamic-size graph. Eager PyTorch keeps the official ``linspace``; the exported graph computes
    -1 + i * 2 / (steps - 1) (-1 for a single step), which differs from it by at most a few float32 ulps.
    """
    if not torch.onnx.is_in_onnx_export():
        return torch.linspace(-1, 1, steps, device=like.device, dtype=like.dtype)
    index = torch.arange(steps, device=like.device).to(like.dtype)
    last = torch.clamp(torch.ones_like(index[:1]) * (index.shape[0] - 1), min=1.0)
    return -1.0 + index * (2.0 / last)


def c2_msra_fill(module: nn.Conv2d) -> None:
    """Kaiming-normal (fan_out) weights and zero bias: detectron2's initialisation of FPN-style convs."""
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Kaiming-uniform with a=1 and zero bias: detectron2's "xavier" fill for lateral/output convs."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)
