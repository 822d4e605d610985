"""PanopticFCN training losses, as the official ``loss.py`` and ``PanopticFCN.losses`` / ``loss_single_level``.

* Position: sigmoid focal loss (alpha 0.25, gamma 2) of the center logits against the gaussian heatmaps, summed
  ("thing" mode), and of the region logits against the stuff score maps, averaged over the pixels of each
  (image, class) map and then summed ("stuff" mode).
* Things: per instance and level, the POS_NUM positions with the highest predicted center probability (of the
  instance's class) among the pixels where the instance's mask, resampled to the level, exceeds 0.1. The kernels there
  become POS_NUM mask predictions whose dice losses are averaged with the probabilities as weights. The weights are
  not detached: as in the official code, the dice loss also trains the center logits through them.
* Stuff: per class present at a level, the kernel is the sum of the kernel-head output over the class's pixels
  divided by *all* h*w pixels of the level (official ``adaptive_avg_pool2d`` of the masked weights); one dice loss.
* Normalisation: thing terms by the number of (instance, level) assignments in the batch, stuff positions by the
  batch size, stuff masks by the number of (image, level, class) assignments; weights POSITION and SEGMENT.

The counts are local to the process, as in the official multi-GPU training (DDP then averages the gradients).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..inference import HeadOutputs
from .targets import Targets

__all__ = ["LossParams", "sigmoid_focal_loss", "weighted_dice_loss", "panoptic_losses"]

GUIDE_THRESHOLD = 0.1  # official: positions where the level-resampled instance mask exceeds 0.1 may guide
EPS = 1e-8  # official clamp of the dice denominator and of the weight sums


@dataclass(frozen=True)
class LossParams:
    """The config values the official losses read (cfg.MODEL.*)."""

    pos_num: int = 7  # POSITION_HEAD.THING.POS_NUM: guided positions (kernels) per instance and level
    position_weight: float = 1.0  # LOSS_WEIGHT.POSITION
    segment_weight: float = 3.0  # LOSS_WEIGHT.SEGMENT
    focal_alpha: float = 0.25  # LOSS_WEIGHT.FOCAL_LOSS_ALPHA
    focal_gamma: float = 2.0  # LOSS_WEIGHT.FOCAL_LOSS_GAMMA

    @classmethod
    def from_cfg(cls, cfg: Any) -> "LossParams":
        m = cfg.MODEL
        pos_num = int(m.POSITION_HEAD.THING.POS_NUM)
        if pos_num < 1:
            raise ValueError(f"MODEL.POSITION_HEAD.THING.POS_NUM={pos_num}: must be >= 1")
        return cls(pos_num=pos_num, position_weight=float(m.LOSS_WEIGHT.POSITION),
                   segment_weight=float(m.LOSS_WEIGHT.SEGMENT), focal_alpha=float(m.LOSS_WEIGHT.FOCAL_LOSS_ALPHA),
                   focal_gamma=float(m.LOSS_WEIGHT.FOCAL_LOSS_GAMMA))


def _full(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision logits under autocast are lifted; float64 stays for gradcheck)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def sigmoid_focal_loss(inputs: torch.Tensor, targets: torch.Tensor, alpha: float = -1.0, gamma: float = 2.0,
                       mode: str = "thing", reduction: str = "none") -> torch.Tensor:
    """RetinaNet focal loss with soft targets, computed in at least float32.

    Args:
        inputs: logits [B, C, h, w]; targets: same shape, in [0, 1].
        alpha: weight of the positive term (alpha * t + (1 - alpha) * (1 - t)); negative = no weighting.
        mode: "thing" keeps the per-element loss; "stuff" averages it over the pixels of each [B, C] map first.
        reduction: "none", "sum" or "mean".
    """
    x = _full(inputs)
    t = targets.to(x.dtype)
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    if mode == "stuff":
        loss = loss.reshape(*loss.shape[:2], -1).mean(dim=-1)
    elif mode != "thing":
        raise ValueError(f"sigmoid_focal_loss mode={mode!r}: expected 'thing' or 'stuff'")
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction != "none":
        raise ValueError(f"sigmoid_focal_loss reduction={reduction!r}: expected 'none', 'sum' or 'mean'")
    return loss


def weighted_dice_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None,
                       eps: float = EPS) -> torch.Tensor:
    """Per-object dice loss of K mask predictions, averaged with normalised weights (official weighted_dice_loss).

    Args:
        logits: [G, K, P] mask logits (K predictions of each of G objects over P pixels).
        targets: [G, P] (or [G, K, P]) soft targets.
        weights: [G, K] non-negative weights, normalised to sum 1 per object (all-zero stays zero);
            None = K must be 1 and the weight is 1.
    Returns:
        [G] (float32 or float64): sum_k w_k * (1 - 2 sum(p t) / max(sum(p^2) + sum(t^2), eps)), p = sigmoid(logits).
    """
    p = torch.sigmoid(_full(logits))
    t = targets.to(p.dtype)
    if t.dim() == 2:
        t = t.unsqueeze(1)
    inter = (p * t).sum(dim=-1)
    denom = (p * p).sum(dim=-1) + (t * t).sum(dim=-1)
    dice = 1 - 2 * inter / denom.clamp(min=eps)  # [G, K]
    if weights is None:
        if dice.shape[1] != 1:
            raise ValueError(f"weighted_dice_loss: weights=None needs K=1 predictions per object, "
                             f"got K={dice.shape[1]}")
        return dice[:, 0]
    w = weights.to(dice.dtype)
    w = w / w.sum(dim=-1, keepdim=True).clamp(min=eps)
    return (dice * w).sum(dim=-1)


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[b, k] = x[b, index[b, k]]`` for x [B, N, ...] and index [B, K]."""
    shape = index.shape + x.shape[2:]
    return torch.gather(x, 1, index.reshape(index.shape + (1,) * (x.dim() - 2)).expand(shape))


def _embed(embed: nn.Module | Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor) -> torch.Tensor:
    """Apply a kernel generator to kernels given as rows [..., C] -> [..., E].

    ``embed`` is the official 1x1 ``embed_extractor`` conv (applied as the linear map it is) or any callable on rows,
    such as ``pfcn.heads.KernelGenerator``.
    """
    if isinstance(embed, nn.Conv2d):
        if tuple(embed.kernel_size) != (1, 1):
            raise ValueError(f"embed conv must be 1x1, got kernel_size={tuple(embed.kernel_size)}")
        return F.linear(rows, embed.weight.flatten(1), embed.bias)
    return embed(rows)


def panoptic_losses(heads: HeadOutputs, targets: Targets, thing_embed: nn.Module | Callable,
                    stuff_embed: nn.Module | Callable, params: LossParams | Any) -> dict[str, torch.Tensor]:
    """The four official losses of a batch.

    Args:
        heads: the model's ``HeadOutputs`` (centers / regions / weights over the levels, encoded [B, E, H/4, W/4]).
        targets: ``generate_targets`` for the same batch and shapes.
        thing_embed, stuff_embed: the kernel generators (``model.thing_generator.embed_extractor`` or the generator
            itself), applied to the gathered kernels.
        params: ``LossParams`` or a config (read with ``LossParams.from_cfg``).
    Returns:
        {"loss_pos_th", "loss_pos_st", "loss_seg_th", "loss_seg_st"}: float32 scalars.
    """
    if not isinstance(params, LossParams):
        params = LossParams.from_cfg(params)
    num_levels = len(heads.centers)
    if len(targets.levels) != num_levels or len(heads.regions) != num_levels or len(heads.weights) != num_levels:
        raise ValueError(f"levels: {len(heads.centers)} centers, {len(heads.regions)} regions, "
                         f"{len(heads.weights)} weights, {len(targets.levels)} target levels")
    b, e, h4, w4 = heads.encoded.shape
    if tuple(targets.inst_masks.shape[2:]) != (h4, w4):
        raise ValueError(f"targets are for a {tuple(targets.inst_masks.shape[2:])} encoded feature, heads give "
                         f"{(h4, w4)}")
    k = params.pos_num
    encoded = heads.encoded.reshape(b, e, h4 * w4)

    # Slots used per level: the batch maximum of the counts, at least 1 (official thing_num / stuff_num).
    counts = torch.stack([lv.slot_valid.sum(dim=1) for lv in targets.levels]
                         + [lv.sem_slot_valid.sum(dim=1) for lv in targets.levels])  # [2L, B]
    nums = counts.amax(dim=1).clamp(min=1).tolist()  # the one host sync (official: int(...) per level)
    thing_nums, stuff_nums = nums[:num_levels], nums[num_levels:]

    pos_th = heads.encoded.new_zeros((), dtype=torch.float32)
    pos_st = heads.encoded.new_zeros((), dtype=torch.float32)
    th_kernels, th_weights, th_rows, th_valid = [], [], [], []
    st_kernels, st_rows, st_valid = [], [], []
    for level, lv in enumerate(targets.levels):
        center, region, weight = heads.centers[level], heads.regions[level], heads.weights[level]
        _, t, h, w = center.shape
        c = weight.shape[1]
        if tuple(lv.center.shape) != tuple(center.shape) or tuple(lv.sem_scores.shape) != tuple(region.shape):
            raise ValueError(f"level {level}: targets {tuple(lv.center.shape)} / {tuple(lv.sem_scores.shape)} do not "
                             f"match head outputs {tuple(center.shape)} / {tuple(region.shape)}")
        pos_th = pos_th + sigmoid_focal_loss(center, lv.center, params.focal_alpha, params.focal_gamma, "thing", "sum")
        pos_st = pos_st + sigmoid_focal_loss(region, lv.sem_scores, params.focal_alpha, params.focal_gamma, "stuff",
                                             "sum")
        flat_weight = weight.reshape(b, c, h * w)

        # Things: guided positions = top-k of the class probability inside the (resampled) mask.
        n = thing_nums[level]
        rows, cls, valid = lv.slot_inst[:, :n], lv.slot_class[:, :n], lv.slot_valid[:, :n]
        guide = _gather_rows(lv.guide.reshape(b, -1, h * w), rows)  # [B, n, hw]
        prob = _gather_rows(torch.sigmoid(_full(center)).reshape(b, t, h * w), cls)  # [B, n, hw]
        keep = (guide > GUIDE_THRESHOLD) & valid.unsqueeze(2)
        guidance = torch.where(keep, prob, 0.0)
        if h * w < k:  # a level smaller than POS_NUM: pad with zero-weight positions (they add nothing)
            guidance = F.pad(guidance, (0, k - h * w))
        pos_weight, pos_index = torch.topk(guidance, k, dim=2)  # [B, n, k]
        pos_index = pos_index.clamp(max=h * w - 1).reshape(b, 1, n * k).expand(b, c, n * k)
        kernels = torch.gather(flat_weight, 2, pos_index).transpose(1, 2)  # [B, n*k, C]
        th_kernels.append(kernels)
        th_weights.append(pos_weight)
        th_rows.append(rows)
        th_valid.append(valid)

        # Stuff: masked sum of the kernel weights over the class's level pixels / (h * w).
        m = stuff_nums[level]
        st_cls, st_ok = lv.sem_slot_class[:, :m], lv.sem_slot_valid[:, :m]
        region_mask = (_gather_rows(lv.sem_scores.reshape(b, -1, h * w), st_cls) > 0).to(flat_weight.dtype)
        st_kernels.append(torch.matmul(region_mask, flat_weight.transpose(1, 2)) / (h * w))  # [B, m, C]
        st_rows.append(st_cls)
        st_valid.append(st_ok)

    # Thing masks: every kernel times the encoded feature, dice against the instance's stride-4 mask.
    th_emb = _embed(thing_embed, torch.cat(th_kernels, dim=1))  # [B, Nt*k, E]
    th_logits = torch.matmul(th_emb, encoded)  # [B, Nt*k, HW]
    rows = torch.cat(th_rows, dim=1)  # [B, Nt]
    nt = rows.shape[1]
    th_target = _gather_rows(targets.inst_masks.reshape(b, -1, h4 * w4), rows)  # [B, Nt, HW]
    th_dice = weighted_dice_loss(th_logits.reshape(b * nt, k, h4 * w4), th_target.reshape(b * nt, h4 * w4),
                                 torch.cat(th_weights, dim=1).reshape(b * nt, k))
    th_valid_f = torch.cat(th_valid, dim=1).reshape(-1).to(torch.float32)
    thing_gt_num = th_valid_f.sum().clamp(min=1.0)

    # Stuff masks.
    st_emb = _embed(stuff_embed, torch.cat(st_kernels, dim=1))  # [B, Ns, E]
    st_logits = torch.matmul(st_emb, encoded)  # [B, Ns, HW]
    st_cls = torch.cat(st_rows, dim=1)
    ns = st_cls.shape[1]
    st_target = _gather_rows(targets.sem_masks.reshape(b, -1, h4 * w4), st_cls)
    st_dice = weighted_dice_loss(st_logits.reshape(b * ns, 1, h4 * w4), st_target.reshape(b * ns, h4 * w4))
    st_valid_f = torch.cat(st_valid, dim=1).reshape(-1).to(torch.float32)
    stuff_gt_num = st_valid_f.sum().clamp(min=1.0)

    return {
        "loss_pos_th": params.position_weight * pos_th / thing_gt_num,
        "loss_pos_st": params.position_weight * pos_st / max(b, 1),
        "loss_seg_th": params.segment_weight * (th_dice * th_valid_f).sum() / thing_gt_num,
        "loss_seg_st": params.segment_weight * (st_dice * st_valid_f).sum() / stuff_gt_num,
    }
