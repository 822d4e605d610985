"""Mask AP of the thing instances with pycocotools' COCOeval (iouType "segm"), the metric of the paper's AP column.

The ground truth is derived from the panoptic GT, so a single panoptic JSON + PNG folder scores everything: every thing
segment becomes a COCO instance annotation (RLE mask, area = pixel count, ``iscrowd`` kept, so crowd regions are
ignore regions as COCO defines them). Predictions are RLE masks with a score and a dataset category id.

The accumulator stores RLEs only (a few hundred bytes per mask), so a whole validation set fits in memory and shards
from several processes merge by concatenation. pycocotools' prints are captured into ``log`` instead of stdout.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pfcn.evaluation.panoptic_format import PanopticFormatError, PanopticImage

__all__ = ["AP_METRICS", "encode_masks", "thing_instances_from_panoptic", "InstanceAPAccumulator",
           "instance_results_from_json"]

AP_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """RLE-encode bool masks [N, H, W] into COCO RLE dicts whose ``counts`` is a str (JSON-ready)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"instance masks must be [N, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    if masks.shape[1] == 0 or masks.shape[2] == 0:
        raise ValueError(f"{masks.shape[0]} instances without masks (shape {masks.shape}): the artifact returns no "
                         "instance masks (exported with --outputs panoptic, or a fast path with panoptic outputs); "
                         "export with --outputs all for instance AP or instance predictions")
    masks = masks.view(np.uint8) if masks.dtype == bool else (masks != 0).view(np.uint8)
    return _encode_fortran(np.asfortranarray(masks.transpose(1, 2, 0)))


def _encode_fortran(masks_hwn: np.ndarray) -> list[dict[str, Any]]:
    """pycocotools' encode of a Fortran-ordered [H, W, N] uint8 array, with str counts."""
    rles = mask_util.encode(masks_hwn)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def thing_instances_from_panoptic(image: PanopticImage, thing_ids: set[int] | frozenset[int]) -> list[dict[str, Any]]:
    """COCO instance annotations (without ids) for the thing segments of one panoptic GT image.

    Returns:
        [{category_id, segmentation (RLE), area, bbox [x, y, w, h], iscrowd}] in segment-list order.
    """
    table = image.table
    keep = [k for k in range(len(table)) if int(table.category_ids[k]) in thing_ids]
    if not keep:
        return []
    # COCO RLE runs down columns: compare on the transposed id map once, so that the [N, W, H] C-ordered masks are
    # already the Fortran [H, W, N] array pycocotools wants (no per-mask transpose).
    ids_t = np.ascontiguousarray(image.ids.T)  # [W, H]
    masks = ids_t[None, :, :] == table.ids[keep].astype(np.uint32)[:, None, None]  # [N, W, H]
    rles = _encode_fortran(masks.view(np.uint8).transpose(2, 1, 0))
    areas = mask_util.area(rles)
    boxes = mask_util.toBbox(rles)
    return [{"category_id": int(table.category_ids[k]), "segmentation": rle, "area": float(a),
             "bbox": [float(v) for v in box], "iscrowd": int(table.iscrowd[k])}
            for k, rle, a, box in zip(keep, rles, areas, boxes)]


@dataclass
class InstanceAPAccumulator:
    """Collects GT instances and predicted instances per image, then runs COCOeval segm once.

    Args:
        categories: the thing categories ({id, name} dicts); predictions with another category are an error.
    """

    categories: list[dict[str, Any]]
    images: dict[Any, tuple[int, int]] = field(default_factory=dict)  # image key -> (height, width)
    gts: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)  # (image key, annotation)
    dts: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)

    def add_ground_truth(self, image_key: Any, height: int, width: int, annotations: Sequence[dict[str, Any]]) -> None:
        if image_key in self.images:
            raise ValueError(f"image {image_key!r} was added to the AP evaluation twice")
        self.images[image_key] = (int(height), int(width))
        self.gts.extend((image_key, a) for a in annotations)

    def add_predictions(self, image_key: Any, rles: Sequence[dict[str, Any]], scores: Sequence[float],
                        category_ids: Sequence[int]) -> None:
        """Add one image's predicted instances (RLE masks at the GT image size, scores, dataset category ids)."""
        if not (len(rles) == len(scores) == len(category_ids)):
            raise ValueError(f"image {image_key!r}: {len(rles)} masks, {len(scores)} scores and "
                             f"{len(category_ids)} category ids; they must be equally many")
        known = {int(c["id"]) for c in self.categories}
        size = self.images.get(image_key)
        for rle, score, cid in zip(rles, scores, category_ids):
            if int(cid) not in known:
                raise PanopticFormatError(f"image {image_key!r}: predicted instance has category_id {int(cid)}, "
                                          f"which is not a thing category (known: {sorted(known)})")
            if size is not None and tuple(rle["size"]) != size:
                raise PanopticFormatError(f"image {image_key!r}: predicted instance mask is {tuple(rle['size'])} "
                                          f"but the ground truth is {size} (H, W)")
            self.dts.append((image_key, {"category_id": int(cid), "segmentation": rle, "score": float(score)}))

    def merge(self, other: "InstanceAPAccumulator") -> None:
        """Add the images of another shard (disjoint image sets)."""
        for key, size in other.images.items():
            if key in self.images:
                raise ValueError(f"image {key!r} was evaluated by two shards")
            self.images[key] = size
        self.gts.extend(other.gts)
        self.dts.extend(other.dts)

    def evaluate(self) -> dict[str, Any]:
        """Run COCOeval segm.

        Returns:
            {"AP", "AP50", "AP75", "APs", "APm", "APl": percent (NaN where COCOeval has no GT: -1),
             "per_class": {category_id: AP percent or NaN}, "num_predictions": int, "log": pycocotools' printout}.
        """
        # Number images in sorted id order, so that shards merged in any order rank tied scores identically.
        key_to_int = {key: i + 1 for i, key in enumerate(sorted(self.images, key=_sort_key))}
        images = [{"id": key_to_int[k], "height": h, "width": w} for k, (h, w) in self.images.items()]
        cats = [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in self.categories]
        gt_anns = [dict(a, id=i + 1, image_id=key_to_int[k]) for i, (k, a) in enumerate(self.gts)]
        dt_anns = []
        for i, (k, a) in enumerate(self.dts):
            if k not in key_to_int:
                raise ValueError(f"predictions for image {k!r}, which has no ground truth in the AP evaluation")
            rle = a["segmentation"]
            dt_anns.append(dict(a, id=i + 1, image_id=key_to_int[k], iscrowd=0, area=float(mask_util.area(rle)),
                                bbox=[float(v) for v in mask_util.toBbox(rle)]))
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            coco_gt = _coco_from(images, cats, gt_anns)
            coco_dt = _coco_from(images, cats, dt_anns)
            ev = COCOeval(coco_gt, coco_dt, iouType="segm")
            ev.params.imgIds = sorted(key_to_int.values())
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        out: dict[str, Any] = {name: _percent(ev.stats[i]) for i, name in enumerate(AP_METRICS)}
        # Per-category AP as detectron2's COCOEvaluator derives it: precision at all IoUs, area "all", 100 dets.
        precision = ev.eval["precision"]  # [T, R, K, A, M]
        per_class = {}
        for k, cid in enumerate(ev.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_class[int(cid)] = _percent(float(np.mean(p))) if p.size else math.nan
        out["per_class"] = per_class
        out["num_predictions"] = len(dt_anns)
        out["log"] = log.getvalue()
        return out


def _sort_key(key: Any) -> tuple[int, Any]:
    """Orders int image ids numerically and any other ids by their text."""
    return (0, key) if isinstance(key, (int, np.integer)) else (1, str(key))


def _coco_from(images: list[dict[str, Any]], cats: list[dict[str, Any]], anns: list[dict[str, Any]]) -> COCO:
    """A pycocotools COCO object built in memory (``loadRes`` refuses an empty prediction list)."""
    coco = COCO()
    coco.dataset = {"images": images, "categories": cats, "annotations": anns}
    coco.createIndex()
    return coco


def _percent(value: float) -> float:
    return float(value) * 100.0 if value >= 0 else math.nan


def instance_results_from_json(entries: Sequence[Mapping[str, Any]], source: str) -> dict[Any, list[Mapping[str, Any]]]:
    """Group COCO results-format entries ({image_id, category_id, segmentation RLE, score}) by image_id."""
    out: dict[Any, list[Mapping[str, Any]]] = {}
    for i, e in enumerate(entries):
        for key in ("image_id", "category_id", "segmentation", "score"):
            if key not in e:
                raise PanopticFormatError(f"{source}: instance #{i} has no {key!r} key")
        seg = e["segmentation"]
        if not isinstance(seg, Mapping) or "counts" not in seg or "size" not in seg:
            raise PanopticFormatError(f"{source}: instance #{i} segmentation must be an RLE dict with size/counts")
        out.setdefault(e["image_id"], []).append(e)
    return out
