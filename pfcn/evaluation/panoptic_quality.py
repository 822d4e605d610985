"""Panoptic quality (PQ = SQ x RQ), computed exactly as panopticapi's ``pq_compute``, but vectorised.

The rules reproduced from ``panopticapi/evaluation.py`` (cocodataset/panopticapi):
  * a ground-truth (GT) and a predicted segment of the same category match when IoU > 0.5; the IoU's union leaves
    out the part of the predicted segment that lies on GT VOID (id 0). Crowd GT segments never match.
  * GT areas come from the GT JSON (panopticapi trusts ``area``); predicted areas are counted in the PNG.
  * unmatched non-crowd GT segments are false negatives (FN).
  * an unmatched predicted segment is a false positive (FP) unless more than half of it lies on VOID plus the crowd
    region of its category; as in panopticapi that region is the *last* crowd segment of the category in the JSON.
  * per category: PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP, RQ = TP / (TP + FP/2 + FN/2); All/Things/Stuff
    average over the categories with TP + FP + FN > 0 (panopticapi divides by zero when there are none; we report
    0.0 with n = 0).

Per image, one ``np.unique`` over the combined (GT id, predicted id) pixel keys gives the whole intersection matrix
(panopticapi needs a second pass for the predicted areas and a Python loop over the pairs); matching, FN and FP are
then array operations on a [K_gt, K_pred] matrix.
Results are fractions in [0, 1], like panopticapi's; the report scales them to percent.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from pfcn.evaluation.panoptic_format import (MAX_SEGMENT_ID, PanopticFormatError, PanopticGroundTruth, PanopticImage,
                                             check_present_ids, load_json, normalize_categories, panoptic_image,
                                             read_panoptic_png)

__all__ = ["PQStat", "pq_image_stat", "pq_compute_arrays", "pq_compute_files"]


@dataclass
class PQStat:
    """Per-category sums of IoU, TP, FP and FN (the state panopticapi's PQStat holds), mergeable across shards.

    Attributes:
        category_ids: dataset category ids, in the categories' order.
        isthing: [C] bool.
        iou, tp, fp, fn: [C] per-category sums.
    """

    category_ids: np.ndarray
    isthing: np.ndarray
    iou: np.ndarray = field(default=None)  # type: ignore[assignment]
    tp: np.ndarray = field(default=None)  # type: ignore[assignment]
    fp: np.ndarray = field(default=None)  # type: ignore[assignment]
    fn: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        c = len(self.category_ids)
        self.iou = np.zeros(c, np.float64) if self.iou is None else self.iou
        for name in ("tp", "fp", "fn"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(c, np.int64))

    @classmethod
    def for_categories(cls, categories: Any) -> "PQStat":
        cats = normalize_categories(categories)
        ids = np.array(list(cats), dtype=np.int64)
        return cls(ids, np.array([cats[c]["isthing"] == 1 for c in cats], dtype=bool))

    def column_of(self) -> dict[int, int]:
        """Dataset category id -> position in the arrays."""
        return {int(c): i for i, c in enumerate(self.category_ids)}

    def __iadd__(self, other: "PQStat") -> "PQStat":
        if not np.array_equal(self.category_ids, other.category_ids):
            raise ValueError("cannot add PQ statistics over different category lists")
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self

    def per_class(self) -> dict[int, dict[str, float]]:
        """Per-category pq/sq/rq (0.0 for categories without any segment, as panopticapi reports them)."""
        out: dict[int, dict[str, float]] = {}
        for i, cid in enumerate(self.category_ids):
            tp, fp, fn, iou = int(self.tp[i]), int(self.fp[i]), int(self.fn[i]), float(self.iou[i])
            if tp + fp + fn == 0:
                out[int(cid)] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            denom = tp + 0.5 * fp + 0.5 * fn
            out[int(cid)] = {"pq": iou / denom, "sq": iou / tp if tp else 0.0, "rq": tp / denom}
        return out

    def average(self, isthing: bool | None, per_class: dict[int, dict[str, float]] | None = None) -> dict[str, float]:
        """pq/sq/rq averaged over the categories (of one kind, or all) with TP + FP + FN > 0, and their count n."""
        per_class = self.per_class() if per_class is None else per_class
        pq = sq = rq = 0.0
        n = 0
        for i, cid in enumerate(self.category_ids):
            if isthing is not None and bool(self.isthing[i]) != isthing:
                continue
            if self.tp[i] + self.fp[i] + self.fn[i] == 0:
                continue
            n += 1
            pq += per_class[int(cid)]["pq"]
            sq += per_class[int(cid)]["sq"]
            rq += per_class[int(cid)]["rq"]
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}

    def results(self) -> dict[str, Any]:
        """The dict panopticapi's ``pq_compute`` returns: All/Things/Stuff {pq, sq, rq, n} and per_class."""
        per_class = self.per_class()
        return {"All": self.average(None, per_class), "Things": self.average(True, per_class),
                "Stuff": self.average(False, per_class), "per_class": per_class}


def _unique_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(values, return_counts=True) for a 1-D array we own: sorts in place, skipping np.unique's copy."""
    values.sort()
    if values.size == 0:
        return values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    counts = np.diff(np.append(starts, values.size))
    return values[starts], counts


def pq_image_stat(gt: PanopticImage, pred: PanopticImage, stat: PQStat, column: Mapping[int, int] | None = None) -> None:
    """Add one image's TP/FP/FN/IoU to ``stat``; also checks each PNG against its segment list.

    Args:
        gt, pred: the GT and predicted images (same [H, W]).
        stat: accumulated in place.
        column: dataset category id -> stat column (``stat.column_of()``), passed in to avoid rebuilding it.
    """
    if gt.shape != pred.shape:
        raise PanopticFormatError(f"{pred.name}: size {pred.shape} differs from the ground truth's {gt.shape} (H, W)")
    column = stat.column_of() if column is None else column
    kg, kp = len(gt.table), len(pred.table)
    gt_col = np.array([column[int(c)] for c in gt.table.category_ids], dtype=np.int64)
    pred_col = np.array([column[int(c)] for c in pred.table.category_ids], dtype=np.int64)
    ncat = len(stat.category_ids)

    # One pass over the pixels: the distinct (GT id, predicted id) pairs and their pixel counts, as panopticapi's
    # np.unique over gt * 2^24 + pred; everything after works on this short list.
    key = gt.ids.astype(np.uint64).reshape(-1)
    key <<= np.uint64(24)
    key |= pred.ids.reshape(-1)
    pairs, counts = _unique_counts(key)
    gt_u = (pairs >> np.uint64(24)).astype(np.int64)
    pred_u = (pairs & np.uint64(MAX_SEGMENT_ID)).astype(np.int64)
    gt_present, gt_inv = np.unique(gt_u, return_inverse=True)
    pred_present, pred_inv = np.unique(pred_u, return_inverse=True)
    g_of_pair = check_present_ids(gt, gt_present)[gt_inv]  # -1 = VOID
    p_of_pair = check_present_ids(pred, pred_present)[pred_inv]
    # inter[g + 1, p + 1]: pixels with GT segment g and predicted segment p (row/column 0 = VOID).
    inter = np.zeros((kg + 1, kp + 1), dtype=np.int64)
    inter[g_of_pair + 1, p_of_pair + 1] = counts
    pred_area = inter.sum(axis=0)[1:]  # [kp]
    pred_on_void = inter[0, 1:]  # [kp]
    gt_area = np.where(gt.table.json_area >= 0, gt.table.json_area, inter.sum(axis=1)[1:])  # panopticapi: JSON area
    both = inter[1:, 1:]  # [kg, kp]

    candidate = (both > 0) & (gt_col[:, None] == pred_col[None, :]) & ~gt.table.iscrowd[:, None]
    g_idx, p_idx = np.nonzero(candidate)
    inter_c = both[g_idx, p_idx]
    union = pred_area[p_idx] + gt_area[g_idx] - inter_c - pred_on_void[p_idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter_c / union
    ok = iou > 0.5
    g_m, p_m, iou_m = g_idx[ok], p_idx[ok], iou[ok]
    stat.tp += np.bincount(gt_col[g_m], minlength=ncat)
    stat.iou += np.bincount(gt_col[g_m], weights=iou_m, minlength=ncat)

    gt_matched = np.zeros(kg, dtype=bool)
    gt_matched[g_m] = True
    pred_matched = np.zeros(kp, dtype=bool)
    pred_matched[p_m] = True
    stat.fn += np.bincount(gt_col[~gt_matched & ~gt.table.iscrowd], minlength=ncat)

    # The crowd region of a category is its last crowd segment in the GT list (panopticapi's dict overwrite).
    crowd_of_col = np.full(ncat, -1, dtype=np.int64)
    for g in np.nonzero(gt.table.iscrowd)[0]:
        crowd_of_col[gt_col[g]] = g
    unmatched = np.nonzero(~pred_matched)[0]
    ignored_px = pred_on_void[unmatched].copy()
    crowd_g = crowd_of_col[pred_col[unmatched]]
    has_crowd = crowd_g >= 0
    ignored_px[has_crowd] += both[crowd_g[has_crowd], unmatched[has_crowd]]
    is_fp = ignored_px / pred_area[unmatched] <= 0.5
    stat.fp += np.bincount(pred_col[unmatched[is_fp]], minlength=ncat)


def pq_compute_arrays(pairs: Iterable[tuple[np.ndarray, Sequence[Mapping[str, Any]], np.ndarray,
                                            Sequence[Mapping[str, Any]]]],
                      categories: Any) -> PQStat:
    """PQ statistics over in-memory images.

    Args:
        pairs: (gt_ids [H, W] int, gt_segments, pred_ids [H, W] int, pred_segments) per image; segments are
            ``segments_info`` dicts (``id``, ``category_id``, GT also ``iscrowd`` and optionally ``area``).
        categories: COCO category list / id->dict mapping / `CategoryMeta`.
    Returns:
        The accumulated `PQStat`; ``.results()`` gives panopticapi's result dict.
    """
    cats = normalize_categories(categories)
    stat = PQStat.for_categories(cats)
    column = stat.column_of()
    for i, (gt_ids, gt_segments, pred_ids, pred_segments) in enumerate(pairs):
        gt = panoptic_image(gt_ids, gt_segments, cats, name=f"ground truth #{i}")
        pred = panoptic_image(pred_ids, pred_segments, cats, name=f"prediction #{i}")
        pq_image_stat(gt, pred, stat, column)
    return stat


def _match_annotations(gt_json: Path, gt_anns: Mapping[Any, Any], pred_json: Path,
                       pred_anns: Sequence[Mapping[str, Any]]) -> list[tuple[Any, Mapping[str, Any]]]:
    """Pair each GT image with its prediction; a missing or an extra prediction is an error, not a skip."""
    by_id: dict[Any, Mapping[str, Any]] = {}
    for i, ann in enumerate(pred_anns):
        for key in ("image_id", "file_name", "segments_info"):
            if key not in ann:
                raise PanopticFormatError(f"{pred_json}: annotation #{i} has no {key!r} key")
        if ann["image_id"] in by_id:
            raise PanopticFormatError(f"{pred_json}: image_id {ann['image_id']!r} is predicted twice")
        by_id[ann["image_id"]] = ann
    missing = [i for i in gt_anns if i not in by_id]
    if missing:
        raise PanopticFormatError(f"{pred_json}: no prediction for image_id(s) {missing[:10]} of {gt_json}"
                                  + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""))
    extra = [i for i in by_id if i not in gt_anns]
    if extra:
        raise PanopticFormatError(f"{pred_json}: prediction(s) for image_id(s) {extra[:10]} that {gt_json} lacks")
    return [(image_id, by_id[image_id]) for image_id in gt_anns]


def _pq_chunk(gt: PanopticGroundTruth, pred_folder: Path, items: list[tuple[Any, Mapping[str, Any]]]) -> PQStat:
    """Score a list of (image_id, prediction annotation); top level so that worker processes can run it."""
    stat = PQStat.for_categories(gt.categories)
    column = stat.column_of()
    for image_id, pred_ann in items:
        gt_img = gt.load(image_id)
        png = pred_folder / pred_ann["file_name"]
        pred = panoptic_image(read_panoptic_png(png), pred_ann["segments_info"], gt.categories, name=str(png))
        pq_image_stat(gt_img.image, pred, stat, column)
    return stat


def pq_compute_files(gt_json: str | Path, gt_folder: str | Path | None, pred_json: str | Path,
                     pred_folder: str | Path | None, workers: int = 0) -> dict[str, Any]:
    """PQ of a COCO panoptic prediction set against a COCO panoptic GT set, as panopticapi's ``pq_compute``.

    Args:
        gt_json, pred_json: panoptic JSON files; every GT image must have exactly one prediction.
        gt_folder, pred_folder: PNG folders; None means the JSON path without ``.json``.
        workers: 0 or 1 scores in this process; N > 1 uses a process pool that is shut down before returning.
    Returns:
        {"All" | "Things" | "Stuff": {pq, sq, rq, n}, "per_class": {category_id: {pq, sq, rq}}}, fractions in [0, 1].
    """
    gt_json, pred_json = Path(gt_json), Path(pred_json)
    gt_folder = Path(gt_folder) if gt_folder is not None else gt_json.with_suffix("")
    pred_folder = Path(pred_folder) if pred_folder is not None else pred_json.with_suffix("")
    gt = PanopticGroundTruth(gt_json, gt_folder)
    pred_data = load_json(pred_json, "predicted panoptic JSON")
    if not isinstance(pred_data, dict) or "annotations" not in pred_data:
        raise PanopticFormatError(f"{pred_json}: predicted panoptic JSON has no 'annotations' list")
    if not pred_folder.is_dir():
        raise FileNotFoundError(f"{pred_folder}: predicted panoptic PNG folder not found")
    items = _match_annotations(gt_json, gt.annotations, pred_json, pred_data["annotations"])
    if workers <= 1 or len(items) < 2:
        stat = _pq_chunk(gt, pred_folder, items)
    else:
        chunks = [c for c in (items[i::workers] for i in range(workers)) if c]
        stat = PQStat.for_categories(gt.categories)
        with ProcessPoolExecutor(max_workers=len(chunks)) as pool:
            futures = [pool.submit(_pq_chunk, gt, pred_folder, c) for c in chunks]
            for fut in futures:
                stat += fut.result()
    return stat.results()
