"""Predictor: images in, PanopticResults out, through the one static inference path.

Images are grouped by their padded network canvas (``PanopticFCN.network_size``): inside a group every image gets
exactly the result it would get alone, because GroupNorm and the official mask rescoring see the whole padded canvas.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch

from .checkpoint import checkpoint_meta, load_weights
from .metadata import CategoryMeta
from .model import PanopticFCN, build_model
from .result import PanopticResult, results_from_outputs


def default_meta(cfg) -> CategoryMeta:
    """COCO categories when the head sizes are COCO's (the official configs), else generic placeholder ids."""
    things = cfg.MODEL.POSITION_HEAD.THING.NUM_CLASSES
    stuff = cfg.MODEL.POSITION_HEAD.STUFF.NUM_CLASSES
    coco = CategoryMeta.coco()
    if (things, stuff) == (coco.num_things, coco.num_stuff):
        return coco
    return CategoryMeta.generic(things, stuff)


def check_meta(meta: CategoryMeta, cfg, source: str) -> CategoryMeta:
    things = cfg.MODEL.POSITION_HEAD.THING.NUM_CLASSES
    stuff = cfg.MODEL.POSITION_HEAD.STUFF.NUM_CLASSES
    if (meta.num_things, meta.num_stuff) != (things, stuff):
        raise ValueError(f"{source}: categories give {meta.num_things} thing / {meta.num_stuff} stuff-head classes but "
                         f"the config has THING.NUM_CLASSES={things}, STUFF.NUM_CLASSES={stuff}")
    return meta


def to_canvas(images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack HxWx3 uint8 RGB images top-left into a [B, 3, Hmax, Wmax] uint8 canvas plus their [B, 2] sizes."""
    sizes = [(im.shape[0], im.shape[1]) for im in images]
    canvas = torch.zeros(len(images), 3, max(s[0] for s in sizes), max(s[1] for s in sizes), dtype=torch.uint8)
    for i, im in enumerate(images):
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"image #{i}: expected HxWx3 uint8 RGB, got {im.dtype} {im.shape}")
        canvas[i, :, : im.shape[0], : im.shape[1]] = torch.from_numpy(np.array(im, copy=True)).permute(2, 0, 1)
    return canvas, torch.tensor(sizes, dtype=torch.int64)


class Predictor:
    """Run a PanopticFCN on images of any sizes.

    Args:
        model: a built (and loaded) PanopticFCN.
        meta: the dataset categories of the model's classes.
        device: "cpu" or "cuda[:i]".
        batch_size: images per forward within a canvas group.
    """

    def __init__(self, model: PanopticFCN, meta: CategoryMeta, device: str = "cpu", batch_size: int = 1):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))

    @classmethod
    def from_files(cls, cfg, weights: str | Path | None, device: str = "cpu", batch_size: int = 1) -> "Predictor":
        """Build the model from ``cfg`` and load ``weights`` strictly (None: keep the random initialisation)."""
        model = build_model(cfg)
        meta = default_meta(cfg)
        if weights:
            ckpt = load_weights(model, weights)
            stored = checkpoint_meta(ckpt)
            if stored is not None:
                meta = check_meta(stored, cfg, str(weights))
        return cls(model, meta, device, batch_size)

    @torch.no_grad()
    def predict(self, images: list[np.ndarray], file_names: list[str | None] | None = None,
                image_ids: list[Any] | None = None) -> list[PanopticResult]:
        """Predict HxWx3 uint8 RGB images; results come back in input order."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            groups[self.model.network_size(im.shape[0], im.shape[1])].append(i)
        results: list[PanopticResult | None] = [None] * len(images)
        for net_size, members in groups.items():
            for start in range(0, len(members), self.batch_size):
                idx = members[start: start + self.batch_size]
                canvas, sizes = to_canvas([images[i] for i in idx])
                outputs = self.model(canvas.to(self.device), sizes.to(self.device), net_size)
                batch = results_from_outputs(
                    outputs, [tuple(s) for s in sizes.tolist()], self.meta,
                    None if file_names is None else [file_names[i] for i in idx],
                    None if image_ids is None else [image_ids[i] for i in idx])
                for i, r in zip(idx, batch):
                    results[i] = r
        return results  # type: ignore[return-value]

    def predict_iter(self, items: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, PanopticResult]]:
        """Stream (key, image) pairs one at a time."""
        for key, image in items:
            yield key, self.predict([image])[0]
