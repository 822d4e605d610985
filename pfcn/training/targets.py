"""Training targets of PanopticFCN, computed as the official ``GenerateGT`` (panopticfcn/gt_generate.py) does.

Per image and per level P3..P7 the official code builds:
  * things: a gaussian center heatmap per class; the instances whose scale (sqrt of the *box* area, in pixels of the
    transformed image) lies in KERNEL_HEAD.INSTANCE_SCALES[l] (both ends inclusive) occupy the first slots of a
    TENSOR_DIM-long list (mask at stride 4, class, flat center index, validity);
  * stuff: the stride-4 soft class maps (one-hot of ``sem_seg``, bilinear to stride 4), their bilinear resampling to
    the level with values < 0.5 set to 0 (the region target), and the classes present at the level in class order.

The official tensors repeat the stride-4 masks per level and slot ([B, 100, H/4, W/4] five times for things and
[B, S, H/4, W/4] five times for stuff). Here the stride-4 masks are stored once per image (``Targets.inst_masks``,
``Targets.sem_masks``) and each level keeps slot -> row indices into them; the losses gather the rows they need,
which yields the same numbers with a fraction of the memory. Every step is vectorised over instances and classes;
only images and levels are looped over.

Deliberate deviations (each only reachable where the official code produces garbage or crashes):
  * a mask that vanishes when downsampled to stride 4 has no mass center (official: NaN, cast to int, i.e. the
    corner); its center falls back to the box center;
  * centers are clamped to [0, w-1] x [0, h-1] (official clamps to w and h, which would index the next row);
  * more than TENSOR_DIM instances on one level keep the first TENSOR_DIM slots (official: shape error); the heatmap
    still shows every instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["TargetParams", "LevelTargets", "Targets", "generate_targets", "gaussian_radius"]


@dataclass(frozen=True)
class TargetParams:
    """The config values ``GenerateGT`` reads (cfg.MODEL.*)."""

    num_things: int = 80  # POSITION_HEAD.THING.NUM_CLASSES
    num_stuff: int = 54  # POSITION_HEAD.STUFF.NUM_CLASSES (class 0 = all things)
    instance_scales: tuple[tuple[float, float], ...] = ((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048))
    common_stride: int = 4  # SEMANTIC_FPN.COMMON_STRIDE: stride of every mask target
    center_type: str = "mass"  # POSITION_HEAD.THING.CENTER_TYPE: contains "mass" -> mask centroid, else box center
    min_overlap: float = 0.7  # POSITION_HEAD.THING.MIN_OVERLAP
    gaussian_sigma: float = 3.0  # POSITION_HEAD.THING.GAUSSIAN_SIGMA: sigma = diameter / this
    tensor_dim: int = 100  # MODEL.TENSOR_DIM: thing slots per image and level
    ignore_value: int = 255  # MODEL.IGNORE_VALUE: sem_seg label of void/crowd pixels

    @classmethod
    def from_cfg(cls, cfg: Any) -> "TargetParams":
        m = cfg.MODEL
        if not m.POSITION_HEAD.STUFF.WITH_THING:
            raise ValueError("MODEL.POSITION_HEAD.STUFF.WITH_THING=False is not supported: pfcn's stuff head always "
                             "carries class 0 for 'things', as every official configuration does")
        return cls(
            num_things=int(m.POSITION_HEAD.THING.NUM_CLASSES),
            num_stuff=int(m.POSITION_HEAD.STUFF.NUM_CLASSES),
            instance_scales=tuple((float(lo), float(hi)) for lo, hi in m.KERNEL_HEAD.INSTANCE_SCALES),
            common_stride=int(m.SEMANTIC_FPN.COMMON_STRIDE),
            center_type=str(m.POSITION_HEAD.THING.CENTER_TYPE),
            min_overlap=float(m.POSITION_HEAD.THING.MIN_OVERLAP),
            gaussian_sigma=float(m.POSITION_HEAD.THING.GAUSSIAN_SIGMA),
            tensor_dim=int(m.TENSOR_DIM),
            ignore_value=int(m.IGNORE_VALUE),
        )


@dataclass
class LevelTargets:
    """Targets of one pyramid level (h x w). D = TENSOR_DIM, N = max instances per image, S = stuff classes."""

    center: torch.Tensor  # [B, T, h, w] float32 gaussian heatmaps (focal target of the center logits)
    guide: torch.Tensor  # [B, N, h, w] float32 stride-4 instance masks resampled to the level (official guided_inst)
    slot_inst: torch.Tensor  # [B, D] int64 row of Targets.inst_masks held by each slot (0 when empty)
    slot_class: torch.Tensor  # [B, D] int64 thing class of each slot (0 when empty)
    slot_index: torch.Tensor  # [B, D] int64 flat center position y * w + x (official "index"; not used by the losses)
    slot_valid: torch.Tensor  # [B, D] bool slot holds an instance (official "index_mask")
    sem_scores: torch.Tensor  # [B, S, h, w] float32 region target: soft class maps, values < 0.5 set to 0
    sem_slot_class: torch.Tensor  # [B, S] int64 classes present at this level first, in class order
    sem_slot_valid: torch.Tensor  # [B, S] bool slot holds a present class (official "sem_index")


@dataclass
class Targets:
    """All training targets of a batch."""

    levels: list[LevelTargets]
    inst_masks: torch.Tensor  # [B, N, H/4, W/4] float32 soft instance masks at stride 4, zero outside the image
    sem_masks: torch.Tensor  # [B, S, H/4, W/4] float32 soft stuff-class maps at stride 4 (official gt_semantics)
    num_instances: torch.Tensor  # [B] int64 instances per image


def gaussian_radius(wh: torch.Tensor, min_overlap: float) -> torch.Tensor:
    """CornerNet/CenterNet gaussian radius for boxes ``wh [..., 2]`` (width, height), as the official code has it.

    The three cases of CornerNet's overlap rule, each solved as (b + sqrt(b^2 - 4ac)) / 2 (CenterNet's variant,
    which divides by 2 rather than 2a), minimum taken.
    """
    width, height = wh[..., 0], wh[..., 1]
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2 ** 2 - 4 * 4 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return torch.min(r1, torch.min(r2, r3))


def _scaled(x: torch.Tensor, factor: float) -> torch.Tensor:
    """``x * factor`` with the factor rounded to x's dtype first, as a float32 tensor times a Python float does."""
    return x * torch.tensor(factor, dtype=x.dtype, device=x.device)


def _draw_gaussians(centers: torch.Tensor, radius: torch.Tensor, channel: torch.Tensor, num_channels: int,
                    shape: tuple[int, int], sigma_factor: float) -> torch.Tensor:
    """Max-composite of one gaussian per row of ``centers [M, 2]`` (x, y ints) into ``[num_channels, h, w]``.

    Gaussian i covers the (2r+1)^2 window around its center (clipped at the borders) with
    exp(-(dx^2 + dy^2) / (2 sigma^2)), sigma = (2r+1) / sigma_factor, evaluated in float64 (official: numpy) and
    stored as float32; ``channel[i] < 0`` draws nothing.
    """
    h, w = shape
    device = centers.device
    out = torch.zeros(num_channels, h * w, dtype=torch.float32, device=device)
    if centers.shape[0] == 0:
        return out.reshape(num_channels, h, w)
    r = radius.to(torch.int64)
    dx = torch.arange(w, device=device).reshape(1, 1, w) - centers[:, 0].reshape(-1, 1, 1)  # [M, 1, w]
    dy = torch.arange(h, device=device).reshape(1, h, 1) - centers[:, 1].reshape(-1, 1, 1)  # [M, h, 1]
    rr = r.reshape(-1, 1, 1)
    inside = (dx.abs() <= rr) & (dy.abs() <= rr)  # [M, h, w]
    sigma = (2 * rr + 1).to(torch.float64) / sigma_factor
    gauss = torch.exp(-(dx * dx + dy * dy).to(torch.float64) / (2 * sigma * sigma))
    # gaussian2D zeroes values below eps * max; the max is 1 (the window always holds its center).
    gauss = torch.where(inside & (gauss >= np.finfo(np.float64).eps), gauss, 0.0).to(torch.float32)
    gauss = gauss * (channel >= 0).to(torch.float32).reshape(-1, 1, 1)
    index = channel.clamp(min=0).reshape(-1, 1).expand(-1, h * w)
    out.scatter_reduce_(0, index, gauss.reshape(-1, h * w), reduce="amax", include_self=True)
    return out.reshape(num_channels, h, w)


def _compact(present: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Order of the True entries of ``present [B, K]`` (stable), padded: (index [B, length], valid [B, length])."""
    b, k = present.shape
    rank = torch.cumsum(present.to(torch.int64), dim=1) - 1
    keep = present & (rank < length)
    slot = torch.where(keep, rank, torch.full_like(rank, length))  # overflow slot `length` is dropped
    index = torch.zeros(b, length + 1, dtype=torch.int64, device=present.device)
    index.scatter_(1, slot, torch.arange(k, device=present.device).expand(b, k).contiguous())
    valid = torch.zeros(b, length + 1, dtype=torch.bool, device=present.device)
    valid.scatter_(1, slot, keep)
    index = torch.where(valid, index, 0)
    return index[:, :length], valid[:, :length]


def _sample_tensors(sample: Mapping[str, Any], index: int, params: TargetParams,
                    device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validated (masks [N, h, w] bool, classes [N], boxes [N, 4], sem_seg [h, w]) of one sample on ``device``."""
    name = f"sample {index} (image_id={sample.get('image_id')!r})"
    if "sem_seg" not in sample:
        raise KeyError(f"{name}: no 'sem_seg'; training targets need the stuff labels")
    if "instances" not in sample:
        raise KeyError(f"{name}: no 'instances'; training targets need the thing masks, classes and boxes")
    inst = sample["instances"]
    for key in ("masks", "classes", "boxes"):
        if key not in inst:
            raise KeyError(f"{name}: instances has no {key!r}")
    sem = torch.as_tensor(sample["sem_seg"]).to(device=device, dtype=torch.int64)
    masks = torch.as_tensor(inst["masks"]).to(device=device, dtype=torch.bool)
    classes = torch.as_tensor(inst["classes"]).to(device=device, dtype=torch.int64)
    boxes = torch.as_tensor(inst["boxes"]).to(device=device, dtype=torch.float32)
    n = masks.shape[0]
    if sem.dim() != 2:
        raise ValueError(f"{name}: sem_seg must be [H, W], got shape {tuple(sem.shape)}")
    if masks.dim() != 3 or tuple(masks.shape[1:]) != tuple(sem.shape):
        raise ValueError(f"{name}: instances.masks shape {tuple(masks.shape)} does not match sem_seg "
                         f"{tuple(sem.shape)} as [N, H, W]")
    if tuple(classes.shape) != (n,) or tuple(boxes.shape) != (n, 4):
        raise ValueError(f"{name}: expected classes [{n}] and boxes [{n}, 4], got {tuple(classes.shape)} and "
                         f"{tuple(boxes.shape)}")
    if n and bool(((classes < 0) | (classes >= params.num_things)).any()):
        raise ValueError(f"{name}: thing classes must lie in 0..{params.num_things - 1}, got "
                         f"{sorted(set(classes.tolist()))}")
    bad = (sem < 0) | ((sem >= params.num_stuff) & (sem != params.ignore_value))
    if bool(bad.any()):
        raise ValueError(f"{name}: sem_seg labels must lie in 0..{params.num_stuff - 1} or be "
                         f"{params.ignore_value}, got {sorted(set(sem[bad].unique().tolist()))[:10]}")
    return masks, classes, boxes, sem


def _stride4_size(h: int, w: int, stride: int) -> tuple[int, int]:
    """Official ``int(h / stride + 0.5)``: the image's own extent at the mask stride (not the padded one)."""
    return int(h / stride + 0.5), int(w / stride + 0.5)


@torch.no_grad()
def generate_targets(samples: Sequence[Mapping[str, Any]], image_shape: tuple[int, int],
                     level_shapes: Sequence[tuple[int, int]], encoded_shape: tuple[int, int],
                     params: TargetParams | Any, device: torch.device | str | None = None) -> Targets:
    """Targets of a training batch, as the official ``GenerateGT.generate``.

    Args:
        samples: dataset samples (see the brief): ``instances`` {masks bool [N, h, w], classes int64 [N] contiguous
            thing ids, boxes float [N, 4] xyxy} and ``sem_seg`` int64 [h, w] (0 = things, 1..S-1 stuff, 255 ignore),
            all at the transformed image size.
        image_shape: (H, W) of the padded network input batch.
        level_shapes: (h_l, w_l) of the heads' outputs per level P3..P7.
        encoded_shape: (H/4, W/4) of the encoded feature.
        params: ``TargetParams`` or a config (read with ``TargetParams.from_cfg``).
        device: where the targets live (the model's device); default: the samples' tensors' device.
    """
    if not isinstance(params, TargetParams):
        params = TargetParams.from_cfg(params)
    if len(level_shapes) != len(params.instance_scales):
        raise ValueError(f"{len(level_shapes)} levels but MODEL.KERNEL_HEAD.INSTANCE_SCALES has "
                         f"{len(params.instance_scales)} ranges")
    if not samples:
        raise ValueError("generate_targets needs at least one sample")
    if device is None:
        device = torch.as_tensor(samples[0]["sem_seg"]).device
    device = torch.device(device)
    stride = params.common_stride
    big_h, big_w = int(image_shape[0]), int(image_shape[1])
    h4, w4 = int(encoded_shape[0]), int(encoded_shape[1])
    b = len(samples)
    t, s = params.num_things, params.num_stuff
    use_mass = "mass" in params.center_type

    per_image = [_sample_tensors(sample, i, params, device) for i, sample in enumerate(samples)]
    counts = [p[0].shape[0] for p in per_image]
    n_max = max(max(counts), 1)
    inst_masks = torch.zeros(b, n_max, h4, w4, dtype=torch.float32, device=device)
    sem_masks = torch.zeros(b, s, h4, w4, dtype=torch.float32, device=device)
    centers = torch.zeros(b, n_max, 2, dtype=torch.float32, device=device)  # (x, y) at stride 4
    boxes = torch.zeros(b, n_max, 4, dtype=torch.float32, device=device)
    classes = torch.zeros(b, n_max, dtype=torch.int64, device=device)
    exists = torch.zeros(b, n_max, dtype=torch.bool, device=device)

    for i, (masks, cls, box, sem) in enumerate(per_image):
        h, w = sem.shape
        if h > big_h or w > big_w:
            raise ValueError(f"sample {i}: image {h}x{w} is larger than the batch {big_h}x{big_w}")
        nh, nw = _stride4_size(h, w, stride)
        if nh > h4 or nw > w4:
            raise ValueError(f"sample {i}: stride-{stride} size {nh}x{nw} exceeds the encoded feature {h4}x{w4}")
        # Stuff: one-hot (ignore -> no class) bilinear to stride 4, top-left in the zero canvas. Only the classes
        # present are resampled; the others are all-zero maps either way.
        sem = torch.where(sem == params.ignore_value, s, sem)
        present = torch.bincount(sem.flatten(), minlength=s + 1)[:s].nonzero()[:, 0]
        if present.numel():
            onehot = (sem.unsqueeze(0) == present.reshape(-1, 1, 1)).to(torch.float32)
            sem_masks[i, present, :nh, :nw] = F.interpolate(onehot.unsqueeze(0), size=(nh, nw), mode="bilinear",
                                                            align_corners=False)[0]
        n = masks.shape[0]
        if n == 0:
            continue
        m4 = F.interpolate(masks.to(torch.float32).unsqueeze(0), size=(nh, nw), mode="bilinear",
                           align_corners=False)[0]  # [n, nh, nw]
        inst_masks[i, :n, :nh, :nw] = m4
        box_center = (box[:, :2] + box[:, 2:]) / 2 / stride  # Boxes.get_centers() / common_stride
        if use_mass:
            # Mean (x, y) of the pixels where the resampled mask is non-zero; integer sums keep it exact.
            on = m4 > 0
            count = on.sum(dim=(1, 2))
            sum_x = (on.sum(dim=1) * torch.arange(nw, device=device)).sum(dim=1)
            sum_y = (on.sum(dim=2) * torch.arange(nh, device=device)).sum(dim=1)
            mass = torch.stack([sum_x, sum_y], dim=1).to(torch.float64) / count.clamp(min=1).unsqueeze(1)
            centers[i, :n] = torch.where((count > 0).unsqueeze(1), mass.to(torch.float32), box_center)
        else:
            centers[i, :n] = box_center
        boxes[i, :n] = box
        classes[i, :n] = cls
        exists[i, :n] = True

    box_w = boxes[..., 2] - boxes[..., 0]
    box_h = boxes[..., 3] - boxes[..., 1]
    scales = torch.sqrt(box_w * box_h)  # sqrt(Boxes.area()), pixels of the transformed image

    levels = []
    for (lh, lw), (lo, hi) in zip(level_shapes, params.instance_scales):
        lh, lw = int(lh), int(lw)
        assign = exists & (scales >= lo) & (scales <= hi)  # [B, n_max]
        # Centers: stride-4 coordinates rescaled to the level, truncated.
        cx = _scaled(centers[..., 0], lw / w4).to(torch.int64).clamp(0, lw - 1)
        cy = _scaled(centers[..., 1], lh / h4).to(torch.int64).clamp(0, lh - 1)
        # Heatmaps: radius from the box size in level units.
        wh = torch.stack([_scaled(box_w, lw / big_w), _scaled(box_h, lh / big_h)], dim=-1)
        radius = gaussian_radius(wh, params.min_overlap).clamp(min=0).to(torch.int32)
        channel = torch.where(assign, classes + t * torch.arange(b, device=device).unsqueeze(1), -1)
        center = _draw_gaussians(torch.stack([cx, cy], dim=-1).reshape(-1, 2), radius.reshape(-1),
                                 channel.reshape(-1), b * t, (lh, lw), params.gaussian_sigma).reshape(b, t, lh, lw)
        slot_inst, slot_valid = _compact(assign, params.tensor_dim)
        slot_class = torch.where(slot_valid, torch.gather(classes, 1, slot_inst), 0)
        slot_index = torch.where(slot_valid, torch.gather(cy * lw + cx, 1, slot_inst), 0)
        guide = F.interpolate(inst_masks, size=(lh, lw), mode="bilinear", align_corners=False)
        # Stuff: the stride-4 maps resampled to the level, clamped to 1, values below 0.5 dropped.
        sem_scores = F.interpolate(sem_masks, size=(lh, lw), mode="bilinear", align_corners=False).clamp(max=1.0)
        sem_scores = torch.where(sem_scores < 0.5, 0.0, sem_scores)
        sem_slot_class, sem_slot_valid = _compact(sem_scores.flatten(2).sum(dim=2) > 0, s)
        levels.append(LevelTargets(center=center, guide=guide, slot_inst=slot_inst, slot_class=slot_class,
                                   slot_index=slot_index, slot_valid=slot_valid, sem_scores=sem_scores,
                                   sem_slot_class=sem_slot_class, sem_slot_valid=sem_slot_valid))
    return Targets(levels=levels, inst_masks=inst_masks, sem_masks=sem_masks,
                   num_instances=torch.tensor(counts, dtype=torch.int64, device=device))
