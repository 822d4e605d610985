"""pfcn-predict end to end, in-process: odd and broken images, outputs on disk, exit codes and clear errors."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfcn.checkpoint import save_checkpoint
from pfcn.config import cfg_to_yaml
from pfcn.metadata import CategoryMeta
from pfcn.tools.predict import main

from ..pfcn.parity import R50_CONFIG, SAMPLE, SMALL_CONFIG, calibrated_model

META = CategoryMeta.from_categories([
    {"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
    {"id": 18, "name": "dog", "isthing": 1},  # 3 thing classes, as in configs/PanopticFCN-Small.yaml
    {"id": 149, "name": "road", "isthing": 0}, {"id": 184, "name": "tree", "isthing": 0},
    {"id": 187, "name": "sky", "isthing": 0},
])
GOOD = {"photo_a": (96, 144), "photo_b": (90, 160), "gray": (100, 130), "rgba": (80, 120), "deep": (70, 110),
        "rotated": (120, 80)}  # stem -> upright (h, w)


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def photo(index: int, h: int, w: int) -> np.ndarray:
    paths = sorted((SAMPLE / "input_images").glob("*.jpg"))
    with Image.open(paths[index]) as img:
        return np.asarray(img.convert("RGB").resize((w, h), Image.BILINEAR))


def gray_of(rgb: np.ndarray) -> np.ndarray:
    return np.round(rgb.astype(np.float64).mean(axis=2)).astype(np.uint8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A folder of odd images (one broken) and a calibrated small checkpoint with its own categories."""
    root = tmp_path_factory.mktemp("predict")
    images = root / "images"
    images.mkdir()
    a, b = photo(0, *GOOD["photo_a"]), photo(1, *GOOD["photo_b"])
    Image.fromarray(a).save(images / "photo_a.jpg", quality=95)
    Image.fromarray(b).save(images / "photo_b.jpg", quality=95)
    Image.fromarray(gray_of(photo(0, *GOOD["gray"]))).save(images / "gray.png")
    rgba = np.dstack([photo(1, *GOOD["rgba"]), np.full(GOOD["rgba"], 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(images / "rgba.png")
    deep = gray_of(photo(0, *GOOD["deep"])).astype(np.uint16) * 257  # 8-bit v -> 16-bit 257 v: exactly v again
    Image.fromarray(deep).save(images / "deep.png")
    upright = photo(1, *GOOD["rotated"])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left; a viewer turns it right
    # Lossless (PNG with an eXIf chunk), so that the prediction can be compared exactly with the upright picture's.
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(images / "rotated.png", exif=exif.tobytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg" * 20)
    (images / "readme.txt").write_text("not an image: skipped by suffix")

    model, cfg = calibrated_model(SMALL_CONFIG, 0, [a, b])
    weights = root / "small.pth"
    save_checkpoint(weights, model, meta=META, cfg_yaml=cfg_to_yaml(cfg))
    return {"root": root, "images": images, "weights": weights}


@pytest.fixture(scope="module")
def folder_run(setup):
    out = setup["root"] / "out"
    code, stdout, stderr = run([setup["images"], "--config", SMALL_CONFIG, "--weights", setup["weights"],
                                "--out", out])
    return code, stdout, stderr, out


def test_broken_image_is_reported_and_exit_code_is_1(folder_run):
    code, stdout, stderr, _ = folder_run
    assert code == 1
    assert "1 image(s) failed" in stderr
    failed = [line for line in stderr.splitlines() if "broken.jpg" in line]
    assert len(failed) == 1 and "cannot decode" in failed[0]
    assert failed[0].count("broken.jpg") == 1, "the failed path is printed twice"
    assert "6 image(s)" in stdout
    for stem in GOOD:
        assert f"{stem}." not in stderr.replace("broken.jpg", "")  # only the broken file is listed


def test_every_readable_image_has_all_outputs(folder_run):
    _, _, _, out = folder_run
    names = {m["id"]: m["name"] for m in META.categories()}
    for stem, (h, w) in GOOD.items():
        for sub in ("panoptic", "overlays"):
            with Image.open(out / sub / f"{stem}.png") as img:
                assert img.size == (w, h), f"{sub}/{stem}.png has size {img.size}, image is {w}x{h} upright"
                assert img.mode == "RGB"
        summary = json.loads((out / "json" / f"{stem}.json").read_text())
        assert (summary["height"], summary["width"]) == (h, w)
        assert summary["file_name"].startswith(stem)
        for seg in summary["segments_info"]:
            assert seg["name"] == names[seg["category_id"]]  # names from the checkpoint's categories
        with Image.open(out / "panoptic" / f"{stem}.png") as img:
            rgb = np.asarray(img).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in summary["segments_info"]}
    assert not (out / "panoptic" / "broken.png").exists() and not (out / "json" / "broken.json").exists()


def test_panoptic_json_lists_readable_images(folder_run):
    _, _, _, out = folder_run
    data = json.loads((out / "panoptic.json").read_text())
    assert sorted(a["file_name"] for a in data["annotations"]) == sorted(f"{s}.png" for s in GOOD)
    # COCO image ids: integers, 1, 2, ... in the order of the file names (broken.jpg, first, keeps its id unused).
    by_name = {a["file_name"]: a["image_id"] for a in data["annotations"]}
    assert [by_name[f"{stem}.png"] for stem in sorted(GOOD)] == list(range(2, 2 + len(GOOD)))
    assert [c["id"] for c in data["categories"]] == [1, 3, 18, 149, 184, 187]
    assert any(a["segments_info"] for a in data["annotations"]), "the calibrated model predicted nothing"


def test_rotated_image_is_predicted_upright(setup, folder_run, tmp_path):
    """The EXIF-rotated picture gets exactly the prediction of the same picture stored upright."""
    upright = tmp_path / "upright"
    upright.mkdir()
    Image.fromarray(photo(1, *GOOD["rotated"])).save(upright / "rotated.png")
    code, _, stderr = run([upright, "--config", SMALL_CONFIG, "--weights", setup["weights"], "--out", tmp_path / "o"])
    assert code == 0, stderr
    for sub in ("panoptic", "overlays"):
        with Image.open(folder_run[3] / sub / "rotated.png") as a, \
                Image.open(tmp_path / "o" / sub / "rotated.png") as b:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=sub)


def test_odd_formats_predict_like_their_8bit_rgb_equivalents(setup, folder_run, tmp_path):
    """Grayscale, RGBA and 16-bit files give exactly the predictions of the RGB pictures they stand for."""
    plain = tmp_path / "plain"
    plain.mkdir()
    gray = gray_of(photo(0, *GOOD["gray"]))
    Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2)).save(plain / "gray.png")
    Image.fromarray(photo(1, *GOOD["rgba"])).save(plain / "rgba.png")
    deep = gray_of(photo(0, *GOOD["deep"]))
    Image.fromarray(np.repeat(deep[:, :, None], 3, axis=2)).save(plain / "deep.png")
    code, _, stderr = run([plain, "--config", SMALL_CONFIG, "--weights", setup["weights"], "--out", tmp_path / "o",
                           "--no-overlay"])
    assert code == 0, stderr
    for stem in ("gray", "rgba", "deep"):
        with Image.open(folder_run[3] / "panoptic" / f"{stem}.png") as a, \
                Image.open(tmp_path / "o" / "panoptic" / f"{stem}.png") as b:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=stem)
        assert json.loads((folder_run[3] / "json" / f"{stem}.json").read_text())["segments_info"] == \
            json.loads((tmp_path / "o" / "json" / f"{stem}.json").read_text())["segments_info"]
    assert not (tmp_path / "o" / "overlays").exists() or not any((tmp_path / "o" / "overlays").iterdir())


def test_same_stem_twice_is_a_reported_failure_not_an_abort(setup, tmp_path):
    """x.jpg and x.png would write the same outputs: the second is reported, the other images are still done, and
    a file named both through its folder and by itself is predicted once."""
    folder = tmp_path / "dups"
    folder.mkdir()
    Image.fromarray(photo(0, 64, 96)).save(folder / "x.jpg")
    Image.fromarray(photo(1, 64, 96)).save(folder / "x.png")
    Image.fromarray(photo(1, 72, 96)).save(folder / "y.png")
    out = tmp_path / "o"
    code, stdout, stderr = run([folder, folder / "y.png", "--config", SMALL_CONFIG, "--weights", setup["weights"],
                                "--out", out, "--no-overlay"])
    assert code == 1
    assert "1 image(s) failed" in stderr and "x.png" in stderr and "rename" in stderr
    assert "2 image(s)" in stdout
    data = json.loads((out / "panoptic.json").read_text())
    assert sorted(a["file_name"] for a in data["annotations"]) == ["x.png", "y.png"]  # x.png <- x.jpg's PNG
    assert json.loads((out / "json" / "x.json").read_text())["file_name"] == "x.jpg"


# ----------------------------------------------------------------------------------------------- overrides
@pytest.mark.parametrize("order", ["overrides_after_flags", "overrides_after_images"])
def test_key_value_overrides_after_the_images_are_applied(setup, folder_run, order):
    image = setup["images"] / "photo_a.jpg"
    out = setup["root"] / f"override_{order}"
    flags = ["--config", SMALL_CONFIG, "--weights", setup["weights"], "--out", out]
    overrides = ["MODEL.POSITION_HEAD.THING.THRES", "0.9999", "MODEL.POSITION_HEAD.STUFF.THRES", "0.9999"]
    argv = [image, *flags, *overrides] if order == "overrides_after_flags" else [*flags, image, *overrides]
    code, _, stderr = run(argv)
    assert code == 0, stderr
    summary = json.loads((out / "json" / "photo_a.json").read_text())
    assert summary["segments_info"] == [] and summary["instances"] == []
    default = json.loads((folder_run[3] / "json" / "photo_a.json").read_text())
    assert default["segments_info"], "without the overrides the same image has segments"


def test_unknown_override_key_exits_2_naming_it(setup, tmp_path):
    code, _, stderr = run([setup["images"] / "photo_a.jpg", "--config", SMALL_CONFIG, "--weights", setup["weights"],
                           "--out", tmp_path, "MODEL.POSITION_HEAD.THING.NOT_A_KEY", "1"])
    assert code == 2
    assert "MODEL.POSITION_HEAD.THING.NOT_A_KEY" in stderr


# ----------------------------------------------------------------------------------------------- user errors
def test_missing_config_exits_2_naming_it(setup, tmp_path):
    missing = tmp_path / "no_such_config.yaml"
    code, _, stderr = run([setup["images"] / "photo_a.jpg", "--config", missing, "--out", tmp_path / "o"])
    assert code == 2
    assert str(missing) in stderr


def test_checkpoint_for_another_config_exits_2(setup, tmp_path):
    code, _, stderr = run([setup["images"] / "photo_a.jpg", "--config", R50_CONFIG, "--weights", setup["weights"],
                           "--out", tmp_path / "o"])
    assert code == 2
    assert "missing keys" in stderr and str(setup["weights"]) in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "o").exists(), "nothing is written when the model cannot be loaded"


def test_missing_weights_file_exits_2(setup, tmp_path):
    missing = tmp_path / "absent.pth"
    code, _, stderr = run([setup["images"] / "photo_a.jpg", "--config", SMALL_CONFIG, "--weights", missing,
                           "--out", tmp_path / "o"])
    assert code == 2
    assert str(missing) in stderr


def test_corrupt_weights_file_exits_2(setup, tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"hello, I am a text file\n")  # torch.load fails on it with a KeyError
    code, _, stderr = run([setup["images"] / "photo_a.jpg", "--config", SMALL_CONFIG, "--weights", corrupt,
                           "--out", tmp_path / "o"])
    assert code == 2
    assert str(corrupt) in stderr and "Traceback" not in stderr


def test_missing_image_path_exits_2(setup, tmp_path):
    missing = tmp_path / "nothing_here.jpg"
    code, _, stderr = run([missing, "--config", SMALL_CONFIG, "--weights", setup["weights"], "--out", tmp_path / "o"])
    assert code == 2
    assert str(missing) in stderr


def test_folder_without_images_exits_2(setup, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, stderr = run([empty, "--config", SMALL_CONFIG, "--weights", setup["weights"], "--out", tmp_path / "o"])
    assert code == 2
    assert "no images" in stderr


# ------------------------------------------------------------------ the shared CLI vocabulary (pfcn/arguments.py)
def test_no_weights_is_refused_unless_asked(setup, tmp_path):
    image = setup["images"] / "photo_a.jpg"
    code, _, stderr = run([image, "--config", SMALL_CONFIG, "--out", tmp_path / "o"])
    assert code == 2 and "no model given" in stderr and "--random-weights" in stderr
    assert not (tmp_path / "o").exists()
    code, _, stderr = run([image, "--config", SMALL_CONFIG, "--random-weights", "--out", tmp_path / "r"])
    assert code == 0 and "random weights" in stderr
    assert json.loads((tmp_path / "r" / "model.json").read_text())["random_weights"] is True


def test_model_weights_override_is_honoured(setup, tmp_path):
    """The detectron2 habit: MODEL.WEIGHTS path.pth after the flags is the model, exactly as --weights."""
    image = setup["images"] / "photo_a.jpg"
    code, _, _ = run([image, "--config", SMALL_CONFIG, "--out", tmp_path / "a", "MODEL.WEIGHTS", setup["weights"]])
    assert code == 0
    code, _, _ = run([image, "--model", setup["weights"], "--out", tmp_path / "b"])  # config stored in the checkpoint
    assert code == 0
    a, b = (json.loads((tmp_path / d / "json" / "photo_a.json").read_text()) for d in "ab")
    assert a["segments_info"] == b["segments_info"]
    assert json.loads((tmp_path / "a" / "model.json").read_text())["model"] == str(setup["weights"])


@pytest.mark.parametrize("flags, message", [
    (["--device", "gpu"], "--device 'gpu': use cpu, cuda or cuda:N"),
    (["MODEL.POSITION_HEAD.THING.THRES"], "MODEL.POSITION_HEAD.THING.THRES has no value (got: "
                                          "MODEL.POSITION_HEAD.THING.THRES)"),
])
def test_flag_errors_are_one_line(setup, tmp_path, flags, message):
    try:
        code, _, stderr = run([setup["images"] / "photo_a.jpg", "--weights", setup["weights"], "--out",
                               tmp_path / "o", *flags])
    except SystemExit as e:  # argparse's own usage errors
        code, stderr = e.code, ""
    assert code == 2
    if stderr:
        assert message in stderr and "Traceback" not in stderr


def test_override_without_value_names_only_the_users_tokens(setup, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(setup["images"] / "photo_a.jpg"), "--weights", str(setup["weights"]), "--device", "cpu",
              "MODEL.POSITION_HEAD.THING.THRES"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "MODEL.POSITION_HEAD.THING.THRES has no value" in err and "MODEL.DEVICE" not in err


def test_filesystem_errors_are_one_line(setup, tmp_path):
    image = setup["images"] / "photo_a.jpg"
    occupied = tmp_path / "a_file"
    occupied.write_text("x")
    code, _, stderr = run([image, "--weights", setup["weights"], "--out", occupied])
    assert code == 2 and str(occupied) in stderr and "not a folder" in stderr and "Traceback" not in stderr
    code, _, stderr = run([image, "--weights", setup["weights"], "--out", "/dev/null/out"])
    assert code == 2 and "/dev/null" in stderr and len(stderr.strip().splitlines()) == 1


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "(default: predictions)" in out and "(default: cpu)" in out and "--random-weights" in out

# ----------------------------------------------------------------------------------------------- other scorers
def _sample_gt() -> tuple[Path, Path]:
    if not (SAMPLE / "panoptic_examples.json").is_file():
        pytest.skip(f"the COCO panoptic sample is not at {SAMPLE} (../shared/data/coco_panoptic_sample)")
    return SAMPLE / "panoptic_examples.json", SAMPLE / "panoptic_examples"


@pytest.fixture(scope="module")
def coco_run(setup):
    """pfcn-predict on the two real COCO photos with the ground truth's ids (--gt-json)."""
    gt_json, _ = _sample_gt()
    out = setup["root"] / "coco"
    code, _, stderr = run([SAMPLE / "input_images", "--config", SMALL_CONFIG, "--weights", setup["weights"],
                           "--out", out, "--gt-json", gt_json, "--no-overlay"])
    assert code == 0, stderr
    return out


def test_gt_json_ids_let_panopticapi_and_hotcoco_score_the_output(coco_run):
    """The standard scorers read pfcn-predict's folder as is, and agree with pfcn-eval --predictions."""
    from hotcoco import panoptic as hc_panoptic
    from panopticapi.evaluation import pq_compute

    from pfcn.tools.evaluate import main as eval_main

    gt_json, gt_png = _sample_gt()
    data = json.loads((coco_run / "panoptic.json").read_text())
    assert sorted(a["image_id"] for a in data["annotations"]) == [142238, 439180]
    with contextlib.redirect_stdout(io.StringIO()):
        reference = pq_compute(str(gt_json), str(coco_run / "panoptic.json"), str(gt_png), str(coco_run / "panoptic"))
    hot = hc_panoptic.PanopticEval(str(gt_json), str(coco_run / "panoptic.json"), gt_folder=str(gt_png),
                                   pred_folder=str(coco_run / "panoptic"))
    hot.evaluate()
    assert float(hot.results()["All"]["pq"]) == pytest.approx(reference["All"]["pq"], abs=1e-9)
    assert eval_main(["--predictions", str(coco_run), "--gt-json", str(gt_json), "--gt-png", str(gt_png),
                      "--out", str(coco_run.parent / "coco_eval"), "--no-progress"]) == 0
    ours = json.loads((coco_run.parent / "coco_eval" / "metrics.json").read_text())["panoptic"]["All"]["PQ"]
    assert ours == pytest.approx(100 * reference["All"]["pq"], abs=1e-6)


def test_without_gt_json_ids_are_integers_pfcn_eval_pairs_by_file_name(setup, coco_run, tmp_path):
    gt_json, gt_png = _sample_gt()
    out = tmp_path / "plain"
    code, _, stderr = run([SAMPLE / "input_images", "--config", SMALL_CONFIG, "--weights", setup["weights"],
                           "--out", out, "--no-overlay"])
    assert code == 0, stderr
    data = json.loads((out / "panoptic.json").read_text())
    assert {a["file_name"]: a["image_id"] for a in data["annotations"]} == {"000000142238.png": 1,
                                                                         "000000439180.png": 2}
    instances = json.loads((out / "instances.json").read_text())
    assert all(isinstance(e["image_id"], int) for e in instances)
    from pfcn.tools.evaluate import main as eval_main

    assert eval_main(["--predictions", str(out), "--gt-json", str(gt_json), "--gt-png", str(gt_png),
                      "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    plain = json.loads((tmp_path / "eval" / "metrics.json").read_text())["panoptic"]["All"]["PQ"]
    with_ids = json.loads((coco_run.parent / "coco_eval" / "metrics.json").read_text())["panoptic"]["All"]["PQ"]
    assert plain == with_ids


def test_gt_json_without_the_image_is_a_listed_failure(setup, tmp_path):
    gt_json, _ = _sample_gt()
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(photo(0, 64, 96)).save(folder / "not_in_gt.jpg")
    code, _, stderr = run([folder, "--config", SMALL_CONFIG, "--weights", setup["weights"], "--out", tmp_path / "o",
                           "--gt-json", gt_json, "--no-overlay"])
    assert code == 1
    assert f"not_in_gt.jpg: not an image of {gt_json}" in stderr


def test_quoted_glob_is_expanded_and_an_empty_one_is_an_error(setup, tmp_path):
    code, stdout, stderr = run([str(setup["images"] / "photo_*.jpg"), "--config", SMALL_CONFIG, "--weights",
                                setup["weights"], "--out", tmp_path / "o", "--no-overlay"])
    assert code == 0, stderr
    assert "2 image(s)" in stdout
    code, _, stderr = run([str(setup["images"] / "*.gif"), "--config", SMALL_CONFIG, "--weights", setup["weights"],
                           "--out", tmp_path / "o2"])
    assert code == 2 and "*.gif: the pattern matches no file" in stderr and "Traceback" not in stderr
