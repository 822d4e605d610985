"""The C/C++ runtime (runtime/cpp): built with CMake against the installed torch, run on the two real COCO photos
with an AOTInductor package, compared with ``pfcn-predict`` on the checkpoint the package was exported from.

The build folder ``.cache/cpp-build`` is reused between runs (a cached build only checks timestamps). The default
run uses the small config with the deformable position head, so that the C++ program also loads torchvision's
operator library (what every R50 package needs); the R50 itself is the ``slow`` test. Tools missing (cmake, a
compiler, libjpeg/libpng headers, patchelf) skip with the reason; a build that runs and fails is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfcn.checkpoint import save_checkpoint
from pfcn.config import cfg_to_yaml
from pfcn.evaluation.panoptic_format import read_panoptic_png
from pfcn.metadata import CategoryMeta
from pfcn.runtime.compare import match_panoptic
from pfcn.tools.predict import main as predict_main

from ..pfcn.parity import R50_CONFIG, REPO, SAMPLE, SMALL_CONFIG, calibrated_model, sample_images

BUILD_DIR = REPO / ".cache" / "cpp-build"
# Fits both COCO photos (427x640 and 360x640). A fixed package equals the checkpoint exactly for images whose own
# network canvas is the package's: for the small config (128 px) both photos and this canvas give 128x192.
CANVAS = (480, 640)
DEFORM = ["MODEL.POSITION_HEAD.DEFORM", "True"]


@pytest.fixture(scope="module")
def cpp():
    from pfcn.runtime.cpp_build import CppToolsMissing, build, torchvision_op_library

    try:
        built = build(BUILD_DIR)
        ops = torchvision_op_library(BUILD_DIR)
    except CppToolsMissing as e:
        pytest.skip(f"C++ runtime not buildable here: {e}")
    print(f"C++ build (configure + build, cached in {BUILD_DIR.name}): {built.seconds:.1f} s")
    return built, ops


@pytest.fixture(scope="module")
def photos():
    paths = sorted((SAMPLE / "input_images").glob("*.jpg"))
    if len(paths) < 2:
        pytest.skip("the COCO sample photos are not in ../shared/data/coco_panoptic_sample/input_images")
    return paths


def _package(root: Path, config: Path, overrides: list[str], meta: CategoryMeta,
             canvas: tuple[int, int] = CANVAS) -> tuple[Path, Path]:
    """A calibrated random model saved as a checkpoint and exported as a CPU package at ``canvas``."""
    from pfcn.export.aoti import export_aoti

    model, cfg = calibrated_model(config, 0, sample_images(), overrides)
    ckpt = save_checkpoint(root / "model.pth", model, meta, cfg_to_yaml(cfg))
    start = time.perf_counter()
    pt2 = export_aoti(model, cfg, meta, root / "model.pt2", input_size=canvas)
    print(f"export_aoti {config.stem} at {canvas}: {time.perf_counter() - start:.1f} s")
    return ckpt, pt2


@pytest.fixture(scope="module")
def small(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("cpp_small")
    return _package(root, SMALL_CONFIG, DEFORM, CategoryMeta.generic(3, 4))


def _run(cmd: list, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


def _segments(ann: dict) -> dict[int, tuple[int, bool]]:
    return {s["id"]: (s["category_id"], bool(s["isthing"])) for s in ann["segments_info"]}


def compare_with_pfcn_predict(cpp_out: Path, py_out: Path) -> list[float]:
    """Same segments (categories, isthing, score, area) and >= 99.9 % identical pixels, for each image pfcn-predict
    wrote (the C++ output holds all of them)."""
    cpp_json = json.loads((cpp_out / "panoptic.json").read_text())
    py_json = json.loads((py_out / "panoptic.json").read_text())
    assert cpp_json["categories"] == py_json["categories"]
    cpp_by_id = {a["image_id"]: a for a in cpp_json["annotations"]}
    assert {a["image_id"] for a in py_json["annotations"]} <= set(cpp_by_id)
    agreements = []
    for ref in py_json["annotations"]:
        ann = cpp_by_id[ref["image_id"]]
        assert ann["file_name"] == ref["file_name"]
        pan_c = read_panoptic_png(cpp_out / "panoptic" / ann["file_name"])
        pan_p = read_panoptic_png(py_out / "panoptic" / ref["file_name"])
        assert pan_c.shape == pan_p.shape
        sem_c = np.asarray(Image.open(cpp_out / "semantic" / ann["file_name"]))
        sem_p = np.asarray(Image.open(py_out / "semantic" / ref["file_name"]))
        assert sem_c.shape == sem_p.shape == pan_c.shape
        agree = match_panoptic(pan_c, _segments(ann), pan_p, _segments(ref), sem_c, sem_p)
        assert agree.unmatched_a == agree.unmatched_b == agree.category_mismatch == 0, (ann["image_id"], agree)
        assert agree.pixel_agreement >= 0.999 and agree.semantic_agreement >= 0.999, (ann["image_id"], agree)
        assert agree.matched == len(ref["segments_info"]) > 0
        ref_segs = {s["id"]: s for s in ref["segments_info"]}
        for s in ann["segments_info"]:
            if s["id"] in ref_segs:  # ids agree when the maps do; scores/areas within float rounding
                r = ref_segs[s["id"]]
                assert s["score"] == pytest.approx(r["score"], abs=1e-3)
                assert abs(s["area"] - r["area"]) <= 0.001 * pan_c.size
                assert set(s) == set(r)
        agreements.append(agree.pixel_agreement)
    return agreements


def _predict_cpp(cpp_build, ops: Path, pt2: Path, photos: list[Path], out: Path) -> None:
    start = time.perf_counter()
    proc = _run([cpp_build.predict, *photos, pt2, out, "--op-library", ops])
    assert proc.returncode == 0, proc.stderr
    print(f"pfcn_predict_cpp: {len(photos)} photos in {time.perf_counter() - start:.1f} s "
          "(process start and package load included)")


def _predict_py(model: Path, photos: list[Path], out: Path) -> None:
    assert predict_main([*map(str, photos), "--model", str(model), "--out", str(out), "--no-overlay",
                         "--no-progress"]) == 0


def _predict_both(cpp_build, ops: Path, ckpt: Path, pt2: Path, photos: list[Path], tmp: Path):
    _predict_cpp(cpp_build, ops, pt2, photos, tmp / "cpp")
    _predict_py(ckpt, photos, tmp / "py")
    return compare_with_pfcn_predict(tmp / "cpp", tmp / "py")


def test_cpp_predict_matches_pfcn_predict(cpp, small, photos, tmp_path):
    built, ops = cpp
    ckpt, pt2 = small
    agreements = _predict_both(built, ops, ckpt, pt2, photos, tmp_path)
    assert len(agreements) == 2
    # the readable summaries name the categories, as pfcn-predict's json/<stem>.json do
    summary = json.loads((tmp_path / "cpp" / "json" / f"{photos[0].stem}.json").read_text())
    assert summary["height"] == 427 and summary["width"] == 640
    assert all(s["name"] in ("thing1", "thing2", "thing3", "stuff4", "stuff5", "stuff6")
               for s in summary["segments_info"])


def test_cpp_predict_turns_exif_rotated_photos_upright(cpp, small, photos, tmp_path):
    """Phone photos store their rotation as an EXIF tag. The C++ example turns the pixels upright as pfcn-predict
    does (PIL's ``ImageOps.exif_transpose``), for the 7 orientations that move pixels. The reference is pfcn-predict
    running the same package: a portrait image has another network canvas than the checkpoint's landscape one."""
    built, ops = cpp
    _, pt2 = small
    crop = Image.open(photos[1]).convert("RGB").crop((0, 0, 480, 360))  # upright either way, it fits 480x640
    tagged = []
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        tagged.append(tmp_path / f"orientation{orientation}.jpg")
        crop.save(tagged[-1], quality=95, exif=exif.tobytes())
    _predict_cpp(built, ops, pt2, tagged, tmp_path / "cpp")
    _predict_py(pt2, tagged, tmp_path / "py")
    assert len(compare_with_pfcn_predict(tmp_path / "cpp", tmp_path / "py")) == 7
    for orientation, upright in ((3, (360, 480)), (6, (480, 360)), (8, (480, 360))):
        summary = json.loads((tmp_path / "cpp" / "json" / f"orientation{orientation}.json").read_text())
        assert (summary["height"], summary["width"]) == upright


def test_c_abi_from_plain_c(cpp, small):
    built, ops = cpp
    _, pt2 = small
    proc = _run([built.c_check, pt2, 300, 500, ops])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "input: fixed 1x1..480x640 batch 1" in proc.stdout
    assert "categories: 6" in proc.stdout and "result: 300x500" in proc.stdout
    assert "segment -1: PFCN_ERROR_ARGUMENT" in proc.stdout  # an index out of range is an error, not a crash


@pytest.mark.parametrize("case", ["missing", "truncated", "not_zip", "zip_without_model", "no_op_library",
                                  "too_large", "empty_image"])
def test_c_abi_errors_are_codes_not_aborts(cpp, small, tmp_path, case):
    built, ops = cpp
    _, pt2 = small
    path, h, w, lib = pt2, 100, 100, [ops]
    if case == "missing":
        path = tmp_path / "nothere.pt2"
    elif case == "truncated":
        path = tmp_path / "truncated.pt2"
        path.write_bytes(pt2.read_bytes()[: pt2.stat().st_size // 2])
    elif case == "not_zip":
        path = tmp_path / "text.pt2"
        path.write_text("not a package")
    elif case == "zip_without_model":
        path = tmp_path / "other.pt2"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("other/data.txt", "hello")
    elif case == "no_op_library":
        lib = []
    elif case == "too_large":
        h, w = CANVAS[0] + 1, CANVAS[1]
    elif case == "empty_image":
        h, w = 0, 10
    proc = _run([built.c_check, path, h, w, *lib])
    expected = {"missing": ("PFCN_ERROR_FILE", 2, "no such file"),
                "truncated": ("PFCN_ERROR_ARTIFACT", 3, "not a loadable AOTInductor package"),
                "not_zip": ("PFCN_ERROR_ARTIFACT", 3, "not a loadable AOTInductor package"),
                "zip_without_model": ("PFCN_ERROR_ARTIFACT", 3, "other.pt2"),
                "no_op_library": ("PFCN_ERROR_ARTIFACT", 3, "pfcn_load_op_library"),
                "too_large": ("PFCN_ERROR_IMAGE", 4, "does not fit the graph's fixed input 480x640"),
                "empty_image": ("PFCN_ERROR_IMAGE", 4, "is empty")}[case]
    name, code, text = expected
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert proc.stdout.startswith(name) or f"\n{name}: " in proc.stdout, proc.stdout
    assert text in proc.stdout


def test_cpp_predict_reports_bad_images_and_goes_on(cpp, small, photos, tmp_path):
    built, ops = cpp
    _, pt2 = small
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    text = tmp_path / "notes.png"
    text.write_text("plain text")
    proc = _run([built.predict, bad, photos[1], text, pt2, tmp_path / "out"], env={"PFCN_OP_LIBRARIES": str(ops)})
    assert proc.returncode == 1
    assert f"{bad}: cannot decode JPEG" in proc.stderr and f"{text}: not a JPEG or PNG file" in proc.stderr
    data = json.loads((tmp_path / "out" / "panoptic.json").read_text())
    assert [a["file_name"] for a in data["annotations"]] == [photos[1].stem + ".png"]
    assert all(isinstance(a["image_id"], int) for a in data["annotations"])  # COCO integer ids, as pfcn-predict
    # a model that cannot be opened: exit 2 with the message, no core dump
    proc = _run([built.predict, photos[1], tmp_path / "missing.pt2", tmp_path / "out2"])
    assert proc.returncode == 2 and "PFCN_ERROR_FILE" in proc.stderr and "missing.pt2" in proc.stderr


@pytest.mark.slow
def test_cpp_r50_deformable_matches_pfcn_predict(cpp, photos, tmp_path):
    """The R50 (deformable position head; COCO categories): about 5 minutes on two cores (calibration + compile).

    At 800 px the two photos have different network canvases (800x1216 and 768x1344), so one fixed package is
    exact against the checkpoint only for the photo whose size it was exported at (427x640); on both photos the
    C++ output is compared with pfcn-predict running the same package from Python.
    """
    built, ops = cpp
    ckpt, pt2 = _package(tmp_path, R50_CONFIG, [], CategoryMeta.coco(), canvas=(427, 640))
    _predict_cpp(built, ops, pt2, photos, tmp_path / "cpp")
    _predict_py(pt2, photos, tmp_path / "py_pt2")
    assert len(compare_with_pfcn_predict(tmp_path / "cpp", tmp_path / "py_pt2")) == 2
    exact = [p for p in photos if p.stem == "000000142238"]  # the 427x640 photo
    _predict_py(ckpt, exact, tmp_path / "py_ckpt")
    assert len(compare_with_pfcn_predict(tmp_path / "cpp", tmp_path / "py_ckpt")) == 1
