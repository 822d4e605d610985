"""Shared fixtures: the committed small checkpoint (trained by pfcn-train), its held-out synthetic set, and the FP32,
FP16 and INT8 graphs made from it once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pfcn.calibration.data import load_images
from pfcn.data.synth import SynthSpec, generate_dataset

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "tests" / "data" / "small_synth.pth"
# The held-out split of tests/calibration/make_small_checkpoint.sh (pfcn-synth --num 40 --seed 2).
HELD_OUT = {"num": 40, "seed": 2}
TRAIN_SEED = 1  # calibration images come from the training split's generator (first images only)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("calibration")


@pytest.fixture(scope="session")
def held_out(workdir):
    generate_dataset(workdir / "synth_val", HELD_OUT["num"], SynthSpec(), seed=HELD_OUT["seed"], progress=False)
    return load_images(dataset=str(workdir / "synth_val"), with_gt=True)


@pytest.fixture(scope="session")
def calib_images(workdir):
    generate_dataset(workdir / "synth_calib", 16, SynthSpec(), seed=TRAIN_SEED, progress=False)
    return load_images(str(workdir / "synth_calib" / "images"))


@pytest.fixture(scope="session")
def fp32_graph(workdir) -> Path:
    from pfcn.export.onnx_export import export_onnx
    from pfcn.predictor import Predictor
    from pfcn.runtime.loader import load_model_config

    cfg = load_model_config(CHECKPOINT, None)
    pred = Predictor.from_files(cfg, CHECKPOINT, "cpu")
    return export_onnx(pred.model, cfg, pred.meta, workdir / "fp32.onnx", input_size=(128, 128))


@pytest.fixture(scope="session")
def reference(held_out):
    """PyTorch FP32 results of the checkpoint on the held-out set, and their PQ."""
    from pfcn.calibration.gates import panoptic_results, pq_of
    from pfcn.runtime import open_model

    model = open_model(CHECKPOINT)
    results = panoptic_results(model, held_out)
    return results, pq_of(results, held_out, model)["PQ_All"]


@pytest.fixture(scope="session")
def fp16_graph(fp32_graph, workdir) -> Path:
    from pfcn.export.precision import convert_fp16_file

    return convert_fp16_file(fp32_graph, workdir / "fp16.onnx")


@pytest.fixture(scope="session")
def cache_dir(workdir) -> Path:
    return workdir / "cache"


@pytest.fixture(scope="session")
def int8_graphs(fp32_graph, calib_images, workdir, cache_dir) -> dict:
    from pfcn.calibration.int8 import quantize_int8

    return {t: quantize_int8(fp32_graph, workdir / f"int8_{t}.onnx", calib_images, t, "max", cache_dir=cache_dir)
            for t in ("tensorrt", "cpu")}
