"""PanopticFCN training: targets (official GenerateGT), losses (official loss.py) and the detectron2 solver."""

from .losses import LossParams, panoptic_losses, sigmoid_focal_loss, weighted_dice_loss
from .solver import (GradientClipper, WarmupCosineLR, WarmupMultiStepLR, WarmupPolyLR, build_lr_scheduler,
                     build_optimizer, optimizer_param_groups)
from .targets import LevelTargets, TargetParams, Targets, gaussian_radius, generate_targets

__all__ = [
    "LossParams", "panoptic_losses", "sigmoid_focal_loss", "weighted_dice_loss",
    "GradientClipper", "WarmupCosineLR", "WarmupMultiStepLR", "WarmupPolyLR", "build_lr_scheduler", "build_optimizer",
    "optimizer_param_groups",
    "LevelTargets", "TargetParams", "Targets", "gaussian_radius", "generate_targets",
]
