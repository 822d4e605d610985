"""Mask AP through pycocotools on hand-made instances whose AP is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pfcn.evaluation.instance_ap import InstanceAPAccumulator, encode_masks, thing_instances_from_panoptic
from pfcn.evaluation.panoptic_format import PanopticFormatError, panoptic_image

CATS = [{"id": 1, "name": "a", "isthing": 1}, {"id": 3, "name": "b", "isthing": 1},
        {"id": 9, "name": "s", "isthing": 0}]


def _scene():
    """20x20: thing A rows 0-4, thing B rows 10-14 (class 1), a class-1 crowd on rows 16-19, stuff rows 5-9."""
    ids = np.zeros((20, 20), np.int64)
    ids[0:5], ids[5:10], ids[10:15], ids[16:20] = 11, 90, 12, 13
    segs = [{"id": 11, "category_id": 1, "iscrowd": 0}, {"id": 90, "category_id": 9, "iscrowd": 0},
            {"id": 12, "category_id": 1, "iscrowd": 0}, {"id": 13, "category_id": 1, "iscrowd": 1}]
    image = panoptic_image(ids, segs, {c["id"]: c for c in CATS}, "scene")
    return ids, thing_instances_from_panoptic(image, frozenset({1, 3}))


def _evaluate(pred_rows: list[tuple[slice, int, float]]) -> dict:
    ids, gt_anns = _scene()
    acc = InstanceAPAccumulator([c for c in CATS if c["isthing"]])
    acc.add_ground_truth("img", 20, 20, gt_anns)
    masks = np.zeros((len(pred_rows), 20, 20), bool)
    for i, (rows, _, _) in enumerate(pred_rows):
        masks[i, rows] = True
    acc.add_predictions("img", encode_masks(masks), [s for _, _, s in pred_rows], [c for _, c, _ in pred_rows])
    return acc.evaluate()


def test_ground_truth_instances_from_panoptic() -> None:
    _, anns = _scene()
    assert [(a["category_id"], a["iscrowd"], a["area"]) for a in anns] == [(1, 0, 100.0), (1, 0, 100.0), (1, 1, 80.0)]
    assert anns[1]["bbox"] == [0.0, 10.0, 20.0, 5.0]


def test_perfect_predictions_give_ap_100() -> None:
    res = _evaluate([(slice(0, 5), 1, 0.9), (slice(10, 15), 1, 0.8)])
    assert res["AP"] == res["AP50"] == res["AP75"] == res["APs"] == 100.0
    assert math.isnan(res["APm"]) and math.isnan(res["APl"])  # no medium or large GT instance
    assert res["per_class"][1] == 100.0 and math.isnan(res["per_class"][3])
    assert "Average Precision" in res["log"]


def test_half_recall_gives_51_of_101_points() -> None:
    # One of two instances found at precision 1: COCO's 101-point interpolation gives 51/101 at every IoU.
    res = _evaluate([(slice(0, 5), 1, 0.9)])
    assert res["AP"] == pytest.approx(100 * 51 / 101)


def test_prediction_on_crowd_is_ignored_not_false() -> None:
    res = _evaluate([(slice(0, 5), 1, 0.9), (slice(10, 15), 1, 0.8), (slice(16, 20), 1, 0.95)])
    assert res["AP"] == 100.0


def test_false_positive_ranked_first_lowers_ap() -> None:
    # A class-1 mask on the stuff rows, scored above the two true ones, is a false positive ranked first.
    res = _evaluate([(slice(5, 10), 1, 0.99), (slice(0, 5), 1, 0.9), (slice(10, 15), 1, 0.8)])
    assert 0 < res["AP"] < 100.0


def test_no_predictions_give_ap_0() -> None:
    res = _evaluate([])
    assert res["AP"] == 0.0 and res["num_predictions"] == 0


def test_stuff_category_prediction_is_an_error() -> None:
    with pytest.raises(PanopticFormatError, match="category_id 9, which is not a thing category"):
        _evaluate([(slice(0, 5), 9, 0.9)])


def test_wrong_mask_size_is_an_error() -> None:
    acc = InstanceAPAccumulator([CATS[0]])
    acc.add_ground_truth("img", 20, 20, [])
    with pytest.raises(PanopticFormatError, match=r"mask is \(10, 20\) but the ground truth is \(20, 20\)"):
        acc.add_predictions("img", encode_masks(np.ones((1, 10, 20), bool)), [1.0], [1])


def test_merge_equals_single_accumulator() -> None:
    ids, gt_anns = _scene()
    masks = encode_masks(np.stack([ids == 11, ids == 90]))
    single = InstanceAPAccumulator([CATS[0]])
    shards = [InstanceAPAccumulator([CATS[0]]), InstanceAPAccumulator([CATS[0]])]
    for k, shard in zip(("x", "y"), shards):
        for acc in (single, shard):
            acc.add_ground_truth(k, 20, 20, gt_anns)
            acc.add_predictions(k, masks, [0.9, 0.8], [1, 1])
    shards[0].merge(shards[1])
    a, b = single.evaluate(), shards[0].evaluate()
    assert {k: a[k] for k in ("AP", "AP50", "AP75")} == {k: b[k] for k in ("AP", "AP50", "AP75")}
    with pytest.raises(ValueError, match="evaluated by two shards"):
        shards[0].merge(shards[1])
