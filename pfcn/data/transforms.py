"""Geometric augmentations applied alike to a photograph and its panoptic id map.

The official PanopticFCN trains with detectron2's default augmentation list (``build_augmentation``): a
ResizeShortestEdge (size drawn per image from ``INPUT.MIN_SIZE_TRAIN`` by ``MIN_SIZE_TRAIN_SAMPLING``, longest edge
capped at ``MAX_SIZE_TRAIN``) followed by a random flip (probability 0.5, ``INPUT.RANDOM_FLIP``); at test time only
the resize to ``MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``. This module reproduces those rules with our own code:

* The output size follows detectron2's ``ResizeShortestEdge.get_output_shape`` to the pixel (Python floats,
  ``int(x + 0.5)`` rounding), see `resized_shape`.
* The photograph is resized with PIL's bilinear filter, as detectron2's ``ResizeTransform`` does for uint8 images;
  the id map with PIL's nearest filter (detectron2 resizes segmentation maps with nearest), so ids are never blended.
* Randomness comes only from the ``numpy.random.Generator`` passed in, so a sample is a pure function of
  (index, seed) and training can be resumed exactly whatever the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "RandomFlip",
    "ResizeShortestEdge",
    "Transform",
    "apply_transforms",
    "build_transforms",
    "resized_shape",
]

SAMPLING_STYLES = ("choice", "range")
FLIP_MODES = ("horizontal", "vertical", "none")


def resized_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """Output (height, width) of a shortest-edge resize, exactly as detectron2 computes it.

    The shorter side becomes ``short``; if the longer side would then exceed ``max_size``, both sides are scaled
    down so that it equals ``max_size``. Each side is rounded with ``int(x + 0.5)`` in float64, the rounding of
    detectron2's ``ResizeShortestEdge.get_output_shape`` (a square image counts as "not h < w").

    Args:
        h, w: input size, px.
        short: target length of the shorter side, px (> 0).
        max_size: cap on the longer side, px.
    Returns:
        (newh, neww) as Python ints.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"resized_shape: image size must be positive, got h={h}, w={w}")
    if short <= 0:
        raise ValueError(f"resized_shape: short edge length must be positive, got {short}")
    size = float(short)
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    longest = max(newh, neww)
    if longest > max_size:
        cap = max_size * 1.0 / longest
        newh, neww = newh * cap, neww * cap
    return int(newh + 0.5), int(neww + 0.5)


@dataclass(frozen=True)
class ResizeShortestEdge:
    """Resize so that the shorter side gets a length drawn from ``short_edge_lengths``.

    Attributes:
        short_edge_lengths: candidate lengths ("choice") or the inclusive [min, max] interval ("range"), px.
            A drawn length of 0 leaves the image unchanged (detectron2's ``MIN_SIZE_TEST: 0``).
        max_size: cap on the longer side after resizing, px.
        sampling: "choice" or "range" (``INPUT.MIN_SIZE_TRAIN_SAMPLING``).
    """

    short_edge_lengths: tuple[int, ...]
    max_size: int
    sampling: str = "choice"

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING_STYLES:
            raise ValueError(f"ResizeShortestEdge: sampling must be one of {SAMPLING_STYLES}, got {self.sampling!r}")
        if not self.short_edge_lengths:
            raise ValueError("ResizeShortestEdge: short_edge_lengths is empty")
        if any(int(s) < 0 for s in self.short_edge_lengths):
            raise ValueError(f"ResizeShortestEdge: negative short edge length in {self.short_edge_lengths}")
        if self.sampling == "range" and len(self.short_edge_lengths) != 2:
            raise ValueError("ResizeShortestEdge: 'range' sampling takes exactly [min, max], got "
                             f"{list(self.short_edge_lengths)} (INPUT.MIN_SIZE_TRAIN)")
        if self.sampling == "range" and self.short_edge_lengths[0] > self.short_edge_lengths[1]:
            raise ValueError(f"ResizeShortestEdge: range min > max in {list(self.short_edge_lengths)}")

    def draw_short(self, rng: np.random.Generator) -> int:
        """The shorter-side length for one image (uses ``rng`` only when there is a choice to make)."""
        lengths = self.short_edge_lengths
        if self.sampling == "range":
            if lengths[0] == lengths[1]:
                return int(lengths[0])
            return int(rng.integers(lengths[0], lengths[1] + 1))
        if len(lengths) == 1:
            return int(lengths[0])
        return int(lengths[int(rng.integers(len(lengths)))])


@dataclass(frozen=True)
class RandomFlip:
    """Flip with probability ``prob`` along one axis ("horizontal" mirrors left-right)."""

    prob: float = 0.5
    direction: str = "horizontal"

    def __post_init__(self) -> None:
        if self.direction not in ("horizontal", "vertical"):
            raise ValueError(f"RandomFlip: direction must be 'horizontal' or 'vertical', got {self.direction!r}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"RandomFlip: prob must be in [0, 1], got {self.prob}")


Transform = ResizeShortestEdge | RandomFlip


def _resize_image(image: np.ndarray, newh: int, neww: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((neww, newh), Image.Resampling.BILINEAR))


def _resize_ids(ids: np.ndarray, newh: int, neww: int) -> np.ndarray:
    """Nearest-neighbour resize of an int32 id map (PIL mode "I" keeps 32-bit ids intact)."""
    out = Image.fromarray(ids.astype(np.int32, copy=False), mode="I").resize((neww, newh), Image.Resampling.NEAREST)
    return np.asarray(out, dtype=np.int32)


def apply_transforms(image: np.ndarray, ids: np.ndarray | None, transforms: Sequence[Transform],
                     rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply ``transforms`` in order to a photograph and (optionally) its panoptic id map.

    Args:
        image: [H, W, 3] uint8.
        ids: [H, W] int32 segment ids (0 = void), or None when no ground truth is carried.
        transforms: the augmentation list, e.g. from `build_transforms`.
        rng: source of all random draws; may be None only if no transform is random.
    Returns:
        (image [H', W', 3] uint8, ids [H', W'] int32 or None), both contiguous.
    """
    if ids is not None and ids.shape != image.shape[:2]:
        raise ValueError(f"apply_transforms: id map {ids.shape} and image {image.shape[:2]} differ in size")
    for t in transforms:
        if isinstance(t, ResizeShortestEdge):
            need_rng = len(t.short_edge_lengths) > 1 and not (
                t.sampling == "range" and t.short_edge_lengths[0] == t.short_edge_lengths[1])
            if need_rng and rng is None:
                raise ValueError("apply_transforms: a random ResizeShortestEdge needs an rng")
            short = t.draw_short(rng) if need_rng else int(t.short_edge_lengths[0])
            if short == 0:
                continue
            h, w = image.shape[:2]
            newh, neww = resized_shape(h, w, short, t.max_size)
            if (newh, neww) != (h, w):
                image = _resize_image(image, newh, neww)
                if ids is not None:
                    ids = _resize_ids(ids, newh, neww)
        elif isinstance(t, RandomFlip):
            if t.prob == 0.0:
                continue
            if rng is None and t.prob < 1.0:
                raise ValueError("apply_transforms: RandomFlip needs an rng")
            if t.prob == 1.0 or rng.random() < t.prob:  # type: ignore[union-attr]
                axis = 1 if t.direction == "horizontal" else 0
                image = np.flip(image, axis=axis)
                if ids is not None:
                    ids = np.flip(ids, axis=axis)
        else:
            raise TypeError(f"apply_transforms: unsupported transform {t!r}")
    image = np.ascontiguousarray(image)
    return image, (None if ids is None else np.ascontiguousarray(ids))


def build_transforms(cfg, is_train: bool) -> list[Transform]:
    """detectron2's default augmentation list for training or testing, read from ``cfg.INPUT``."""
    inp = cfg.INPUT
    if is_train:
        lengths = inp.MIN_SIZE_TRAIN
        lengths = (int(lengths),) if isinstance(lengths, int) else tuple(int(x) for x in lengths)
        sampling = str(inp.MIN_SIZE_TRAIN_SAMPLING)
        if sampling == "range" and len(lengths) == 1:
            lengths = lengths * 2  # detectron2 turns a single int into the degenerate range (n, n)
        out: list[Transform] = [ResizeShortestEdge(lengths, int(inp.MAX_SIZE_TRAIN), sampling)]
        flip = str(inp.RANDOM_FLIP)
        if flip not in FLIP_MODES:
            raise ValueError(f"INPUT.RANDOM_FLIP must be one of {FLIP_MODES}, got {flip!r}")
        if flip != "none":
            out.append(RandomFlip(0.5, flip))
        if bool(inp.CROP.ENABLED):
            raise ValueError("INPUT.CROP.ENABLED is True, but pfcn's data pipeline has no random crop "
                             "(the official PanopticFCN configs do not use one)")
        return out
    return [ResizeShortestEdge((int(inp.MIN_SIZE_TEST),), int(inp.MAX_SIZE_TEST), "choice")]
