"""PQ must equal panopticapi's pq_compute (the reference) and hotcoco to 1e-9, on random sets, the real COCO sample and
edge cases; malformed inputs must raise errors that name the file and the segment id."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from hotcoco import panoptic as hc_panoptic
from panopticapi.evaluation import pq_compute_single_core
from pfcn.evaluation.panoptic_format import PanopticFormatError, id2rgb, read_panoptic_png
from pfcn.evaluation.panoptic_quality import PQStat, pq_compute_arrays, pq_compute_files
from tests.pfcn.evaluation.panoptic_fixtures import CATEGORIES, random_sets, write_set

SAMPLE = Path(__file__).resolve().parents[4] / "shared" / "data" / "coco_panoptic_sample"
TOL = 1e-9


def panopticapi_results(gt_json: Path, gt_folder: Path, pred_json: Path, pred_folder: Path) -> dict[str, Any]:
    """The reference: panopticapi's single-core worker (pq_compute without its process pool and prints)."""
    gt = json.loads(gt_json.read_text())
    pred = json.loads(pred_json.read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    by_id = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, by_id[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        stat = pq_compute_single_core(0, pairs, str(gt_folder), str(pred_folder), categories)
    out: dict[str, Any] = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        out[name], per_class = stat.pq_average(categories, isthing=isthing)
        if name == "All":
            out["per_class"] = per_class
    out["counts"] = {c: (stat[c].tp, stat[c].fp, stat[c].fn) for c in categories}
    return out


def hotcoco_results(gt_json: Path, gt_folder: Path, pred_json: Path, pred_folder: Path) -> dict[str, Any]:
    """hotcoco's results, with its -1 for a category without segments turned into panopticapi's 0.0."""
    ev = hc_panoptic.PanopticEval(str(gt_json), str(pred_json), gt_folder=str(gt_folder), pred_folder=str(pred_folder))
    ev.evaluate()
    res = ev.results()
    res["counts"] = {int(c): (m["tp"], m["fp"], m["fn"]) for c, m in res["per_class"].items()}
    for metrics in res["per_class"].values():
        if metrics["tp"] + metrics["fp"] + metrics["fn"] == 0:
            assert metrics["pq"] == -1.0
            metrics.update(pq=0.0, sq=0.0, rq=0.0)
    return res


def assert_same(ours: dict[str, Any], ref: dict[str, Any], what: str) -> None:
    for k in ("All", "Things", "Stuff"):
        assert ours[k]["n"] == ref[k]["n"], (what, k)
        for m in ("pq", "sq", "rq"):
            assert abs(ours[k][m] - float(ref[k][m])) <= TOL, (what, k, m, ours[k][m], ref[k][m])
    for cid, metrics in ref["per_class"].items():
        for m in ("pq", "sq", "rq"):
            assert abs(ours["per_class"][int(cid)][m] - float(metrics[m])) <= TOL, (what, cid, m)


def ours_with_counts(gt_json, gt_folder, pred_json, pred_folder) -> tuple[dict[str, Any], PQStat]:
    """pq_compute_files plus the raw counts (through the array API on the same files)."""
    results = pq_compute_files(gt_json, gt_folder, pred_json, pred_folder)
    gt = json.loads(Path(gt_json).read_text())
    pred = {a["image_id"]: a for a in json.loads(Path(pred_json).read_text())["annotations"]}
    pairs = [(read_panoptic_png(Path(gt_folder) / a["file_name"]), a["segments_info"],
              read_panoptic_png(Path(pred_folder) / pred[a["image_id"]]["file_name"]),
              pred[a["image_id"]]["segments_info"]) for a in gt["annotations"]]
    return results, pq_compute_arrays(pairs, gt["categories"])


@pytest.mark.parametrize("seed", range(6))
def test_random_sets_match_panopticapi_and_hotcoco(tmp_path: Path, seed: int) -> None:
    paths = random_sets(tmp_path, seed, num_images=10, crowd_p=0.4 if seed % 2 else 0.15)
    ours, stat = ours_with_counts(*paths)
    ref = panopticapi_results(*paths)
    assert_same(ours, ref, f"panopticapi seed {seed}")
    hot = hotcoco_results(*paths)
    assert_same(ours, hot, f"hotcoco seed {seed}")
    # The same TP/FP/FN per category, and the array API agrees with the file API.
    assert_same(stat.results(), ref, f"arrays seed {seed}")
    for i, cid in enumerate(stat.category_ids):
        assert (stat.tp[i], stat.fp[i], stat.fn[i]) == ref["counts"][int(cid)] == hot["counts"][int(cid)], (seed, cid)


def test_random_sets_exercise_every_rule(tmp_path: Path) -> None:
    """The random sets are only a cross-check if they hit matches, misses, and VOID/crowd-ignored predictions."""
    tp = fp = fn = predicted = crowd = 0
    for seed in range(6):
        paths = random_sets(tmp_path / str(seed), seed, num_images=10, crowd_p=0.4)
        _, stat = ours_with_counts(*paths)
        tp, fp, fn = tp + stat.tp.sum(), fp + stat.fp.sum(), fn + stat.fn.sum()
        pred = json.loads(paths[2].read_text())
        predicted += sum(len(a["segments_info"]) for a in pred["annotations"])
        gt = json.loads(paths[0].read_text())
        crowd += sum(s["iscrowd"] for a in gt["annotations"] for s in a["segments_info"])
    assert tp > 50 and fp > 20 and fn > 20 and crowd > 10
    assert predicted - tp - fp > 5  # unmatched predictions that the VOID/crowd rule did not count as FP


def test_crowd_and_void_rules_by_hand() -> None:
    """10x10 image: crowd region of class 1 (left half), a later crowd segment of class 1, VOID strip, one thing."""
    cats = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 0}]
    gt = np.zeros((10, 10), np.int64)
    gt[:, :5] = 10  # crowd, class 1 (listed first)
    gt[:, 5:7] = 11  # crowd, class 1 (listed last: the one panopticapi uses)
    gt[:, 7:9] = 12  # a class-2 stuff segment
    # column 9: VOID
    gt_segs = [{"id": 10, "category_id": 1, "iscrowd": 1}, {"id": 11, "category_id": 1, "iscrowd": 1},
               {"id": 12, "category_id": 2, "iscrowd": 0}]
    pred = np.zeros((10, 10), np.int64)
    pred[:, 0:4] = 1  # class 1 on the first crowd segment only: not the last crowd one -> FP
    pred[:, 5:7] = 2  # class 1 on the last crowd segment -> ignored
    pred[:, 7:10] = 3  # class 2: IoU with seg 12 = 20 / (30 + 20 - 20 - 10) = 1.0 (VOID column left out) -> TP
    pred_segs = [{"id": 1, "category_id": 1}, {"id": 2, "category_id": 1}, {"id": 3, "category_id": 2}]
    stat = pq_compute_arrays([(gt, gt_segs, pred, pred_segs)], cats)
    assert stat.tp.tolist() == [0, 1] and stat.fp.tolist() == [1, 0] and stat.fn.tolist() == [0, 0]
    assert stat.iou[1] == pytest.approx(1.0)


def test_sample_against_itself_is_100() -> None:
    gt_json, gt_png = SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples"
    res = pq_compute_files(gt_json, gt_png, gt_json, gt_png)
    for k in ("All", "Things", "Stuff"):
        assert res[k]["pq"] == res[k]["sq"] == res[k]["rq"] == 1.0
        assert res[k]["n"] > 0
    assert_same(res, panopticapi_results(gt_json, gt_png, gt_json, gt_png), "sample vs itself")


def test_sample_with_largest_segment_removed_matches_references(tmp_path: Path) -> None:
    gt_json, gt_png = SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples"
    data = json.loads(gt_json.read_text())
    ann, seg = max(((a, s) for a in data["annotations"] for s in a["segments_info"]), key=lambda t: t[1]["area"])
    shutil.copytree(gt_png, tmp_path / "pred")
    ids = read_panoptic_png(gt_png / ann["file_name"])
    ids[ids == seg["id"]] = 0
    Image.fromarray(id2rgb(ids)).save(tmp_path / "pred" / ann["file_name"])
    ann["segments_info"] = [s for s in ann["segments_info"] if s["id"] != seg["id"]]
    (tmp_path / "pred.json").write_text(json.dumps(data))
    paths = (gt_json, gt_png, tmp_path / "pred.json", tmp_path / "pred")
    ours = pq_compute_files(*paths)
    assert ours["All"]["pq"] < 1.0
    assert_same(ours, panopticapi_results(*paths), "largest segment removed")
    assert_same(ours, hotcoco_results(*paths), "largest segment removed (hotcoco)")


def _edge_sets(root: Path) -> tuple[Path, Path, Path, Path]:
    """Image 1: empty prediction; image 2: all-VOID GT; image 3: ordinary. Category 12 never appears."""
    rng = np.random.default_rng(5)
    gt_ids = np.zeros((3, 20, 30), np.int64)
    gt_ids[0, :, :15], gt_ids[0, :, 15:] = 5, 6
    gt_ids[2, :10], gt_ids[2, 10:] = 7, 8
    gt_ids[2, 2:6, 3:9] = 9
    gt_segs = [[{"id": 5, "category_id": 7, "iscrowd": 0, "area": 300}, {"id": 6, "category_id": 1, "iscrowd": 0,
                                                                        "area": 300}],
               [],
               [{"id": 7, "category_id": 8, "iscrowd": 0, "area": 176}, {"id": 8, "category_id": 11, "iscrowd": 0,
                                                                        "area": 300},
                {"id": 9, "category_id": 2, "iscrowd": 0, "area": 24}]]
    pred_ids = np.zeros_like(gt_ids)
    pred_ids[1, 5:15, 5:25] = 40  # a prediction on an all-VOID image: ignored, not an FP
    pred_ids[2] = gt_ids[2]
    pred_ids[2, 2:6, 3:9] = 7  # thing 9 missed and absorbed by stuff 7
    pred_ids[2, 15:, int(rng.integers(5, 20)):] = 41
    pred_segs = [[], [{"id": 40, "category_id": 3}],
                 [{"id": 7, "category_id": 8}, {"id": 8, "category_id": 11}, {"id": 41, "category_id": 3}]]
    gt_json, gt_folder = write_set(root, "gt", [(i + 1, gt_ids[i], gt_segs[i]) for i in range(3)])
    pred_json, pred_folder = write_set(root, "pred", [(i + 1, pred_ids[i], pred_segs[i]) for i in range(3)])
    return gt_json, gt_folder, pred_json, pred_folder


def test_edge_cases_match_references(tmp_path: Path) -> None:
    paths = _edge_sets(tmp_path)
    ours, stat = ours_with_counts(*paths)
    assert_same(ours, panopticapi_results(*paths), "edge cases")
    assert_same(ours, hotcoco_results(*paths), "edge cases (hotcoco)")
    col = stat.column_of()
    assert stat.tp[col[12]] == stat.fp[col[12]] == stat.fn[col[12]] == 0  # never seen: 0.0 and not in n
    assert ours["per_class"][12] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert stat.fp[col[3]] == 1  # the prediction on the all-VOID image was ignored, the other one was not


def test_json_area_is_trusted_as_panopticapi_does(tmp_path: Path) -> None:
    gt_json, gt_folder, pred_json, pred_folder = random_sets(tmp_path, 11, num_images=4)
    data = json.loads(gt_json.read_text())
    for ann in data["annotations"]:
        for s in ann["segments_info"]:
            s["area"] = int(s["area"] * 0.8) + 1
    gt_json.write_text(json.dumps(data))
    paths = (gt_json, gt_folder, pred_json, pred_folder)
    assert_same(pq_compute_files(*paths), panopticapi_results(*paths), "JSON areas")


def test_worker_pool_gives_the_same_result(tmp_path: Path) -> None:
    paths = random_sets(tmp_path, 3, num_images=6)
    assert pq_compute_files(*paths, workers=2) == pq_compute_files(*paths)


def test_empty_and_categoryless_averages() -> None:
    stat = PQStat.for_categories(CATEGORIES)
    res = stat.results()
    assert res["All"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}


# ------------------------------------------------------------------------------------------------ errors
def _single(tmp_path: Path, pred_ids: np.ndarray, pred_segs: list[dict]) -> tuple[Path, Path, Path, Path]:
    gt_ids = np.zeros((8, 8), np.int64)
    gt_ids[:4] = 3
    gt_json, gt_folder = write_set(tmp_path, "gt", [(1, gt_ids, [{"id": 3, "category_id": 7, "iscrowd": 0}])])
    pred_json, pred_folder = write_set(tmp_path, "pred", [(1, pred_ids, pred_segs)])
    return gt_json, gt_folder, pred_json, pred_folder


def test_id_in_png_but_not_in_json(tmp_path: Path) -> None:
    ids = np.zeros((8, 8), np.int64)
    ids[:2], ids[2:4] = 3, 70000
    paths = _single(tmp_path, ids, [{"id": 3, "category_id": 7}])
    with pytest.raises(PanopticFormatError, match=r"pred[/\\]1\.png: segment id\(s\) 70000 are in the PNG but not"):
        pq_compute_files(*paths)


def test_id_in_json_but_not_in_png(tmp_path: Path) -> None:
    ids = np.zeros((8, 8), np.int64)
    ids[:2] = 3
    paths = _single(tmp_path, ids, [{"id": 3, "category_id": 7}, {"id": 99, "category_id": 7}])
    with pytest.raises(PanopticFormatError, match=r"1\.png: segment id\(s\) 99 are in segments_info but not in the PNG"):
        pq_compute_files(*paths)


def test_unknown_category(tmp_path: Path) -> None:
    ids = np.full((8, 8), 3, np.int64)
    paths = _single(tmp_path, ids, [{"id": 3, "category_id": 4242}])
    with pytest.raises(PanopticFormatError, match=r"1\.png: segment id 3 has unknown category_id 4242"):
        pq_compute_files(*paths)


def test_wrong_png_mode(tmp_path: Path) -> None:
    ids = np.full((8, 8), 3, np.int64)
    gt_json, gt_folder, pred_json, pred_folder = _single(tmp_path, ids, [{"id": 3, "category_id": 7}])
    Image.fromarray(np.full((8, 8), 3, np.uint8)).save(pred_folder / "1.png")  # grayscale
    with pytest.raises(PanopticFormatError, match=r"pred[/\\]1\.png: panoptic PNG must be 8-bit RGB.*'L'"):
        pq_compute_files(gt_json, gt_folder, pred_json, pred_folder)


def test_missing_png(tmp_path: Path) -> None:
    ids = np.full((8, 8), 3, np.int64)
    gt_json, gt_folder, pred_json, pred_folder = _single(tmp_path, ids, [{"id": 3, "category_id": 7}])
    (pred_folder / "1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"pred[/\\]1\.png: panoptic PNG not found"):
        pq_compute_files(gt_json, gt_folder, pred_json, pred_folder)


def test_missing_and_extra_predictions(tmp_path: Path) -> None:
    gt_json, gt_folder, pred_json, pred_folder = random_sets(tmp_path, 1, num_images=3)
    data = json.loads(pred_json.read_text())
    data["annotations"] = data["annotations"][:2]
    pred_json.write_text(json.dumps(data))
    with pytest.raises(PanopticFormatError, match=r"no prediction for image_id\(s\) \[3\]"):
        pq_compute_files(gt_json, gt_folder, pred_json, pred_folder)
    data["annotations"].append(dict(data["annotations"][0], image_id=77))
    data["annotations"].append(dict(data["annotations"][0], image_id=3))
    pred_json.write_text(json.dumps(data))
    with pytest.raises(PanopticFormatError, match=r"image_id\(s\) \[77\]"):
        pq_compute_files(gt_json, gt_folder, pred_json, pred_folder)


def test_duplicate_and_void_segment_ids(tmp_path: Path) -> None:
    ids = np.full((8, 8), 3, np.int64)
    paths = _single(tmp_path, ids, [{"id": 3, "category_id": 7}, {"id": 3, "category_id": 7}])
    with pytest.raises(PanopticFormatError, match="segment id 3 appears twice"):
        pq_compute_files(*paths)
    cats = CATEGORIES
    with pytest.raises(PanopticFormatError, match="segment id 0 is not a valid id"):
        pq_compute_arrays([(ids, [{"id": 3, "category_id": 7}], ids, [{"id": 0, "category_id": 7},
                                                                      {"id": 3, "category_id": 7}])], cats)


def test_size_mismatch() -> None:
    a, b = np.full((8, 8), 3), np.full((8, 9), 3)
    with pytest.raises(PanopticFormatError, match=r"prediction #0: size \(8, 9\) differs"):
        pq_compute_arrays([(a, [{"id": 3, "category_id": 7}], b, [{"id": 3, "category_id": 7}])], CATEGORIES)
