"""pfcn-export and pfcn-parity, end to end on a synthetic COCO-panoptic set with ground truth."""

from __future__ import annotations

import json

import pytest

from pfcn.checkpoint import save_checkpoint
from pfcn.config import cfg_to_yaml
from pfcn.data.synth import SynthSpec, generate_dataset
from pfcn.export.cli import main as export_main
from pfcn.metadata import CategoryMeta
from pfcn.tools.parity import main as parity_main

from ..pfcn.parity import SMALL_CONFIG, calibrated_model, synthetic_image

# the Small config's heads sized for a 3-thing / 3-stuff synthetic set
HEADS = ["MODEL.POSITION_HEAD.THING.NUM_CLASSES", "3", "MODEL.POSITION_HEAD.STUFF.NUM_CLASSES", "4",
         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4", "MODEL.POSITION_HEAD.DEFORM", "True"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    gt_json = generate_dataset(root / "synth", 3, SynthSpec(height=96, width=128, num_things=3, num_stuff=3), seed=4,
                               progress=False)
    meta = CategoryMeta.from_json(gt_json)
    images = [synthetic_image(96, 128, 1)]
    paths = {}
    for seed in (0, 1):  # two different calibrated random models
        model, cfg = calibrated_model(SMALL_CONFIG, seed, images, HEADS)
        paths[seed] = save_checkpoint(root / f"model{seed}.pth", model, meta, cfg_to_yaml(cfg))
    return root, gt_json, paths


def test_export_check_parity_pass(setup, capsys):
    root, gt_json, ckpt = setup
    onnx_path = root / "m0.onnx"
    args = ["--config", str(SMALL_CONFIG), "--weights", str(ckpt[0]), "--out", str(onnx_path),
            "--dynamic", "32", "32", "512", "512"] + HEADS
    assert export_main(args) == 0
    out = capsys.readouterr().out
    assert "no unsupported op" in out and "minimum TensorRT 10.1" in out and "next: pfcn-parity" in out
    assert export_main(["--check", str(onnx_path)]) == 0

    code = parity_main(["--config", str(SMALL_CONFIG), "--weights", str(ckpt[0]), "--onnx", str(onnx_path),
                        "--dataset", str(gt_json.parent), "--out", str(root / "par0")] + HEADS)
    report = json.loads((root / "par0" / "parity.json").read_text())
    assert code == 0, capsys.readouterr().out
    assert report["ok"] and report["images"] == 3
    assert set(report["gates"]) == {"pixel_agreement", "delta_pq"}
    assert report["gates"]["delta_pq"]["value"] <= 0.05
    assert "PQ_All" in report["pq"]["reference"] and "panoptic" in report["tensor_errors"]
    assert (root / "par0" / "parity.md").read_text().startswith("```")
    # only valid slots are compared: a passing comparison shows no mismatch caused by padding slots
    errors = report["tensor_errors"]
    for name in ("segment_classes", "segment_category_ids", "instance_classes", "instance_category_ids"):
        assert errors[name]["mismatch"] <= 0.05, (name, errors[name])
        assert 0 < errors[name]["compared"] < 3 * (100 + 4), (name, errors[name])  # fewer than all slots
    assert "slots both sides mark valid" in (root / "par0" / "parity.md").read_text()


def test_parity_gate_fails_on_a_different_model(setup):
    """A graph exported from other weights must fail the gates (the gates can fail)."""
    root, gt_json, ckpt = setup
    onnx_path = root / "m1.onnx"
    assert export_main(["--config", str(SMALL_CONFIG), "--weights", str(ckpt[1]), "--out", str(onnx_path),
                        "--dynamic", "32", "32", "512", "512", "--no-check"] + HEADS) == 0
    code = parity_main(["--config", str(SMALL_CONFIG), "--weights", str(ckpt[0]), "--onnx", str(onnx_path),
                        "--dataset", str(gt_json.parent), "--out", str(root / "par1")] + HEADS)
    report = json.loads((root / "par1" / "parity.json").read_text())
    assert code == 1 and not report["ok"]
    assert not report["gates"]["pixel_agreement"]["ok"]


def test_export_errors_are_clear(setup, tmp_path, capsys):
    root, _, ckpt = setup
    # a checkpoint that does not match the config
    code = export_main(["--config", str(SMALL_CONFIG), "--weights", str(ckpt[0]), "--out", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "does not match the model" in err and ("wrongly shaped" in err or "missing keys" in err)
    # opset too low for DeformConv
    code = export_main(["--config", str(SMALL_CONFIG), "--weights", str(ckpt[0]), "--out", str(tmp_path / "x.onnx"),
                        "--opset", "17"] + HEADS)
    assert code == 2 and "DeformConv" in capsys.readouterr().err
    # not an ONNX file
    bogus = tmp_path / "bogus.onnx"
    bogus.write_text("hello")
    assert export_main(["--check", str(bogus)]) == 2
    assert "not an ONNX model" in capsys.readouterr().err
    # impossible sizes
    code = export_main(["--config", str(SMALL_CONFIG), "--random-weights", "--out", str(tmp_path / "x.onnx"),
                        "--input-size", "0", "10"] + HEADS)
    assert code == 2 and "--input-size 0 10" in capsys.readouterr().err
    # an output set where it cannot apply
    code = export_main(["--config", str(SMALL_CONFIG), "--random-weights", "--format", "aoti", "--outputs", "panoptic",
                        "--out", str(tmp_path / "x.pt2")] + HEADS)
    assert code == 2 and "--outputs panoptic: output sets are chosen when exporting an e2e ONNX graph" in \
        capsys.readouterr().err


def test_export_refuses_to_run_without_weights(tmp_path, capsys):
    code = export_main(["--config", str(SMALL_CONFIG), "--out", str(tmp_path / "x.onnx")] + HEADS)
    err = capsys.readouterr().err
    assert code == 2 and "no model given" in err and "--random-weights" in err
    assert not (tmp_path / "x.onnx").exists()


def test_parity_compares_two_artifacts_and_names_config_differences(setup, capsys):
    """Any two artifacts: the ONNX graph against another ONNX graph; a different config is named before the gates."""
    root, gt_json, ckpt = setup
    a, b = root / "pa.onnx", root / "pb.onnx"
    for path, extra in ((a, []), (b, ["MODEL.POSITION_HEAD.THING.THRES", "0.3"])):
        assert export_main(["--weights", str(ckpt[0]), "--out", str(path), "--dynamic", "32", "32", "512", "512",
                            "--no-check"] + HEADS + extra) == 0  # config read from the checkpoint
    capsys.readouterr()
    code = parity_main(["--model", str(b), "--reference", str(a), "--dataset", str(gt_json.parent),
                        "--out", str(root / "par2"), "--no-progress"])
    captured = capsys.readouterr()
    assert "different configs" in captured.err and "MODEL.POSITION_HEAD.THING.THRES: 0.05 vs 0.3" in captured.err
    report = json.loads((root / "par2" / "parity.json").read_text())
    assert report["backends"] == ["onnxruntime", "onnxruntime"]
    assert report["config_differences"] and code in (0, 1)


def test_weights_path_and_training_keys_are_not_config_differences():
    """A checkpoint loaded with --weights records MODEL.WEIGHTS in its config, the ONNX graph exported from it does
    not: the same model, so no "different configs" warning (the demo printed one before its gates passed)."""
    from pfcn.contract import ArtifactInfo
    from pfcn.predictor import default_meta
    from pfcn.tools.parity import config_difference

    from pfcn.config import load_config

    meta = default_meta(load_config(SMALL_CONFIG, []))

    def artifact(text: str) -> ArtifactInfo:
        return ArtifactInfo(source="x", props={"config": text, "config_hash": str(hash(text))}, meta=meta,
                            graph="e2e", batch=None, fixed_hw=None, net_size=None, dynamic_range=None,
                            precision="fp32")

    base = "MODEL:\n  WEIGHTS: ''\n  POSITION_HEAD:\n    THING:\n      THRES: 0.05\nSOLVER:\n  BASE_LR: 0.01\n"
    same = base.replace("WEIGHTS: ''", "WEIGHTS: run/model_final.pth").replace("0.01", "0.02")
    other = same.replace("0.05", "0.3")
    assert config_difference(artifact(base), artifact(same)) == []
    assert config_difference(artifact(base), artifact(other)) == [
        "MODEL.POSITION_HEAD.THING.THRES: 0.05 vs 0.3", "MODEL.WEIGHTS: '' vs 'run/model_final.pth'",
        "SOLVER.BASE_LR: 0.01 vs 0.02"]


def test_parity_bad_inputs(setup, tmp_path, capsys):
    root, gt_json, ckpt = setup
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x08\x01garbage")
    code = parity_main(["--model", str(bogus), "--reference", str(ckpt[0]), "--images", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and str(bogus) in err and "Traceback" not in err
    # an unreadable image is listed at the end, the others are still compared, exit code 1
    onnx_path = tmp_path / "m.onnx"
    assert export_main(["--weights", str(ckpt[0]), "--out", str(onnx_path), "--input-size", "96", "128",
                        "--no-check"] + HEADS) == 0
    images = tmp_path / "imgs"
    images.mkdir()
    for src in sorted((gt_json.parent / "images").iterdir())[:2]:
        (images / src.name).write_bytes(src.read_bytes())
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    code = parity_main(["--model", str(onnx_path), "--reference", str(ckpt[0]), "--images", str(images),
                        "--out", str(tmp_path / "o"), "--no-progress"] + HEADS)
    captured = capsys.readouterr()
    report = json.loads((tmp_path / "o" / "parity.json").read_text())
    assert code == 1 and report["images"] == 2 and len(report["failed_images"]) == 1
    assert "broken.jpg" in captured.err


def test_eval_and_predict_take_an_onnx_artifact(setup, tmp_path):
    """pfcn-eval runs any artifact through --model: the ONNX graph scores what the checkpoint scores."""
    from pfcn.tools.evaluate import main as eval_main

    root, gt_json, ckpt = setup
    onnx_path = tmp_path / "m.onnx"
    assert export_main(["--weights", str(ckpt[0]), "--out", str(onnx_path), "--dynamic", "32", "32", "512", "512",
                        "--no-check"] + HEADS) == 0
    pq = {}
    for name, model in (("torch", ckpt[0]), ("onnx", onnx_path)):
        assert eval_main(["--model", str(model), "--dataset", str(gt_json.parent), "--out", str(tmp_path / name),
                          "--no-progress"]) == 0
        pq[name] = json.loads((tmp_path / name / "metrics.json").read_text())["panoptic"]["All"]["PQ"]
    assert abs(pq["torch"] - pq["onnx"]) <= 0.05, pq


def test_export_fp16_graph_and_parity_gate(setup, tmp_path):
    """pfcn-export --precision fp16 writes the FP16 graph; pfcn-parity holds it to the FP16 PQ gate on the data set.

    (Random calibrated weights flip many near-tied pixels under FP16, hence the loose pixel gate; the trained model
    is held to the strict gates in tests/calibration.)"""
    root, gt_json, ckpt = setup
    path = tmp_path / "fp16.onnx"
    assert export_main(["--weights", str(ckpt[0]), "--out", str(path), "--dynamic", "32", "32", "512", "512",
                        "--precision", "fp16"] + HEADS) == 0  # exported, converted, checked
    from pfcn.runtime import open_model

    assert open_model(path).info.precision == "fp16"
    code = parity_main(["--model", str(path), "--reference", str(ckpt[0]), "--dataset", str(gt_json.parent),
                        "--out", str(tmp_path / "par"), "--max-dpq", "0.2", "--min-pixel-agreement", "0.8",
                        "--no-progress"] + HEADS)
    report = json.loads((tmp_path / "par" / "parity.json").read_text())
    assert report["precision"] == "fp16" and "delta_pq" in report["gates"]
    assert code == 0, report["gates"]
