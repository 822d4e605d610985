"""Calibration and validation data: images from a folder or a dataset name, fed to the graph as its own input.

The end-to-end graph resizes and normalises inside itself, so calibration feeds it exactly what an application feeds
it — uint8 canvases made by ``pfcn.contract.make_canvas`` — and the activations are calibrated inside the graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from pfcn.contract import ArtifactInfo, make_canvas
from pfcn.image_io import ImageReadError, list_images, read_image


class CalibrationDataError(ValueError):
    """Calibration or validation images that cannot be used; the message names the source."""


@dataclass
class ImageSet:
    """Decoded RGB images with names (and COCO image ids and ground truth when they came from a dataset)."""

    source: str
    names: list[str]
    images: list[np.ndarray]
    image_ids: list[Any] | None = None
    gt: Any = None  # pfcn.evaluation.PanopticGroundTruth

    def sha256(self) -> str:
        """A digest of the decoded pixels (and their order): the data half of the calibration cache key."""
        h = hashlib.sha256()
        for name, im in zip(self.names, self.images):
            h.update(name.encode() + b"\0" + str(im.shape).encode())
            h.update(np.ascontiguousarray(im).tobytes())
        return h.hexdigest()


def _read_all(paths: Sequence[Path], source: str) -> list[np.ndarray]:
    images = []
    for p in paths:
        try:
            images.append(read_image(p))
        except ImageReadError as e:
            raise CalibrationDataError(f"{source}: {e}; remove or replace the file") from None
    return images


def load_images(images: str | Path | None = None, dataset: str | None = None, limit: int = 0,
                with_gt: bool = False) -> ImageSet:
    """Images from a folder (``images``) or a dataset name / pfcn-synth folder (``dataset``), first ``limit``.

    ``with_gt`` (datasets only) keeps the ground truth for PQ. Raises CalibrationDataError when nothing is usable.
    """
    if (images is None) == (dataset is None):
        raise CalibrationDataError("give either calibration images (a folder) or a dataset name, not both/neither")
    if dataset is not None:
        from pfcn.evaluation.panoptic_format import PanopticGroundTruth
        from pfcn.data.ground_truth import image_path_for, resolve_dataset

        root, gt_json, gt_png = resolve_dataset(dataset)
        gt = PanopticGroundTruth(gt_json, gt_png)
        ids = list(gt.image_ids)[: limit or None]
        if not ids:
            raise CalibrationDataError(f"dataset {dataset}: no images in {gt_json}")
        paths = [image_path_for(gt, root, i) for i in ids]
        return ImageSet(str(dataset), [p.name for p in paths], _read_all(paths, str(dataset)), ids,
                        gt if with_gt else None)
    folder = Path(images)
    if not folder.exists():
        raise CalibrationDataError(f"{folder}: no such calibration image folder")
    paths = list_images([folder])[: limit or None]
    if not paths:
        raise CalibrationDataError(f"{folder}: no calibration images (.jpg/.png/...) found; give a folder of images "
                                   "like the ones the model will see")
    return ImageSet(str(folder), [p.name for p in paths], _read_all(paths, str(folder)))


class CanvasReader:
    """onnxruntime.quantization's CalibrationDataReader over an ImageSet: one graph input per image, with progress."""

    def __init__(self, data: ImageSet, info: ArtifactInfo, desc: str = "calibrating"):
        self.data, self.info, self.desc = data, info, desc
        self._it: Iterator[dict[str, np.ndarray]] | None = None
        self._range = (0, len(data.images))
        self._bar: tqdm | None = None

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feed images start..end-1 next. ``quantize_static`` calls the calibrator once per range when the extra
        option ``CalibStridedMinMax`` is set: with ranges of one image, the histogram calibrators (entropy,
        percentile) never stack the activations of differently sized images, and hold one image's at a time."""
        self._range = (start_index, end_index)
        self._it = None

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        if self._bar is None:  # one bar over all ranges
            self._bar = tqdm(total=len(self), desc=self.desc, unit="img")
        start, end = self._range
        for name, im in zip(self.data.names[start:end], self.data.images[start:end]):
            canvas, sizes = make_canvas([im], self.info.fixed_hw, self.info.batch, [name])
            yield {"images": canvas, "sizes": sizes}
            self._bar.update(1)
        if end >= len(self):
            self._bar.close()
            self._bar = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._feeds()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None

    def __len__(self) -> int:
        return len(self.data.images)

    # CalibrationDataReader's iterator protocol (ORT >= 1.16 iterates readers)
    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item
