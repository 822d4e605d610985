"""pfcn-train end to end: datasets given by paths or folders, the files it writes, pfcn-eval / pfcn-predict on its
checkpoint, an R50 checkpoint that matches the official key list, and the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pfcn.checkpoint import load_checkpoint_file
from pfcn.data import SynthSpec, generate_dataset
from pfcn.tools.evaluate import main as eval_main
from pfcn.tools.predict import main as predict_main
from pfcn.tools.train import main

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "configs" / "PanopticFCN-Small.yaml"
R50 = REPO / "configs" / "PanopticFCN-R50-1x.yaml"
SAMPLE = REPO.parent / "shared" / "data" / "coco_panoptic_sample"
OFFICIAL_KEYS = REPO.parent / "shared" / "reference" / "official-r50-keys.txt"
TINY = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "64", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2",
        "DATALOADER.NUM_WORKERS", "0"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy machine OpenMP threads slow each other down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root / "train", 6, SynthSpec(height=64, width=64), seed=0, progress=False)
    generate_dataset(root / "val", 2, SynthSpec(height=64, width=64), seed=1, progress=False)
    return root


def test_train_by_paths_then_eval_and_predict(synth: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    train = synth / "train"
    code = main(["--config", str(SMALL), "--device", "cpu", "--out", str(out),
                 "--train-images", str(train / "images"), "--train-json", str(train / "panoptic.json"),
                 "--train-png", str(train / "panoptic"), "--test-dataset", str(synth / "val"), "--seed", "3",
                 "--log-period", "1", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2", *TINY])
    printed = capsys.readouterr().out
    assert code == 0
    assert "iter 3/3" in printed and "eta" in printed and "held-out All: PQ" in printed
    assert f"next: pfcn-eval --config {SMALL}" in printed
    for name in ("model_0000001.pth", "model_final.pth", "last_checkpoint", "config.yaml", "metrics.jsonl",
                 "log.txt", "loss_curve.png"):
        assert (out / name).is_file(), name
    assert "iter 3/3" in (out / "log.txt").read_text()
    final = out / "model_final.pth"
    assert load_checkpoint_file(final)["seed"] == 3

    # The checkpoint carries its classes and config: pfcn-eval and pfcn-predict use it as is.
    assert eval_main(["--config", str(SMALL), "--weights", str(final), "--dataset", str(synth / "val"),
                      "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 2
    images = sorted((synth / "val" / "images").glob("*.jpg"))
    assert predict_main([*map(str, images), "--config", str(SMALL), "--weights", str(final),
                         "--out", str(tmp_path / "pred")]) == 0
    assert any((tmp_path / "pred").rglob("*.png"))


def _official_keys() -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in OFFICIAL_KEYS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape = line.split("\t")[:2]
        keys[name] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return keys


def test_r50_checkpoint_matches_the_official_keys_and_serves(tmp_path: Path, capsys) -> None:
    """Two iterations of the official R50 configuration on the two real COCO images (at 128 px), then the
    checkpoint is compared with the official key list and used by pfcn-predict and pfcn-eval."""
    out = tmp_path / "r50"
    data = ["--train-images", str(SAMPLE / "input_images"), "--train-json", str(SAMPLE / "panoptic_examples.json"),
            "--train-png", str(SAMPLE / "panoptic_examples")]
    small_sizes = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192", "INPUT.MIN_SIZE_TEST", "128",
                   "INPUT.MAX_SIZE_TEST", "192"]
    assert main(["--config", str(R50), "--device", "cpu", "--out", str(out), *data, "--no-eval", "--log-period",
                 "1", "--seed", "0", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
                 "DATALOADER.NUM_WORKERS", "0", *small_sizes]) == 0
    final = out / "model_final.pth"
    state = load_checkpoint_file(final)["model"]
    official = _official_keys()
    assert set(state) == set(official)
    assert {k: tuple(v.shape) for k, v in state.items()} == official
    # The official loader reads {"model": state_dict}: a plain torch.load of the file works.
    assert isinstance(torch.load(final, map_location="cpu", weights_only=True)["model"], dict)
    capsys.readouterr()
    assert predict_main([str(SAMPLE / "input_images"), "--config", str(R50), "--weights", str(final),
                         "--out", str(tmp_path / "pred"), *small_sizes[4:]]) == 0
    assert eval_main(["--config", str(R50), "--weights", str(final), "--images", str(SAMPLE / "input_images"),
                      "--gt-json", str(SAMPLE / "panoptic_examples.json"), "--gt-png",
                      str(SAMPLE / "panoptic_examples"), "--out", str(tmp_path / "eval"), "--no-progress",
                      *small_sizes[4:]]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--train-dataset", "no_such_dataset"], "unknown dataset 'no_such_dataset'"),
    (["--train-json", "x.json"], "--train-images and --train-json are both needed"),
    (["--train-dataset", "a", "--train-images", "b"], "either --train-dataset or"),
    (["--num-gpus", "0"], "--num-gpus 0"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--keep", "-1", "--train-dataset", "{synth}"], "--keep -1: must be >= 0"),
    (["--log-period", "0"], "--log-period 0"),
    (["--train-dataset", "{synth}"], "unknown dataset 'synth/val'"),  # the config's DATASETS.TEST
    (["--train-dataset", "{synth}", "--test-dataset", "{missing}"], "unknown dataset"),
])
def test_user_errors(synth: Path, tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    argv = [a.format(synth=synth / "train", missing=tmp_path / "missing") for a in argv]
    code = main(["--config", str(SMALL), "--out", str(tmp_path / "o"), *argv, "SOLVER.MAX_ITER", "1", *TINY])
    assert code == 2
    assert message in capsys.readouterr().err


def test_num_gpus_under_torchrun_is_an_error(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["--config", str(SMALL), "--num-gpus", "2", "--out", str(tmp_path)]) == 2
    assert "under torchrun" in capsys.readouterr().err


def test_help_names_out_and_what_a_dataset_folder_holds() -> None:
    from pfcn.tools.train import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "--out OUTPUT" in text and "--output" not in text  # --output is only a hidden former name
    assert "--overwrite" in text and "images/, panoptic/ and panoptic.json" in text
    assert build_parser().parse_args(["--config", "c", "--output", "x"]).output == "x"


def test_out_that_is_a_file_is_a_one_line_error(synth: Path, tmp_path: Path, capsys) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    code = main(["--config", str(SMALL), "--out", str(taken), "--train-dataset", str(synth / "train"), "--no-eval",
                 "SOLVER.MAX_ITER", "1", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and f"{taken} is a file, not a folder" in err and len(err.strip().splitlines()) == 1
