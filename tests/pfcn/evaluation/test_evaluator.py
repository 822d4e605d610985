"""The evaluator on the real COCO sample: perfect predictions score 100 everywhere, shards merge exactly, and file
scoring equals in-memory scoring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pfcn.evaluation import (PanopticEvaluator, PanopticFormatError, PanopticGroundTruth, evaluate_prediction_files,
                             pq_compute_files, write_panoptic_predictions)
from tests.pfcn.evaluation.panoptic_fixtures import SAMPLE, perfect_results


def _same(x, y) -> bool:
    """Equality that holds NaN equal to NaN (undefined per-class values)."""
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x)
    if isinstance(x, list):
        return isinstance(y, list) and len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    if isinstance(x, float) and math.isnan(x):
        return isinstance(y, float) and math.isnan(y)
    return x == y


@pytest.fixture(scope="module")
def gt() -> PanopticGroundTruth:
    return PanopticGroundTruth(SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples")


def test_perfect_predictions_score_100(gt: PanopticGroundTruth) -> None:
    ev = PanopticEvaluator(gt)
    for r in perfect_results(gt):
        ev.process(r)
    res = ev.evaluate()
    for k in ("All", "Things", "Stuff"):
        assert res["panoptic"][k]["PQ"] == res["panoptic"][k]["SQ"] == res["panoptic"][k]["RQ"] == 100.0
    assert res["instance"]["AP"] == 100.0 and res["instance"]["AP50"] == 100.0
    sem = res["semantic"]
    assert sem["mIoU"] == sem["fwIoU"] == sem["mACC"] == sem["pACC"] == 100.0
    assert res["num_images"] == 2
    assert res["panoptic"]["per_class"][1]["name"] == "person" and res["panoptic"]["per_class"][1]["TP"] > 0


def test_degraded_prediction_matches_pq_compute(gt: PanopticGroundTruth, tmp_path: Path) -> None:
    results = perfect_results(gt)
    r = results[0]
    victim = max(r.segments_info, key=lambda s: s["area"])
    r.panoptic[r.panoptic == victim["id"]] = 0
    r.segments_info = [s for s in r.segments_info if s["id"] != victim["id"]]
    ev = PanopticEvaluator(gt, instance_ap=False, semantic=False)
    for x in results:
        ev.process(x)
    res = ev.evaluate()
    write_panoptic_predictions(results, tmp_path, gt.categories)
    ref = pq_compute_files(gt.json_path, gt.folder, tmp_path / "panoptic.json", None)
    assert res["panoptic"]["All"]["PQ"] == pytest.approx(100 * ref["All"]["pq"], abs=1e-9)
    assert res["panoptic"]["All"]["PQ"] < 100.0


def test_files_equal_memory_and_shards_merge(gt: PanopticGroundTruth, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    results = perfect_results(gt)
    for r in results:  # make every metric imperfect
        r.instance_scores = rng.random(len(r.instance_scores)).astype(np.float32)
        r.instance_masks[:, ::7] = False
        r.semantic[::5] = 1
        r.segments_info = r.segments_info[1:]
        r.panoptic[~np.isin(r.panoptic, [s["id"] for s in r.segments_info])] = 0
    single = PanopticEvaluator(gt)
    for r in results:
        single.process(r)
    a = single.evaluate()
    shard0, shard1 = PanopticEvaluator(gt), PanopticEvaluator(gt)
    shard0.process(results[0])
    shard1.process(results[1])
    shard0.merge(shard1.state())
    b = shard0.evaluate()
    write_panoptic_predictions(results, tmp_path, gt.meta)
    c = evaluate_prediction_files(gt, tmp_path, progress=False)
    for other in (b, c):
        assert _same(other["panoptic"], a["panoptic"]) and _same(other["semantic"], a["semantic"])
        assert _same({k: v for k, v in other["instance"].items() if k != "log"},
                     {k: v for k, v in a["instance"].items() if k != "log"})
    assert 0 < a["panoptic"]["All"]["PQ"] < 100 and 0 < a["instance"]["AP"] < 100 and 0 < a["semantic"]["mIoU"] < 100


def test_plain_coco_predictions_score_pq_only(gt: PanopticGroundTruth) -> None:
    res = evaluate_prediction_files(gt, gt.json_path, progress=False)  # the GT JSON is a valid prediction file
    assert res["panoptic"]["All"]["PQ"] == 100.0
    assert res["instance"] is None and res["semantic"] is None


def test_incomplete_or_repeated_images_are_errors(gt: PanopticGroundTruth) -> None:
    results = perfect_results(gt)
    ev = PanopticEvaluator(gt)
    ev.process(results[0])
    with pytest.raises(ValueError, match=r"no prediction for image_id\(s\) \[439180\]"):
        ev.evaluate()
    with pytest.raises(ValueError, match="evaluated twice"):
        ev.process(results[0])
    with pytest.raises(PanopticFormatError, match="image_id 12345, which .*panoptic_examples.json lacks"):
        ev.process(results[1], image_id=12345)
    other = PanopticEvaluator(gt)
    other.process(results[0])
    with pytest.raises(ValueError, match="evaluated by two shards"):
        ev.merge(other.state())


def test_missing_pieces_are_errors(gt: PanopticGroundTruth) -> None:
    r = perfect_results(gt)[0]
    ev = PanopticEvaluator(gt)
    with pytest.raises(ValueError, match="instance predictions are missing"):
        ev.process_arrays(r.image_id, r.panoptic, r.segments_info, semantic=r.semantic)
    with pytest.raises(PanopticFormatError, match=r"size \(427, 600\) differs from the ground truth"):
        ev.process_arrays(r.image_id, r.panoptic[:, :600], r.segments_info)
    ev = PanopticEvaluator(gt, instance_ap=False)
    with pytest.raises(ValueError, match="semantic map is missing"):
        ev.process_arrays(r.image_id, r.panoptic, r.segments_info)


def test_missing_ground_truth_files(tmp_path: Path) -> None:
    data = json.loads((SAMPLE / "panoptic_examples.json").read_text())
    (tmp_path / "gt.json").write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="ground-truth panoptic PNG folder not found"):
        PanopticGroundTruth(tmp_path / "gt.json")
    (tmp_path / "gt").mkdir()
    gt = PanopticGroundTruth(tmp_path / "gt.json")
    with pytest.raises(FileNotFoundError, match=r"gt[/\\]000000142238\.png: panoptic PNG not found"):
        gt.load(142238)


def test_predictions_match_by_file_name_when_ids_differ(gt: PanopticGroundTruth, tmp_path: Path) -> None:
    """pfcn-predict names images by file stem; such files still pair with the COCO GT's integer ids."""
    results = perfect_results(gt)
    for r in results:
        r.image_id = Path(r.file_name).stem  # "000000142238", as pfcn-predict writes it
    write_panoptic_predictions(results, tmp_path, gt.meta)
    res = evaluate_prediction_files(gt, tmp_path, progress=False)
    assert res["panoptic"]["All"]["PQ"] == 100.0 and res["instance"]["AP"] == 100.0
    data = json.loads((tmp_path / "panoptic.json").read_text())
    data["annotations"][0]["file_name"] = "other.png"
    (tmp_path / "panoptic.json").write_text(json.dumps(data))
    with pytest.raises(PanopticFormatError, match=r"image_id\(s\) \['000000142238'\] match no image"):
        evaluate_prediction_files(gt, tmp_path, progress=False)


def test_png_names_pair_before_ids_that_belong_to_other_images(gt: PanopticGroundTruth, tmp_path: Path) -> None:
    """Sequential ids (pfcn-predict without --gt-json) can be another GT image's id: the PNG name decides."""
    results = perfect_results(gt)
    swapped = list(reversed([r.image_id for r in results]))
    for r, other in zip(results, swapped):
        r.image_id = other  # each prediction carries the other image's id, its PNG keeps its own name
    write_panoptic_predictions(results, tmp_path, gt.meta)
    res = evaluate_prediction_files(gt, tmp_path, progress=False)
    assert res["panoptic"]["All"]["PQ"] == 100.0
