"""The PanopticFCN heads: semantic FPN, feature encoder, position head, kernel head, kernel generators.

Module and attribute names follow the official state_dict (``position_head.position_head.position_head_head_1``...),
so official checkpoints load strictly. Shapes in comments: B batch, C channels, h/w a level's size.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Conv2d, ModulatedDeformConvWithOff, c2_msra_fill, coord_features, get_norm


class SemanticFPN(nn.Module):
    """Panoptic-FPN style merge of p2..p5 into one stride-4 map.

    Each level gets max(1, log2(stride / 4)) blocks of 3x3 conv + norm + ReLU, each block followed by a 2x bilinear
    upsample until stride 4; the levels are summed.
    """

    def __init__(self, in_features: list[str], in_channels: int, strides: dict[str, int], conv_dims: int = 256,
                 common_stride: int = 4, norm: str = "GN"):
        super().__init__()
        self.in_features = list(in_features)
        for name in self.in_features:
            ops: list[nn.Module] = []
            length = max(1, int(math.log2(strides[name]) - math.log2(common_stride)))
            for k in range(length):
                conv = Conv2d(in_channels if k == 0 else conv_dims, conv_dims, 3, padding=1, bias=not norm,
                              norm=get_norm(norm, conv_dims), activation=F.relu)
                c2_msra_fill(conv)
                ops.append(conv)
                if strides[name] != common_stride:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.add_module(name, nn.Sequential(*ops))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        out = None
        for name in self.in_features:
            y = getattr(self, name)(features[name])
            out = y if out is None else out + y
        return out  # [B, conv_dims, H/4, W/4]


class SingleHead(nn.Module):
    """A stack of 3x3 conv (or DCNv2) + norm + ReLU, optionally fed coordinate channels first."""

    def __init__(self, in_channels: int, conv_dims: int, num_convs: int, deform: bool = False, coord: bool = False,
                 norm: str = "", name: str = ""):
        super().__init__()
        self.coord = coord
        self.layer_names = []
        for k in range(num_convs):
            cin = in_channels if k == 0 else conv_dims
            if deform:
                layer: nn.Module = ModulatedDeformConvWithOff(cin, conv_dims, 3, 1, 1, bias=not norm,
                                                             norm=get_norm(norm, conv_dims), activation=F.relu)
            else:
                layer = Conv2d(cin, conv_dims, 3, padding=1, bias=not norm, norm=get_norm(norm, conv_dims),
                               activation=F.relu)
            layer_name = f"{name}_head_{k + 1}"
            self.add_module(layer_name, layer)
            self.layer_names.append(layer_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.coord:
            x = coord_features(x)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x


class PositionHead(nn.Module):
    """Object-centre heatmaps (T thing classes) and stuff-region maps (S classes) for one FPN level."""

    def __init__(self, in_channels: int, conv_dims: int, num_convs: int, num_things: int, num_stuff: int,
                 deform: bool = True, coord: bool = False, norm: str = "GN", bias_value: float = -2.19):
        super().__init__()
        self.position_head = SingleHead(in_channels + 2 if coord else in_channels, conv_dims, num_convs,
                                        deform=deform, coord=coord, norm=norm, name="position_head")
        self.out_inst = Conv2d(conv_dims, num_things, 3, padding=1)
        self.out_sem = Conv2d(conv_dims, num_stuff, 3, padding=1)
        for layer in (self.out_inst, self.out_sem):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.constant_(layer.bias, bias_value)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.position_head(feat)
        return self.out_inst(x), self.out_sem(x)  # [B, T, h, w] logits, [B, S, h, w] logits


class KernelHead(nn.Module):
    """Per-position kernel weights (C channels) for things and stuff, with coordinate input."""

    def __init__(self, in_channels: int, conv_dims: int, num_convs: int, deform: bool = False, coord: bool = True,
                 norm: str = "GN"):
        super().__init__()
        self.kernel_head = SingleHead(in_channels + 2 if coord else in_channels, conv_dims, num_convs,
                                      deform=deform, coord=coord, norm=norm, name="kernel_head")
        self.out_conv = Conv2d(conv_dims, conv_dims, 3, padding=1)
        nn.init.normal_(self.out_conv.weight, std=0.01)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.kernel_head(feat))  # [B, C, h, w]


class FeatureEncoder(nn.Module):
    """The high-resolution (stride 4) feature that the generated kernels are multiplied with."""

    def __init__(self, in_channels: int, conv_dims: int, num_convs: int, deform: bool = False, coord: bool = True,
                 norm: str = ""):
        super().__init__()
        self.encode_head = SingleHead(in_channels + 2 if coord else in_channels, conv_dims, num_convs,
                                      deform=deform, coord=coord, norm=norm, name="encode_head")

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.encode_head(feat)  # [B, E, H/4, W/4]


class KernelGenerator(nn.Module):
    """The 1x1 conv that turns gathered C-d kernel weights into E-d mask kernels (thing or stuff).

    The official code runs this conv on the thing kernels laid out as one ``[1, C, N, 1]`` map and on the stuff
    kernels as a batch of ``[S, C, 1, 1]`` maps; ``rows_as_batch`` chooses the same layout, so that the convolution
    kernel (and with it every rounding) is the official one: the embedded kernels are then bit-identical.
    """

    def __init__(self, in_channels: int, embed_dims: int, rows_as_batch: bool = False):
        super().__init__()
        self.embed_extractor = Conv2d(in_channels, embed_dims, 1)
        self.rows_as_batch = rows_as_batch
        nn.init.normal_(self.embed_extractor.weight, std=0.01)
        nn.init.zeros_(self.embed_extractor.bias)

    def forward(self, kernels: torch.Tensor) -> torch.Tensor:
        """Embed kernels given as ``[B, N, C]`` rows into ``[B, N, E]``."""
        b, n, c = kernels.shape
        if self.rows_as_batch:  # [B * N, C, 1, 1]
            out = self.embed_extractor(kernels.reshape(b * n, c, 1, 1))
            return out.reshape(b, n, -1)
        out = self.embed_extractor(kernels.transpose(1, 2).unsqueeze(-1))  # [B, C, N, 1] -> [B, E, N, 1]
        return out.squeeze(-1).transpose(1, 2)
