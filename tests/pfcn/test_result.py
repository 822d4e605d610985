"""results_from_outputs unpacks fixed-size outputs by hand-made examples; overlay and the summary JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pfcn.inference import OUTPUT_NAMES
from pfcn.metadata import CategoryMeta
from pfcn.result import (PanopticResult, layout_labels, overlay, results_from_outputs, save_summary,
                         segment_bboxes)

K, S = 4, 3  # instance slots; stuff-head channels (0 = things, 1..2 stuff)
H, W = 9, 12  # shared canvas
SIZES = [(9, 12), (6, 7)]

META = CategoryMeta.from_categories([
    {"id": 10, "name": "cat", "isthing": 1, "color": [255, 0, 0]},
    {"id": 20, "name": "dog", "isthing": 1, "color": [0, 255, 0]},
    {"id": 30, "name": "cow", "isthing": 1, "color": [0, 0, 255]},
    {"id": 100, "name": "grass", "isthing": 0, "color": [0, 128, 0]},
    {"id": 200, "name": "sky", "isthing": 0, "color": [100, 150, 250]},
])


def hand_made_outputs() -> dict[str, np.ndarray]:
    """Two images in one 9x12 canvas. Invalid slots hold junk (class 99) that must never be looked up."""
    pan = np.zeros((2, H, W), np.int32)
    # image 0: thing id 1 (class 2 -> 30) rows 1..3 cols 2..5; thing id 2 (class 0 -> 10) rows 5..7 cols 8..10;
    # stuff id 3 (label 2 -> 200) = the whole last column.
    pan[0, 1:4, 2:6] = 1
    pan[0, 5:8, 8:11] = 2
    pan[0, :, 11] = 3
    # image 1 (6x7): thing id 1 (class 1 -> 20) rows 0..1 cols 0..2; stuff id 2 (label 1 -> 100) rows 4..5 cols 3..6.
    pan[1, 0:2, 0:3] = 1
    pan[1, 4:6, 3:7] = 2
    pan[1, 7:, :] = 9  # outside the image: must be cropped away
    pan[1, :, 8:] = 9

    seg_ids = np.zeros((2, K + S), np.int32)
    seg_cls = np.full((2, K + S), 99, np.int64)
    seg_thing = np.zeros((2, K + S), bool)
    seg_thing[:, :K] = True
    seg_cls[:, K:] = np.arange(S)
    seg_scores = np.zeros((2, K + S), np.float32)
    seg_areas = np.zeros((2, K + S), np.int64)
    seg_valid = np.zeros((2, K + S), bool)
    # image 0: instance slots 0 and 2 accepted, stuff label 2 accepted (slot K + 2).
    for b, slot, sid, cls, score, area in [(0, 0, 1, 2, 0.9, 12), (0, 2, 2, 0, 0.6, 9), (0, K + 2, 3, 2, 0.4, 9),
                                           (1, 1, 1, 1, 0.8, 6), (1, K + 1, 2, 1, 0.3, 8)]:
        seg_ids[b, slot], seg_cls[b, slot], seg_scores[b, slot] = sid, cls, score
        seg_areas[b, slot], seg_valid[b, slot] = area, True
    seg_ids[0, 1] = 7  # an invalid slot with an id that does not exist

    inst_masks = np.zeros((2, K, H, W), bool)
    inst_masks[0, 0, 1:4, 2:6] = True
    inst_masks[0, 1, 0:2, 0:2] = True  # valid instance not in the panoptic map (e.g. below COMBINE.INST_THRESH)
    inst_masks[0, 2, 5:8, 8:11] = True
    inst_masks[1, 0, 0:2, 0:3] = True
    inst_masks[1, 0, 7:, :] = True  # outside image 1: cropped
    inst_masks[1, 3, :, :] = True  # invalid slot
    inst_valid = np.array([[True, True, True, False], [True, False, False, False]])
    inst_cls = np.array([[2, 1, 0, 99], [1, 99, 99, 99]], np.int64)
    inst_scores = np.array([[0.9, 0.15, 0.6, 0.0], [0.8, 0.0, 0.0, 0.0]], np.float32)

    semantic = np.zeros((2, H, W), np.int64)
    semantic[0, :, 11] = 2
    semantic[1, 4:6, 3:7] = 1
    semantic[1, 7:, :] = 2
    return {
        "panoptic": pan, "semantic": semantic, "instance_masks": inst_masks, "instance_scores": inst_scores,
        "instance_classes": inst_cls, "instance_valid": inst_valid, "segment_ids": seg_ids,
        "segment_classes": seg_cls, "segment_isthing": seg_thing, "segment_scores": seg_scores,
        "segment_areas": seg_areas, "segment_valid": seg_valid,
    }


@pytest.fixture(scope="module")
def results() -> list[PanopticResult]:
    return results_from_outputs(hand_made_outputs(), SIZES, META, file_names=["a.jpg", "b.png"], image_ids=[5, "b"])


def test_outputs_cover_all_output_names():
    assert set(hand_made_outputs()) == set(OUTPUT_NAMES)


def test_crop_to_each_image(results):
    assert [(r.height, r.width) for r in results] == SIZES
    assert results[1].panoptic.shape == (6, 7) and results[1].semantic.shape == (6, 7)
    assert results[1].panoptic.dtype == np.int32 and results[1].semantic.dtype == np.int64
    assert not (results[1].panoptic == 9).any()
    assert results[1].instance_masks.shape == (1, 6, 7)
    assert results[1].instance_masks[0].sum() == 6
    assert (results[0].file_name, results[0].image_id, results[1].file_name, results[1].image_id) == \
        ("a.jpg", 5, "b.png", "b")


def test_segments_valid_only_mapped_with_bboxes(results):
    assert results[0].segments_info == [
        {"id": 1, "category_id": 30, "isthing": True, "score": pytest.approx(0.9), "area": 12, "bbox": [2, 1, 4, 3]},
        {"id": 2, "category_id": 10, "isthing": True, "score": pytest.approx(0.6), "area": 9, "bbox": [8, 5, 3, 3]},
        {"id": 3, "category_id": 200, "isthing": False, "score": pytest.approx(0.4), "area": 9,
         "bbox": [11, 0, 1, 9]},
    ]
    assert results[1].segments_info == [
        {"id": 1, "category_id": 20, "isthing": True, "score": pytest.approx(0.8), "area": 6, "bbox": [0, 0, 3, 2]},
        {"id": 2, "category_id": 100, "isthing": False, "score": pytest.approx(0.3), "area": 8, "bbox": [3, 4, 4, 2]},
    ]
    for r in results:
        for s in r.segments_info:
            assert type(s["id"]) is int and type(s["category_id"]) is int and type(s["score"]) is float
            assert type(s["isthing"]) is bool and type(s["area"]) is int


def test_instances_valid_only_mapped(results):
    r0, r1 = results
    np.testing.assert_array_equal(r0.instance_classes, [2, 1, 0])
    np.testing.assert_array_equal(r0.instance_category_ids, [30, 20, 10])
    np.testing.assert_allclose(r0.instance_scores, [0.9, 0.15, 0.6])
    assert r0.instance_scores.dtype == np.float32 and r0.instance_classes.dtype == np.int64
    assert r0.instance_masks.dtype == bool and r0.instance_masks.shape == (3, 9, 12)
    assert r0.instance_masks[1].sum() == 4
    np.testing.assert_array_equal(r1.instance_category_ids, [20])


def test_torch_and_numpy_inputs_agree():
    arrays = hand_made_outputs()
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    a = results_from_outputs(arrays, SIZES, META)
    b = results_from_outputs(tensors, SIZES, META)
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra.panoptic, rb.panoptic)
        assert ra.segments_info == rb.segments_info
        np.testing.assert_array_equal(ra.instance_masks, rb.instance_masks)


def test_segment_bboxes_absent_id():
    pan = np.zeros((4, 5), np.int32)
    pan[1:3, 2] = 4
    assert segment_bboxes(pan, np.array([4, 8])) == {4: [2, 1, 1, 2], 8: [0, 0, 0, 0]}


# ----------------------------------------------------------------------------------------------- pictures, JSON
def big_result() -> tuple[np.ndarray, PanopticResult]:
    """A 120x160 photo with one thing (left) and one stuff region (bottom right); the rest is void."""
    rng = np.random.default_rng(0)
    photo = rng.integers(60, 200, (120, 160, 3), dtype=np.uint8)
    pan = np.zeros((120, 160), np.int32)
    pan[10:60, 10:60] = 1
    pan[80:, 100:] = 2
    segments = [{"id": 1, "category_id": 20, "isthing": True, "score": 0.87, "area": 2500, "bbox": [10, 10, 50, 50]},
                {"id": 2, "category_id": 200, "isthing": False, "score": 0.5, "area": 2400,
                 "bbox": [100, 80, 60, 40]}]
    masks = (pan == 1)[None]
    result = PanopticResult(pan, segments, masks, np.array([0.87], np.float32), np.array([1]), np.array([20]),
                            np.zeros((120, 160), np.int64), file_name="p.jpg", image_id="p")
    return photo, result


def test_overlay_colours_segments_and_keeps_void():
    photo, result = big_result()
    img = overlay(photo, result, META)
    assert img.size == (160, 120) and img.mode == "RGB"
    out = np.asarray(img)
    # Void far from any segment, edge or label is the photo itself.
    np.testing.assert_array_equal(out[70:, :80], photo[70:, :80])
    np.testing.assert_array_equal(out[:70, 70:], photo[:70, 70:])
    for sid in (1, 2):
        inside = result.panoptic == sid
        changed = (out != photo).any(axis=2)[inside].mean()
        assert changed > 0.95, f"segment {sid}: only {changed:.2%} of its pixels are coloured"
    # The thing is tinted towards its category colour (dog: green).
    region = out[15:25, 15:25].astype(int) - photo[15:25, 15:25].astype(int)
    assert region[..., 1].mean() > 20 and region[..., 0].mean() < 0


def test_overlay_of_empty_result_is_the_photo():
    photo, _ = big_result()
    empty = PanopticResult(np.zeros((120, 160), np.int32), [], np.zeros((0, 120, 160), bool),
                           np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           np.zeros((120, 160), np.int64))
    np.testing.assert_array_equal(np.asarray(overlay(photo, empty, META)), photo)


def test_summary_json_has_names(tmp_path):
    _, result = big_result()
    path = tmp_path / "p.json"
    save_summary(result, META, path)
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]
    data = json.loads(path.read_text())
    assert (data["file_name"], data["image_id"], data["height"], data["width"]) == ("p.jpg", "p", 120, 160)
    assert [(s["id"], s["name"], s["category_id"]) for s in data["segments_info"]] == [(1, "dog", 20),
                                                                                      (2, "sky", 200)]
    assert data["instances"] == [{"category_id": 20, "name": "dog", "score": pytest.approx(0.87), "area": 2500,
                                  "bbox": [10, 10, 50, 50]}]


def test_labels_on_a_tiny_image_stay_inside_and_apart():
    """Six segments on a 40x56 picture: every label box the overlay draws is inside it and none overlaps another
    (labels shrink, and those that still collide are left out, larger segments first)."""
    rng = np.random.default_rng(1)
    photo = rng.integers(60, 200, (40, 56, 3), dtype=np.uint8)
    pan = np.zeros((40, 56), np.int32)
    cells = [(0, 20, 0, 19), (0, 20, 19, 38), (0, 20, 38, 56), (20, 40, 0, 19), (20, 40, 19, 38), (20, 40, 38, 56)]
    segments = []
    for sid, (y0, y1, x0, x1) in enumerate(cells, start=1):
        pan[y0:y1, x0:x1] = sid
        segments.append({"id": sid, "category_id": 20 if sid % 2 else 200, "isthing": bool(sid % 2), "score": 0.9,
                         "area": (y1 - y0) * (x1 - x0), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    result = PanopticResult(pan, segments, np.zeros((0, 40, 56), bool), np.zeros(0, np.float32),
                            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((40, 56), np.int64))
    labels = [(int(np.median(np.nonzero(pan == s["id"])[1])), int(np.median(np.nonzero(pan == s["id"])[0])),
               "dog 0.90" if s["isthing"] else "sky", s["area"]) for s in segments]
    placed = layout_labels(56, 40, labels, 11)
    assert placed, "no label fits at all"
    for box, _, size in placed:
        assert 0 <= box[0] <= box[2] <= 55 and 0 <= box[1] <= box[3] <= 39, box
        assert size >= 7
    for i, (a, _, _) in enumerate(placed):
        for b, _, _ in placed[i + 1:]:
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (a, b)
    # The overlay draws exactly those boxes: black label backgrounds only inside them.
    out = np.asarray(overlay(photo, result, META))
    assert out.shape == photo.shape
    black = (out == 0).all(axis=2)
    inside = np.zeros_like(black)
    for (x0, y0, x1, y1), _, _ in placed:
        inside[y0:y1 + 1, x0:x1 + 1] = True
    assert black[inside].mean() > 0.3 and not black[~inside].any()


def test_a_label_wider_than_the_picture_is_left_out():
    assert layout_labels(12, 30, [(6, 15, "a very long category name 0.99", 100)], 11) == []
