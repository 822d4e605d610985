"""pfcn-eval end to end: scoring prediction files, running the (randomly initialised) model, torchrun shards,
and the errors a user sees."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfcn.evaluation import PanopticGroundTruth, write_panoptic_predictions
from pfcn.evaluation.panoptic_format import id2rgb
from pfcn.metadata import CategoryMeta
from pfcn.tools.evaluate import main
from tests.pfcn.evaluation.panoptic_fixtures import SAMPLE, perfect_results

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "PanopticFCN-R50-1x.yaml"
SMALL = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]


def _close(a, b) -> bool:
    """Nested equality with floats compared to a relative 1e-12."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def _tiny_coco_set(root: Path, n: int) -> list[str]:
    """n random 48x64 photos with a COCO-category panoptic GT (sky, grass, a person); returns the GT flags."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "gt").mkdir()
    anns, images = [], []
    for i in range(n):
        ids = np.zeros((48, 64), np.int64)
        ids[:24], ids[24:], ids[10:30, 10:30] = 5, 6, 7
        Image.fromarray(id2rgb(ids)).save(root / "gt" / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        segs = [{"id": k, "category_id": c, "iscrowd": 0, "area": int((ids == k).sum())}
                for k, c in ((5, 187), (6, 193), (7, 1))]
        anns.append({"image_id": i, "file_name": f"{i}.png", "segments_info": segs})
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 48, "width": 64})
    (root / "gt.json").write_text(json.dumps({"images": images, "annotations": anns,
                                              "categories": CategoryMeta.coco().categories()}))
    return ["--images", str(root / "images"), "--gt-json", str(root / "gt.json"), "--gt-png", str(root / "gt")]


def test_scores_prediction_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = PanopticGroundTruth(SAMPLE / "panoptic_examples.json")
    write_panoptic_predictions(perfect_results(gt), tmp_path / "preds", gt.meta)
    rc = main(["--predictions", str(tmp_path / "preds"), "--gt-json", str(gt.json_path), "--out", str(tmp_path / "o"),
               "--no-progress"])
    assert rc == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["panoptic"]["All"]["PQ"] == 100.0
    assert metrics["instance"]["AP"] == 100.0 and metrics["semantic"]["mIoU"] == 100.0
    assert metrics["num_images"] == 2 and metrics["seconds_per_image"] >= 0
    assert (tmp_path / "o" / "report.md").read_text().startswith("# pfcn evaluation")
    out = capsys.readouterr().out
    assert "All       | 100.00 100.00 100.00" in out and "AP 100.00" in out


@pytest.mark.parametrize("argv, message", [
    (["--predictions", "p"], "the ground truth is missing"),
    (["--dataset", "x", "--gt-json", "j"], "either --dataset or --images"),
    (["--gt-json", "{gt}"], "--images DIR is required to run a model"),
    (["--gt-json", "{gt}", "--images", "{tmp}"], "no model given: pass --model"),
    (["--gt-json", "{gt}", "--predictions", "{gt}", "--config", "c.yaml"], "takes no --config"),
    (["--gt-json", "{gt}", "--predictions", "{tmp}/missing.json"], "missing.json: predicted panoptic JSON not found"),
    (["--gt-json", "{tmp}/nope.json"], "nope.json: ground-truth panoptic JSON not found"),
])
def test_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    gt = str(SAMPLE / "panoptic_examples.json")
    argv = [a.format(gt=gt, tmp=tmp_path) for a in argv] + ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_bad_prediction_file_names_the_culprit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = PanopticGroundTruth(SAMPLE / "panoptic_examples.json")
    write_panoptic_predictions(perfect_results(gt), tmp_path / "preds", gt.meta)
    data = json.loads((tmp_path / "preds" / "panoptic.json").read_text())
    data["annotations"][1]["segments_info"].pop()
    (tmp_path / "preds" / "panoptic.json").write_text(json.dumps(data))
    assert main(["--predictions", str(tmp_path / "preds"), "--gt-json", str(gt.json_path), "--no-progress",
                 "--out", str(tmp_path / "o")]) == 2
    assert "000000439180.png: segment id(s)" in capsys.readouterr().err


def test_runs_the_model_and_rescores_its_files(tmp_path: Path) -> None:
    flags = _tiny_coco_set(tmp_path / "data", 1)
    assert main(["--config", str(CONFIG), "--random-weights", *flags, "--out", str(tmp_path / "run"), "--no-progress",
                 *SMALL]) == 0
    preds = tmp_path / "run" / "predictions"
    assert (preds / "panoptic.json").is_file() and (preds / "panoptic" / "0.png").is_file()
    assert (preds / "semantic" / "0.png").is_file() and (preds / "instances.json").is_file()
    first = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert first["num_images"] == 1 and first["instance"] is not None and first["semantic"] is not None
    assert main(["--predictions", str(preds), "--gt-json", flags[3], "--out", str(tmp_path / "again"),
                 "--no-progress"]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    for key in ("panoptic", "instance", "semantic"):
        assert again[key] == first[key]


def test_image_missing_for_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = _tiny_coco_set(tmp_path / "data", 1)
    (tmp_path / "data" / "images" / "0.jpg").unlink()
    assert main(["--config", str(CONFIG), "--random-weights", *flags, "--out", str(tmp_path / "run"), "--no-progress",
                 *SMALL]) == 2
    assert "0.jpg: no such image file" in capsys.readouterr().err


def _calibrated_weights(path: Path, image_dir: Path) -> Path:
    """A seeded, calibrated random model saved as a checkpoint, so that every process runs the same weights."""
    import torch

    from pfcn.checkpoint import save_checkpoint
    from pfcn.config import load_config
    from pfcn.image_io import read_image
    from pfcn.model import build_model
    from pfcn.random_init import calibrate_random_model

    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, SMALL))
    calibrate_random_model(model, [read_image(p) for p in sorted(image_dir.iterdir())])
    return save_checkpoint(path, model, CategoryMeta.coco())


def test_torchrun_shards_equal_one_process(tmp_path: Path) -> None:
    flags = _tiny_coco_set(tmp_path / "data", 3)
    weights = _calibrated_weights(tmp_path / "model.pth", tmp_path / "data" / "images")
    common = ["--config", str(CONFIG), "--weights", str(weights), *flags, "--no-progress", *SMALL]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "pfcn.tools.evaluate", *common,
                    "--out", str(tmp_path / "ddp")], check=True, env=env, cwd=REPO, timeout=600)
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ddp["num_images"] == 3 and ddp["instance"]["num_predictions"] > 0 and ddp["semantic"]["pACC"] > 0
    for key in ("panoptic", "instance", "semantic"):  # IoU sums may add up in another order: compare to 1e-12
        assert _close(ddp[key], single[key]), key
    names = sorted(a["file_name"] for a in json.loads((tmp_path / "ddp" / "predictions" / "panoptic.json")
                                                      .read_text())["annotations"])
    assert names == ["0.png", "1.png", "2.png"]


def test_dataset_by_folder_name(tmp_path: Path) -> None:
    """--dataset accepts a folder in pfcn-synth's layout (images/, panoptic/, panoptic.json)."""
    _tiny_coco_set(tmp_path / "d", 2)
    (tmp_path / "d" / "gt").rename(tmp_path / "d" / "panoptic")
    (tmp_path / "d" / "gt.json").rename(tmp_path / "d" / "panoptic.json")
    assert main(["--dataset", str(tmp_path / "d"), "--predictions", str(tmp_path / "d" / "panoptic.json"),
                 "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["panoptic"]["All"]["PQ"] == 100.0
