"""Predictions written with the COCO panoptic writer read back identically, atomically, with the pfcn extension."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfcn.evaluation.panoptic_format import PanopticFormatError, PanopticGroundTruth, normalize_categories
from pfcn.evaluation.predictions_io import PanopticPredictions, write_panoptic_predictions
from pfcn.result import PanopticResult
from tests.pfcn.evaluation.panoptic_fixtures import CATEGORIES


def _result(image_id, file_name=None, big_id=0x12AB34) -> PanopticResult:
    pan = np.zeros((6, 8), np.int32)
    pan[:3], pan[3:, :4] = big_id, 2
    masks = np.zeros((1, 6, 8), bool)
    masks[0, :3] = True
    return PanopticResult(
        panoptic=pan,
        segments_info=[{"id": 2, "category_id": 7, "isthing": False, "score": 0.5, "area": 12, "bbox": [0, 3, 4, 3]},
                       {"id": big_id, "category_id": 1, "isthing": True, "score": np.float32(0.75), "area": 24,
                        "bbox": [0, 0, 8, 3]}],
        instance_masks=masks, instance_scores=np.array([0.75], np.float32), instance_classes=np.array([0]),
        instance_category_ids=np.array([1]), semantic=np.full((6, 8), 2, np.int64), file_name=file_name,
        image_id=image_id)


def test_round_trip(tmp_path: Path) -> None:
    results = [_result(5, "a/b/photo5.jpg"), _result("x7")]
    path = write_panoptic_predictions(results, tmp_path, CATEGORIES)
    assert path == tmp_path / "panoptic.json"
    assert sorted(p.name for p in (tmp_path / "panoptic").iterdir()) == ["photo5.png", "x7.png"]
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left behind
    preds = PanopticPredictions(tmp_path)
    assert preds.image_ids == [5, "x7"]
    cats = normalize_categories(CATEGORIES)
    image = preds.load_panoptic(5, cats)
    assert np.array_equal(image.ids, results[0].panoptic.astype(np.uint32))
    assert image.table.ids.tolist() == [2, 0x12AB34]
    rles, scores, cids = preds.load_instances("x7")
    assert scores == [0.75] and cids == [1] and rles[0]["size"] == [6, 8]
    assert np.array_equal(preds.load_semantic(5), results[0].semantic)
    data = json.loads(path.read_text())
    assert data["instances_file"] == "instances.json" and data["semantic_folder"] == "semantic"
    assert data["annotations"][0]["segments_info"][1]["score"] == 0.75  # numpy scalars became JSON numbers


def test_plain_coco_json_has_no_extension(tmp_path: Path) -> None:
    write_panoptic_predictions([_result(1)], tmp_path, CATEGORIES, instances=False, semantic=False)
    preds = PanopticPredictions(tmp_path / "panoptic.json")
    assert preds.instances is None and preds.semantic_folder is None
    with pytest.raises(ValueError, match="carries no instances_file"):
        preds.load_instances(1)


def test_the_sample_ground_truth_reads_as_predictions() -> None:
    sample = Path(__file__).resolve().parents[4] / "shared" / "data" / "coco_panoptic_sample"
    preds = PanopticPredictions(sample / "panoptic_examples.json")
    gt = PanopticGroundTruth(sample / "panoptic_examples.json")
    assert preds.image_ids == gt.image_ids
    assert preds.load_panoptic(gt.image_ids[0], gt.categories).shape == (427, 640)


def test_two_results_with_one_png_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"both be written to p\.png"):
        write_panoptic_predictions([_result(1, "p.jpg"), _result(2, "p.png")], tmp_path, CATEGORIES)
    assert not (tmp_path / "panoptic.json").exists()  # a failed run leaves no JSON that claims completeness


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="predicted panoptic JSON not found"):
        PanopticPredictions(tmp_path / "nope.json")
    write_panoptic_predictions([_result(1)], tmp_path, CATEGORIES)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(tmp_path / "semantic" / "1.png")
    with pytest.raises(PanopticFormatError, match=r"semantic[/\\]1\.png: semantic PNG must be 8-bit grayscale"):
        PanopticPredictions(tmp_path).load_semantic(1)
    (tmp_path / "semantic" / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1\.png: semantic prediction PNG not found"):
        PanopticPredictions(tmp_path).load_semantic(1)
    data = json.loads((tmp_path / "instances.json").read_text())
    data[0]["image_id"] = 99
    (tmp_path / "instances.json").write_text(json.dumps(data))
    with pytest.raises(PanopticFormatError, match=r"instances for image_id\(s\) \[99\]"):
        PanopticPredictions(tmp_path)


def test_ids_beyond_24_bits_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fit an RGB PNG"):
        write_panoptic_predictions([_result(1, big_id=2**24)], tmp_path, CATEGORIES)
