"""pfcn-calibrate end to end on the small model: sensitivity per block, auto-exclusion, gate, reports, errors."""

from __future__ import annotations

import json

import onnx
import pytest

from pfcn.calibration.sensitivity import analyse
from pfcn.tools.calibrate import main

from .conftest import CHECKPOINT


def test_sensitivity_auto_exclude(fp32_graph, calib_images, held_out, reference, cache_dir, tmp_path):
    from pfcn.calibration.data import ImageSet

    _, pq = reference
    # a few validation images keep this quick; a budget of 0 forces exclusions to be tried in order
    few = ImageSet(held_out.source, held_out.names[:8], held_out.images[:8], held_out.image_ids[:8], held_out.gt)
    from pfcn.calibration.gates import panoptic_results, pq_of
    from pfcn.runtime import open_model

    ref = open_model(CHECKPOINT)
    pq_few = pq_of(panoptic_results(ref, few), few, ref)["PQ_All"]
    rep = analyse(fp32_graph, calib_images, few, pq_few, "tensorrt", budget=0.0, auto_exclude=True,
                  cache_dir=cache_dir)
    assert {"backbone.stem", "backbone.res5", "fpn", "kernel_head"} <= set(rep.delta_pq)
    assert sum(len(v) for v in rep.groups.values()) == 85
    worst_first = sorted(rep.delta_pq, key=rep.delta_pq.get)
    assert rep.kept_float == worst_first[: len(rep.kept_float)]
    assert rep.steps[0]["kept_float"] == [] and rep.final_delta_pq == rep.steps[-1]["delta_pq"]
    json_path, md_path = rep.write(tmp_path)
    assert json.loads(json_path.read_text())["delta_pq"] == rep.delta_pq
    assert "| group |" in md_path.read_text()


def test_cli_int8_with_gate(fp32_graph, calib_images, held_out, cache_dir, tmp_path, capsys):
    out = tmp_path / "int8.onnx"
    rc = main(["--onnx", str(fp32_graph), "--out", str(out), "--images", calib_images.source, "--cache-dir",
               str(cache_dir), "--val-dataset", held_out.source, "--reference", str(CHECKPOINT),
               "--report", str(tmp_path / "rep")])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "cache reused" in text and "PASS" in text
    gate = json.loads((tmp_path / "rep" / "gate.json").read_text())
    assert gate["ok"] and abs(gate["delta_pq"]) <= 1.0
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out)).graph.node)


def test_cli_fp16_and_errors(fp32_graph, tmp_path, capsys):
    assert main(["--onnx", str(fp32_graph), "--out", str(tmp_path / "h.onnx"), "--precision", "fp16"]) == 0
    (tmp_path / "empty").mkdir()
    assert main(["--onnx", str(fp32_graph), "--out", str(tmp_path / "q.onnx"), "--images",
                 str(tmp_path / "empty")]) == 2
    assert main(["--onnx", str(tmp_path / "h.onnx"), "--out", str(tmp_path / "q.onnx"), "--images",
                 str(tmp_path / "empty")]) == 2
    assert main(["--onnx", str(fp32_graph), "--out", str(tmp_path / "q.onnx")]) == 2
    err = capsys.readouterr().err
    assert "no calibration images" in err and "calibration images: --images" in err
    assert not (tmp_path / "q.onnx").exists()
