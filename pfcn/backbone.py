"""ResNet (detectron2 flavour) + FPN with P6/P7 from P5: the backbone of PanopticFCN.

detectron2 flavour means: frozen BN everywhere, the stride of a bottleneck in its first 1x1 conv (MSRA weights,
``STRIDE_IN_1X1``), a 7x7 stem followed by a 3x3/2 max pool, and the first ``FREEZE_AT`` stages frozen for training.
The FPN sums a nearest-upsampled top-down path into 1x1 laterals, smooths each level with a 3x3 conv, and makes
P6/P7 from the P5 *output* (RetinaNet's top block).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .layers import Conv2d, FrozenBatchNorm2d, c2_msra_fill, c2_xavier_fill, get_norm

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block; a projection shortcut when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int = 1,
                 norm: str = "FrozenBN", stride_in_1x1: bool = True, dilation: int = 1):
        super().__init__()
        if in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, 1, stride=stride, bias=False,
                                   norm=get_norm(norm, out_channels))
        else:
            self.shortcut = None
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, 1, stride=stride_1x1, bias=False,
                            norm=get_norm(norm, bottleneck_channels))
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, 3, stride=stride_3x3, padding=dilation,
                            dilation=dilation, bias=False, norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels))
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34); used by the small CPU configuration."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "FrozenBN"):
        super().__init__()
        if in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, 1, stride=stride, bias=False,
                                   norm=get_norm(norm, out_channels))
        else:
            self.shortcut = None
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False,
                            norm=get_norm(norm, out_channels))
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False, norm=get_norm(norm, out_channels))
        for layer in (self.conv1, self.conv2, self.shortcut):
            if layer is not None:
                c2_msra_fill(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + shortcut)


class BasicStem(nn.Module):
    """7x7/2 conv + norm + ReLU + 3x3/2 max pool (output stride 4)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: str = "FrozenBN"):
        super().__init__()
        self.conv1 = Conv2d(in_channels, out_channels, 7, stride=2, padding=3, bias=False,
                            norm=get_norm(norm, out_channels))
        c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """ResNet body returning res2..res5 (strides 4, 8, 16, 32); basic blocks below depth 50."""

    def __init__(self, depth: int = 50, norm: str = "FrozenBN", stem_out_channels: int = 64,
                 res2_out_channels: int = 256, width_per_group: int = 64, stride_in_1x1: bool = True,
                 res5_dilation: int = 1, freeze_at: int = 2, stage_blocks: tuple[int, ...] | None = None):
        super().__init__()
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"MODEL.RESNETS.DEPTH={depth} is not supported; choose one of {sorted(STAGE_BLOCKS)}")
        blocks = stage_blocks or STAGE_BLOCKS[depth]
        basic = depth < 50
        self.stem = BasicStem(3, stem_out_channels, norm)
        in_ch, out_ch, bott_ch = stem_out_channels, res2_out_channels, width_per_group
        self.stage_names = []
        for idx, num_blocks in enumerate(blocks):
            name = f"res{idx + 2}"
            dilation = res5_dilation if idx == 3 else 1
            first_stride = 1 if idx == 0 or dilation > 1 else 2
            stage = []
            for b in range(num_blocks):
                stride = first_stride if b == 0 else 1
                if basic:
                    stage.append(BasicBlock(in_ch, out_ch, stride=stride, norm=norm))
                else:
                    stage.append(BottleneckBlock(in_ch, out_ch, bott_ch, stride=stride, norm=norm,
                                                 stride_in_1x1=stride_in_1x1, dilation=dilation))
                in_ch = out_ch
            self.add_module(name, nn.Sequential(*stage))
            self.stage_names.append(name)
            out_ch, bott_ch = out_ch * 2, bott_ch * 2
        self.out_channels = {f"res{i + 2}": res2_out_channels * 2 ** i for i in range(len(blocks))}
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients to the stem (1) and the first stages (2 = stem + res2), as detectron2's FREEZE_AT."""
        modules = [self.stem] + [getattr(self, n) for n in self.stage_names]
        for module in modules[:freeze_at]:
            for p in module.parameters():
                p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            out[name] = x
        return out


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2(P5), P7 = conv3x3/2(ReLU(P6)) — RetinaNet's extra levels, from the P5 output."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            c2_xavier_fill(module)

    def forward(self, p5: torch.Tensor) -> list[torch.Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """Feature pyramid over res2..res5 with sum fusion; outputs p2..p7 (strides 4..128)."""

    size_divisibility = 32

    def __init__(self, bottom_up: ResNet, in_features: list[str], out_channels: int = 256, norm: str = ""):
        super().__init__()
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        for name in self.in_features:
            level = int(name[-1])
            lateral = Conv2d(bottom_up.out_channels[name], out_channels, 1, bias=not norm,
                             norm=get_norm(norm, out_channels))
            output = Conv2d(out_channels, out_channels, 3, padding=1, bias=not norm,
                            norm=get_norm(norm, out_channels))
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
        self.top_block = LastLevelP6P7(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.bottom_up(x)
        levels = [int(n[-1]) for n in self.in_features]
        outputs: dict[str, torch.Tensor] = {}
        prev = None
        for level, name in zip(reversed(levels), reversed(self.in_features)):
            lateral = getattr(self, f"fpn_lateral{level}")(feats[name])
            prev = lateral if prev is None else lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            outputs[f"p{level}"] = getattr(self, f"fpn_output{level}")(prev)
        top = self.top_block(outputs[f"p{levels[-1]}"])
        result = {f"p{lv}": outputs[f"p{lv}"] for lv in levels}
        for i, t in enumerate(top):
            result[f"p{levels[-1] + 1 + i}"] = t
        return result


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` with a FrozenBatchNorm2d holding the same statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module
