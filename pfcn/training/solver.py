"""Optimizer, learning-rate schedules and gradient clipping, as detectron2 builds them for PanopticFCN.

* ``build_optimizer``: SGD with momentum over detectron2's parameter groups (``get_default_optimizer_params``): every
  trainable parameter once; parameters of normalisation layers get SOLVER.WEIGHT_DECAY_NORM; parameters named
  ``bias`` then get SOLVER.BIAS_LR_FACTOR x BASE_LR (if the factor is not 1) and SOLVER.WEIGHT_DECAY_BIAS (if set),
  overriding the norm rule; groups with equal hyper-parameters are merged in first-seen order.
* ``build_lr_scheduler``: the official ``WarmupPolyLR`` (panopticfcn/build_solver.py: the warm-up factor multiplies the
  poly factor; POLY_LR_CONSTANT_ENDING floors the poly factor once warm-up is over), plus detectron2's
  ``WarmupMultiStepLR`` / ``WarmupCosineLR`` (LRMultiplier semantics: warm-up rises linearly to the schedule's value
  at the end of warm-up). All are closed forms of the iteration, so a scheduler's state_dict is its iteration.
* ``GradientClipper``: detectron2 clips each parameter separately inside ``optimizer.step`` ("value": clamp every
  element to +-CLIP_VALUE; "norm": rescale each parameter's gradient to norm <= CLIP_VALUE, not the global norm).
  Call it right before ``optimizer.step()`` (after ``GradScaler.unscale_`` when training with AMP; detectron2's AMP
  trainer clips the still-scaled gradients, which is a bug we do not reproduce).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "NORM_TYPES", "optimizer_param_groups", "build_optimizer", "GradientClipper", "WarmupPolyLR",
    "WarmupMultiStepLR", "WarmupCosineLR", "build_lr_scheduler",
]

# detectron2's list of normalisation layers whose parameters get WEIGHT_DECAY_NORM (FrozenBN has no parameters).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)


def optimizer_param_groups(model: nn.Module, base_lr: float, weight_decay: float, weight_decay_norm: float | None,
                           bias_lr_factor: float = 1.0, weight_decay_bias: float | None = None) -> list[dict]:
    """detectron2's ``get_default_optimizer_params`` + ``reduce_param_groups``: one group per distinct (lr, wd)."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for _, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr, wd = base_lr, weight_decay
            if isinstance(module, NORM_TYPES) and weight_decay_norm is not None:
                wd = weight_decay_norm
            if name == "bias":
                if bias_lr_factor != 1.0:
                    lr = base_lr * bias_lr_factor
                if weight_decay_bias is not None:
                    wd = weight_decay_bias
            groups.setdefault((lr, wd), []).append(param)
    return [{"params": params, "lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]


def build_optimizer(cfg: Any, model: nn.Module) -> torch.optim.SGD:
    """SGD (SOLVER.MOMENTUM, NESTEROV) over ``optimizer_param_groups``; frozen parameters are left out."""
    s = cfg.SOLVER
    groups = optimizer_param_groups(
        model, base_lr=float(s.BASE_LR), weight_decay=float(s.WEIGHT_DECAY),
        weight_decay_norm=None if s.WEIGHT_DECAY_NORM is None else float(s.WEIGHT_DECAY_NORM),
        bias_lr_factor=float(s.BIAS_LR_FACTOR),
        weight_decay_bias=None if s.WEIGHT_DECAY_BIAS is None else float(s.WEIGHT_DECAY_BIAS))
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return torch.optim.SGD(groups, lr=float(s.BASE_LR), momentum=float(s.MOMENTUM), nesterov=bool(s.NESTEROV),
                           weight_decay=float(s.WEIGHT_DECAY))


@dataclass(frozen=True)
class GradientClipper:
    """SOLVER.CLIP_GRADIENTS: per-parameter clipping of the gradients of an optimizer's parameters."""

    clip_type: str = "value"  # "value" or "norm"
    clip_value: float = 1.0
    norm_type: float = 2.0

    def __post_init__(self) -> None:
        if self.clip_type not in ("value", "norm"):
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={self.clip_type!r}: expected 'value' or 'norm'")
        if not self.clip_value > 0:
            raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE={self.clip_value}: must be > 0")

    @classmethod
    def from_cfg(cls, cfg: Any) -> "GradientClipper | None":
        """The configured clipper, or None when SOLVER.CLIP_GRADIENTS.ENABLED is false."""
        c = cfg.SOLVER.CLIP_GRADIENTS
        if not c.ENABLED:
            return None
        return cls(str(c.CLIP_TYPE), float(c.CLIP_VALUE), float(c.NORM_TYPE))

    def __call__(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if self.clip_type == "value":  # element-wise, so clipping all at once equals clipping each parameter
            torch.nn.utils.clip_grad_value_(params, self.clip_value)
        else:
            for p in params:
                torch.nn.utils.clip_grad_norm_(p, self.clip_value, self.norm_type)


def _warmup_factor(method: str, it: int, warmup_iters: int, warmup_factor: float) -> float:
    """detectron2's ``_get_warmup_factor_at_iter``: 1 after warm-up; linear from warmup_factor to 1, or constant."""
    if it >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = it / warmup_iters
        return warmup_factor * (1 - alpha) + alpha
    raise ValueError(f"SOLVER.WARMUP_METHOD={method!r}: expected 'linear' or 'constant'")


class _ClosedFormLR(torch.optim.lr_scheduler.LRScheduler):
    """Base of iteration-indexed schedules: lr_i = base_lr * factor(i), where i = ``last_epoch`` (an iteration)."""

    def factor(self, it: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base_lr * f for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()


class WarmupPolyLR(_ClosedFormLR):
    """The official poly schedule: warmup(i) * (1 - i / max_iters) ** power; after warm-up the poly factor is floored
    at ``constant_ending`` when that is > 0 (panopticfcn/build_solver.py)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, warmup_factor: float = 0.001,
                 warmup_iters: int = 1000, warmup_method: str = "linear", power: float = 0.9,
                 constant_ending: float = 0.0, last_epoch: int = -1):
        if max_iters <= 0:
            raise ValueError(f"SOLVER.MAX_ITER={max_iters}: must be > 0")
        _warmup_factor(warmup_method, 0, 1, warmup_factor)  # validates the method
        self.max_iters = int(max_iters)
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_method = warmup_method
        self.power = float(power)
        self.constant_ending = float(constant_ending)
        super().__init__(optimizer, last_epoch)

    def factor(self, it: int) -> float:
        warm = _warmup_factor(self.warmup_method, it, self.warmup_iters, self.warmup_factor)
        poly = math.pow(max(0.0, 1.0 - it / self.max_iters), self.power)
        if self.constant_ending > 0 and warm == 1.0 and poly < self.constant_ending:
            return self.constant_ending
        return warm * poly


class _WarmupThenSchedule(_ClosedFormLR):
    """detectron2's ``WarmupParamScheduler`` inside ``LRMultiplier``: during warm-up the factor rises linearly from
    warmup_factor * main(0) to main(warmup_iters) (or stays at the start value, "constant"); then main(i)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, warmup_factor: float, warmup_iters: int,
                 warmup_method: str, last_epoch: int):
        if max_iters <= 0:
            raise ValueError(f"SOLVER.MAX_ITER={max_iters}: must be > 0")
        _warmup_factor(warmup_method, 0, 1, warmup_factor)
        self.max_iters = int(max_iters)
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = min(int(warmup_iters), self.max_iters)
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def main(self, it: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def factor(self, it: int) -> float:
        if it >= self.warmup_iters:
            return self.main(it)
        start = self.warmup_factor * self.main(0)
        if self.warmup_method == "constant":
            return start
        alpha = it / self.warmup_iters
        return start + (self.main(self.warmup_iters) - start) * alpha


class WarmupMultiStepLR(_WarmupThenSchedule):
    """gamma ** (number of milestones <= i), with warm-up; milestones past max_iters are dropped (detectron2)."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, milestones: list[int], gamma: float = 0.1,
                 warmup_factor: float = 0.001, warmup_iters: int = 1000, warmup_method: str = "linear",
                 last_epoch: int = -1):
        steps = [int(x) for x in milestones]
        if steps != sorted(steps):
            raise ValueError(f"SOLVER.STEPS={list(milestones)}: must be increasing")
        self.milestones = [x for x in steps if x <= max_iters]
        self.gamma = float(gamma)
        super().__init__(optimizer, max_iters, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def main(self, it: int) -> float:
        return self.gamma ** bisect_right(self.milestones, it)


class WarmupCosineLR(_WarmupThenSchedule):
    """Half cosine from 1 to end_factor (= BASE_LR_END / BASE_LR) over max_iters, with warm-up."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, end_factor: float = 0.0,
                 warmup_factor: float = 0.001, warmup_iters: int = 1000, warmup_method: str = "linear",
                 last_epoch: int = -1):
        if not 0.0 <= end_factor <= 1.0:
            raise ValueError(f"SOLVER.BASE_LR_END / BASE_LR = {end_factor}: must lie in [0, 1]")
        self.end_factor = float(end_factor)
        super().__init__(optimizer, max_iters, warmup_factor, warmup_iters, warmup_method, last_epoch)

    def main(self, it: int) -> float:
        where = min(it / self.max_iters, 1.0)
        return self.end_factor + 0.5 * (1.0 - self.end_factor) * (1.0 + math.cos(math.pi * where))


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule named by SOLVER.LR_SCHEDULER_NAME ("WarmupPolyLR", "WarmupMultiStepLR", "WarmupCosineLR")."""
    s = cfg.SOLVER
    name = s.LR_SCHEDULER_NAME
    warm = dict(warmup_factor=float(s.WARMUP_FACTOR), warmup_iters=int(s.WARMUP_ITERS),
                warmup_method=str(s.WARMUP_METHOD))
    if name == "WarmupPolyLR":
        return WarmupPolyLR(optimizer, int(s.MAX_ITER), power=float(s.POLY_LR_POWER),
                            constant_ending=float(s.POLY_LR_CONSTANT_ENDING), **warm)
    if name in ("WarmupMultiStepLR", "WarmupCosineLR") and s.get("RESCALE_INTERVAL", False):
        raise ValueError(f"SOLVER.RESCALE_INTERVAL=True is not supported with {name}")
    if name == "WarmupMultiStepLR":
        return WarmupMultiStepLR(optimizer, int(s.MAX_ITER), list(s.STEPS), float(s.GAMMA), **warm)
    if name == "WarmupCosineLR":
        return WarmupCosineLR(optimizer, int(s.MAX_ITER), float(s.BASE_LR_END) / float(s.BASE_LR), **warm)
    raise ValueError(f"SOLVER.LR_SCHEDULER_NAME={name!r}: expected 'WarmupPolyLR', 'WarmupMultiStepLR' or "
                     "'WarmupCosineLR'")
