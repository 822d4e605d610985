"""Stuff-head mIoU on hand-made maps with values worked out by hand, in both detectron2 reductions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pfcn.evaluation.panoptic_format import PanopticFormatError, panoptic_image
from pfcn.evaluation.semantic_miou import ConfusionMatrix, semantic_from_panoptic

GT = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
PRED = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
# class 0: tp 3, gt 4, pred 3 -> IoU 3/4, ACC 3/4; class 1: tp 2, gt 3, pred 3 -> IoU 2/4, ACC 2/3;
# class 2: predicted once on a GT-1 pixel, absent from the GT (the pixel on GT 255 is not counted).


def test_hand_made_values_paper_era_reduction() -> None:
    cm = ConfusionMatrix(3)
    cm.add(GT, PRED)
    m = cm.metrics()
    assert m["mIoU"] == pytest.approx(100 * (0.75 + 0.5) / 3)  # the predicted-only class counts as IoU 0
    assert m["fwIoU"] == pytest.approx(100 * (4 / 7 * 0.75 + 3 / 7 * 0.5))
    assert m["mACC"] == pytest.approx(100 * (0.75 + 2 / 3) / 2)
    assert m["pACC"] == pytest.approx(100 * 5 / 7)
    assert m["per_class"][0]["IoU"] == pytest.approx(75.0) and math.isnan(m["per_class"][2]["IoU"])


def test_hand_made_values_current_detectron2_reduction() -> None:
    cm = ConfusionMatrix(3)
    cm.add(GT, PRED)
    assert cm.metrics(count_pred_only_classes=False)["mIoU"] == pytest.approx(100 * (0.75 + 0.5) / 2)


def test_merge_and_accumulation() -> None:
    a, b, both = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    a.add(GT, PRED)
    b.add(GT, GT.clip(0, 2))
    both.add(GT, PRED)
    both.add(GT, GT.clip(0, 2))
    a.merge(b)
    assert np.array_equal(a.matrix, both.matrix)
    assert both.matrix.sum() == 16 and both.matrix[-1].sum() == 0  # predictions are never "ignore"


def test_bad_labels_are_errors() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(PanopticFormatError, match="img.png: semantic label 3 is outside 0..2"):
        cm.add(GT, np.full_like(GT, 3), name="img.png")
    with pytest.raises(PanopticFormatError, match="shape"):
        cm.add(GT, PRED[:1])


def test_semantic_from_panoptic() -> None:
    cats = {1: {"isthing": 1}, 2: {"isthing": 1}, 7: {"isthing": 0}, 8: {"isthing": 0}}
    ids = np.array([[5, 5, 6, 0], [7, 8, 8, 9]])
    segs = [{"id": 5, "category_id": 1}, {"id": 6, "category_id": 8}, {"id": 7, "category_id": 7},
            {"id": 8, "category_id": 2, "iscrowd": 1}, {"id": 9, "category_id": 1}]
    sem = semantic_from_panoptic(panoptic_image(ids, segs, cats, "x"), stuff_ids=[8, 7], thing_ids=[1, 2])
    # things -> 0, stuff 8 -> 1 and 7 -> 2 (stuff-head order), crowd and VOID -> 255
    assert sem.tolist() == [[0, 0, 1, 255], [2, 255, 255, 0]]
    assert sem.dtype == np.uint8


def test_add_panoptic_equals_add_on_the_label_map() -> None:
    from tests.pfcn.evaluation.panoptic_fixtures import SAMPLE

    from pfcn.evaluation.panoptic_format import PanopticGroundTruth

    gt = PanopticGroundTruth(SAMPLE / "panoptic_examples.json")
    rng = np.random.default_rng(0)
    for image_id in gt.image_ids:
        image = gt.load(image_id).image
        pred = rng.integers(0, gt.meta.num_stuff, image.shape)
        pred[:100] = 0
        slow, fast = ConfusionMatrix(gt.meta.num_stuff), ConfusionMatrix(gt.meta.num_stuff)
        slow.add(semantic_from_panoptic(image, gt.meta.stuff_ids, gt.meta.thing_ids), pred)
        fast.add_panoptic(image, pred, gt.meta.stuff_ids, gt.meta.thing_ids)
        assert np.array_equal(slow.matrix, fast.matrix) and slow.matrix[:, -1].sum() > 0
    with pytest.raises(PanopticFormatError, match="semantic label 54 is outside 0..53"):
        fast.add_panoptic(image, np.full(image.shape, 54), gt.meta.stuff_ids, gt.meta.thing_ids)


def test_too_many_classes() -> None:
    with pytest.raises(ValueError, match="num_classes must be in 1..254"):
        ConfusionMatrix(300)
