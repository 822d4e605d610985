"""mIoU of the stuff head's semantic map, with detectron2's SemSegEvaluator conventions.

Label space (the PanopticFCN "separated" setup, see `pfcn.metadata`): 0 = any thing, s in 1..S-1 = ``stuff_ids[s-1]``,
255 = ignore. The GT map is built from the panoptic GT the same way the training targets are: thing segments -> 0,
stuff segments -> their stuff index, crowd segments and VOID -> 255 (the pfcn data contract; detectron2's
``prepare_panoptic_fpn`` keeps crowd things as 0 instead).

Metrics come from one (S+1) x (S+1) confusion matrix, rows = prediction, columns = GT, the last row/column holding
ignored pixels, exactly as ``SemSegEvaluator.process`` fills it. The reduction follows detectron2 as PanopticFCN used
it (detectron2 <= v0.6, before commit f3c1bc1 of July 2022): mIoU sums the IoU of the classes present in the GT and
divides by the number of classes with GT + prediction > 0, so a class that is predicted but absent from the GT counts
as IoU 0. ``count_pred_only_classes=False`` gives today's detectron2 reduction (only classes present in the GT).
fwIoU weights IoU by GT frequency, mACC averages per-class accuracy over GT-present classes, pACC is pixel accuracy.
All values are percentages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from pfcn.evaluation.panoptic_format import PanopticFormatError, PanopticImage

__all__ = ["IGNORE_LABEL", "semantic_lut", "semantic_from_panoptic", "ConfusionMatrix"]

IGNORE_LABEL = 255


def semantic_lut(image: PanopticImage, stuff_ids: Sequence[int], thing_ids: Sequence[int]) -> np.ndarray:
    """Stuff-head label of each segment of ``image`` ([K + 1] uint8; the last entry, for VOID, is 255)."""
    stuff_label = {int(c): i + 1 for i, c in enumerate(stuff_ids)}
    things = {int(c) for c in thing_ids}
    table = image.table
    lut = np.full(len(table) + 1, IGNORE_LABEL, dtype=np.uint8)
    for k in range(len(table)):
        cid = int(table.category_ids[k])
        if table.iscrowd[k]:
            continue
        if cid in things:
            lut[k] = 0
        elif cid in stuff_label:
            lut[k] = stuff_label[cid]
        else:
            raise PanopticFormatError(f"{image.name}: category_id {cid} is neither a thing nor a stuff category")
    return lut


def semantic_from_panoptic(image: PanopticImage, stuff_ids: Sequence[int], thing_ids: Sequence[int]) -> np.ndarray:
    """The stuff-head GT map [H, W] uint8 of one panoptic image: things 0, stuff 1..S-1, crowd and VOID 255.

    Pixels whose id is not in the segment list are ignored (255) too; the PQ step reports such ids as errors.
    """
    return semantic_lut(image, stuff_ids, thing_ids)[image.table.positions(image.ids)]  # position -1: the last entry


@dataclass
class ConfusionMatrix:
    """A (S+1) x (S+1) pixel confusion matrix over S classes (rows: prediction, columns: GT; index S = ignored).

    Args:
        num_classes: S, the stuff head's channel count (stuff classes + 1 for "things").
        names: class names for the per-class table (default: the class index).
    """

    num_classes: int
    names: list[str] = field(default_factory=list)
    matrix: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not 1 <= self.num_classes < IGNORE_LABEL:
            raise ValueError(f"num_classes must be in 1..{IGNORE_LABEL - 1} (labels are 8-bit, {IGNORE_LABEL} = "
                             f"ignore), got {self.num_classes}")
        if self.matrix is None:
            self.matrix = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)
        if not self.names:
            self.names = [str(i) for i in range(self.num_classes)]

    def add(self, gt: np.ndarray, pred: np.ndarray, name: str = "semantic prediction") -> None:
        """Count one image. ``gt`` uses 255 for ignore; ``pred`` must hold labels in 0..S-1."""
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        if gt.shape != pred.shape:
            raise PanopticFormatError(f"{name}: shape {pred.shape} differs from the ground truth's {gt.shape}")
        n = self.num_classes
        pred = pred.reshape(-1).astype(np.int64)
        bad = (pred < 0) | (pred >= n)
        if bad.any():
            raise PanopticFormatError(f"{name}: semantic label {int(pred[bad][0])} is outside 0..{n - 1}")
        gt = gt.reshape(-1).astype(np.int64)
        gt_bad = (gt < 0) | ((gt >= n) & (gt != IGNORE_LABEL))
        if gt_bad.any():
            raise PanopticFormatError(f"ground truth for {name}: label {int(gt[gt_bad][0])} is outside 0..{n - 1} "
                                      f"and is not {IGNORE_LABEL}")
        gt = np.where(gt == IGNORE_LABEL, n, gt)
        self.matrix += np.bincount((n + 1) * pred + gt, minlength=self.matrix.size).reshape(self.matrix.shape)

    def add_panoptic(self, gt: PanopticImage, pred: np.ndarray, stuff_ids: Sequence[int], thing_ids: Sequence[int],
                     name: str = "semantic prediction") -> None:
        """Count one image against a panoptic GT, without building the GT label map pixel by pixel.

        Same counts as ``add(semantic_from_panoptic(gt, ...), pred)``: the distinct (GT segment id, predicted label)
        pairs are counted once, then each GT id is given its label.
        """
        pred = np.asarray(pred)
        if gt.shape != pred.shape:
            raise PanopticFormatError(f"{name}: shape {pred.shape} differs from the ground truth's {gt.shape}")
        n = self.num_classes
        if pred.size and (pred.min() < 0 or pred.max() >= n):
            bad = pred[(pred < 0) | (pred >= n)].reshape(-1)[0]
            raise PanopticFormatError(f"{name}: semantic label {int(bad)} is outside 0..{n - 1}")
        key = gt.ids.astype(np.uint64).reshape(-1)
        key <<= np.uint64(8)
        key |= pred.reshape(-1).astype(np.uint64)  # labels < 255 fit in the low byte
        key.sort()
        starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))) if key.size else np.zeros(0, np.int64)
        counts = np.diff(np.append(starts, key.size))
        pairs = key[starts]
        gt_label = semantic_lut(gt, stuff_ids, thing_ids)[gt.table.positions(pairs >> np.uint64(8))].astype(np.int64)
        gt_label[gt_label == IGNORE_LABEL] = n
        pred_label = (pairs & np.uint64(255)).astype(np.int64)
        np.add.at(self.matrix, (pred_label, gt_label), counts)

    def merge(self, other: "ConfusionMatrix") -> None:
        if other.matrix.shape != self.matrix.shape:
            raise ValueError(f"cannot merge confusion matrices of shapes {self.matrix.shape} and {other.matrix.shape}")
        self.matrix += other.matrix

    def metrics(self, count_pred_only_classes: bool = True) -> dict[str, Any]:
        """mIoU, fwIoU, mACC, pACC (percent) and a per-class list of IoU/ACC (NaN for classes absent from GT)."""
        conf = self.matrix[:-1, :-1]
        tp = conf.diagonal().astype(float)
        pos_gt = conf.sum(axis=0).astype(float)
        pos_pred = conf.sum(axis=1).astype(float)
        total = pos_gt.sum()
        acc = np.full(self.num_classes, np.nan)
        iou = np.full(self.num_classes, np.nan)
        acc_valid = pos_gt > 0
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        union = pos_gt + pos_pred - tp
        iou[acc_valid] = tp[acc_valid] / union[acc_valid]
        count = int(((pos_gt + pos_pred) > 0).sum()) if count_pred_only_classes else int(acc_valid.sum())
        weights = pos_gt / total if total > 0 else np.zeros_like(pos_gt)
        return {
            "mIoU": 100.0 * float(iou[acc_valid].sum()) / count if count else math.nan,
            "fwIoU": 100.0 * float((iou[acc_valid] * weights[acc_valid]).sum()) if total > 0 else math.nan,
            "mACC": 100.0 * float(acc[acc_valid].mean()) if acc_valid.any() else math.nan,
            "pACC": 100.0 * float(tp.sum() / total) if total > 0 else math.nan,
            "per_class": [{"label": i, "name": name, "IoU": 100.0 * float(iou[i]), "ACC": 100.0 * float(acc[i])}
                          for i, name in enumerate(self.names)],
        }
