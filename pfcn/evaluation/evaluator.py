"""One evaluator for every backend: PQ/SQ/RQ, mask AP and stuff mIoU from results fed one image at a time.

The evaluator streams: each image's ground truth is read when its prediction arrives, and only small state is kept
(PQ sums, RLE masks for COCOeval, a confusion matrix), so a 5k-image split fits in memory and shards from several
processes merge (`state` / `merge`). It accepts `pfcn.result.PanopticResult` objects from the model
(`process`) or the pieces read from prediction files (`process_arrays`, `evaluate_prediction_files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from pfcn.evaluation.instance_ap import InstanceAPAccumulator, encode_masks, thing_instances_from_panoptic
from pfcn.evaluation.panoptic_format import PanopticFormatError, PanopticGroundTruth, PanopticImage, panoptic_image
from pfcn.evaluation.panoptic_quality import PQStat, pq_image_stat
from pfcn.evaluation.predictions_io import PanopticPredictions
from pfcn.evaluation.semantic_miou import ConfusionMatrix

__all__ = ["EvalState", "PanopticEvaluator", "evaluate_prediction_files", "match_predictions"]


@dataclass
class EvalState:
    """What a shard sends to the process that scores: small, picklable."""

    image_ids: list[Any]
    pq: PQStat
    ap: InstanceAPAccumulator | None
    confusion: ConfusionMatrix | None


class PanopticEvaluator:
    """Scores predictions against a COCO panoptic ground-truth set.

    Args:
        gt: the ground truth (`PanopticGroundTruth`).
        instance_ap: compute mask AP (needs instance predictions for every image).
        semantic: compute stuff mIoU (needs a semantic map for every image).
        count_pred_only_classes: mIoU reduction, see `pfcn.evaluation.semantic_miou`.
    """

    def __init__(self, gt: PanopticGroundTruth, *, instance_ap: bool = True, semantic: bool = True,
                 count_pred_only_classes: bool = True):
        self.gt = gt
        self.meta = gt.meta
        self.count_pred_only_classes = count_pred_only_classes
        self._thing_ids = frozenset(self.meta.thing_ids)
        thing_cats = [c for c in gt.categories.values() if c["isthing"] == 1]
        self._state = EvalState(
            image_ids=[],
            pq=PQStat.for_categories(gt.categories),
            ap=InstanceAPAccumulator(thing_cats) if instance_ap else None,
            confusion=(ConfusionMatrix(self.meta.num_stuff,
                                       names=["things"] + [self.meta.names.get(c, str(c)) for c in self.meta.stuff_ids])
                       if semantic else None))
        self._seen: set[Any] = set()
        self._column = self._state.pq.column_of()

    @property
    def num_images(self) -> int:
        return len(self._state.image_ids)

    def process(self, result: Any, image_id: Any = None, instance_rles: list[dict[str, Any]] | None = None) -> None:
        """Score one `PanopticResult` (its ``image_id`` must be a GT image id, unless ``image_id`` is given).

        ``instance_rles``: the instance masks already encoded with `encode_masks` (to encode them only once).
        """
        image_id = result.image_id if image_id is None else image_id
        instances = None
        if self._state.ap is not None:
            rles = encode_masks(result.instance_masks) if instance_rles is None else instance_rles
            instances = (rles, np.asarray(result.instance_scores).tolist(),
                         np.asarray(result.instance_category_ids).tolist())
        semantic = result.semantic if self._state.confusion is not None else None
        self.process_arrays(image_id, result.panoptic, result.segments_info, instances=instances, semantic=semantic)

    def process_arrays(self, image_id: Any, panoptic: np.ndarray | PanopticImage,
                       segments: Sequence[dict[str, Any]] | None = None,
                       *, instances: tuple[list[dict], Sequence[float], Sequence[int]] | None = None,
                       semantic: np.ndarray | None = None, name: str | None = None) -> None:
        """Score one image given as arrays.

        Args:
            image_id: the GT image id.
            panoptic: [H, W] segment ids (0 = VOID) with ``segments`` (segments_info), or a `PanopticImage`
                (then ``segments`` is None).
            instances: (RLE masks, scores, dataset category ids); required when AP is enabled.
            semantic: [H, W] stuff-head labels; required when mIoU is enabled.
            name: how errors refer to the prediction.
        """
        if image_id in self._seen:
            raise ValueError(f"image_id {image_id!r} was evaluated twice")
        if image_id not in self.gt.annotations:
            raise PanopticFormatError(f"prediction for image_id {image_id!r}, which {self.gt.json_path} lacks")
        name = name or f"prediction for image_id {image_id!r}"
        gt_img = self.gt.load(image_id)
        if isinstance(panoptic, PanopticImage):
            pred = panoptic
        elif segments is None:
            raise ValueError(f"{name}: a panoptic id array needs its segments_info")
        else:
            pred = panoptic_image(panoptic, segments, self.gt.categories, name=name)
        if pred.shape != gt_img.image.shape:
            raise PanopticFormatError(f"{name}: size {pred.shape} differs from the ground truth "
                                      f"{self.gt.folder / gt_img.file_name} {gt_img.image.shape} (H, W)")
        pq_image_stat(gt_img.image, pred, self._state.pq, self._column)
        if self._state.ap is not None:
            if instances is None:
                raise ValueError(f"{name}: instance predictions are missing but mask AP is enabled")
            self._state.ap.add_ground_truth(image_id, gt_img.height, gt_img.width,
                                            thing_instances_from_panoptic(gt_img.image, self._thing_ids))
            self._state.ap.add_predictions(image_id, *instances)
        if self._state.confusion is not None:
            if semantic is None:
                raise ValueError(f"{name}: the semantic map is missing but mIoU is enabled")
            self._state.confusion.add_panoptic(gt_img.image, np.asarray(semantic), self.meta.stuff_ids,
                                               self.meta.thing_ids, name=name)
        self._seen.add(image_id)
        self._state.image_ids.append(image_id)

    def state(self) -> EvalState:
        """This evaluator's accumulated state (to send to the scoring process)."""
        return self._state

    def merge(self, state: EvalState) -> None:
        """Add a shard's state; shards must cover disjoint images."""
        twice = [i for i in state.image_ids if i in self._seen]
        if twice:
            raise ValueError(f"image_id(s) {twice[:10]} were evaluated by two shards")
        self._state.pq += state.pq
        if self._state.ap is not None and state.ap is not None:
            self._state.ap.merge(state.ap)
        if self._state.confusion is not None and state.confusion is not None:
            self._state.confusion.merge(state.confusion)
        self._seen.update(state.image_ids)
        self._state.image_ids.extend(state.image_ids)

    def evaluate(self, require_all: bool = True) -> dict[str, Any]:
        """Compute the metrics (percent).

        Args:
            require_all: every GT image must have been processed (a partial split is an error, not a silent subset).
        Returns:
            {"num_images", "panoptic": {All/Things/Stuff: {PQ, SQ, RQ, N}, per_class: {category_id: {...}}},
             "instance": {AP, AP50, AP75, APs, APm, APl, per_class, log} or None,
             "semantic": {mIoU, fwIoU, mACC, pACC, per_class} or None}
        """
        if require_all:
            missing = [i for i in self.gt.annotations if i not in self._seen]
            if missing:
                raise ValueError(f"no prediction for image_id(s) {missing[:10]} of {self.gt.json_path}"
                                 + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""))
        pq = self._state.pq
        res = pq.results()
        per_class = {}
        for i, cid in enumerate(pq.category_ids):
            cid = int(cid)
            per_class[cid] = {"name": self.gt.categories[cid]["name"], "isthing": bool(pq.isthing[i]),
                              "PQ": 100 * res["per_class"][cid]["pq"], "SQ": 100 * res["per_class"][cid]["sq"],
                              "RQ": 100 * res["per_class"][cid]["rq"], "TP": int(pq.tp[i]), "FP": int(pq.fp[i]),
                              "FN": int(pq.fn[i])}
        panoptic = {k: {"PQ": 100 * res[k]["pq"], "SQ": 100 * res[k]["sq"], "RQ": 100 * res[k]["rq"],
                        "N": res[k]["n"]} for k in ("All", "Things", "Stuff")}
        panoptic["per_class"] = per_class
        return {
            "num_images": self.num_images,
            "panoptic": panoptic,
            "instance": self._state.ap.evaluate() if self._state.ap is not None else None,
            "semantic": (self._state.confusion.metrics(self.count_pred_only_classes)
                         if self._state.confusion is not None else None),
        }


def match_predictions(gt: PanopticGroundTruth, preds: PanopticPredictions) -> dict[Any, Any]:
    """Pair every GT image with its prediction: GT image_id -> prediction image_id.

    By PNG file_name when it names a GT image's PNG, else by image_id: ``pfcn-predict IMAGE_DIR`` without --gt-json
    numbers its images 1, 2, ... (or, before, by file stem), ids that may belong to other images of the GT, while
    its PNGs are named after the photos as COCO's are. A GT image without a prediction, or a prediction that matches
    no GT image, is an error.
    """
    by_file = {ann["file_name"]: image_id for image_id, ann in gt.annotations.items()}
    pairs: dict[Any, Any] = {}
    unmatched = []
    for pred_id, ann in preds.annotations.items():
        gt_id = by_file.get(ann["file_name"], pred_id if pred_id in gt.annotations else None)
        if gt_id is None:
            unmatched.append(pred_id)
        elif gt_id in pairs:
            raise PanopticFormatError(f"{preds.json_path}: image_ids {pairs[gt_id]!r} and {pred_id!r} both match "
                                      f"ground-truth image {gt_id!r}")
        else:
            pairs[gt_id] = pred_id
    if unmatched:
        raise PanopticFormatError(f"{preds.json_path}: predictions for image_id(s) {unmatched[:10]} match no image "
                                  f"of {gt.json_path} (by image_id or PNG file_name)")
    missing = [i for i in gt.image_ids if i not in pairs]
    if missing:
        raise PanopticFormatError(f"{preds.json_path}: no prediction for image_id(s) {missing[:10]} of {gt.json_path}"
                                  + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""))
    return pairs


def evaluate_prediction_files(gt: PanopticGroundTruth, predictions: str | Path, *, progress: bool = True,
                              count_pred_only_classes: bool = True) -> dict[str, Any]:
    """Score a prediction folder/JSON (see `pfcn.evaluation.predictions_io`) against ``gt``.

    Images are paired by `match_predictions`. AP is computed when the predictions carry an instances file, mIoU
    when they carry a semantic folder.
    """
    preds = PanopticPredictions(predictions)
    pairs = match_predictions(gt, preds)
    ev = PanopticEvaluator(gt, instance_ap=preds.instances is not None, semantic=preds.semantic_folder is not None,
                           count_pred_only_classes=count_pred_only_classes)
    for image_id in tqdm(gt.image_ids, desc="scoring", unit="img", disable=not progress):
        pred_id = pairs[image_id]
        pred = preds.load_panoptic(pred_id, gt.categories)
        ev.process_arrays(image_id, pred, None,
                          instances=preds.load_instances(pred_id) if preds.instances is not None else None,
                          semantic=preds.load_semantic(pred_id) if preds.semantic_folder is not None else None,
                          name=str(preds.folder / preds.annotations[pred_id]["file_name"]))
    return ev.evaluate()
