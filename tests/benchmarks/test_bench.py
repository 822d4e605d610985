"""pfcn-bench on the small config: PyTorch (eager, stages, the fast path), ONNX (end to end and network graphs) and
official rows in one short run; the JSON validates; --compare exits 0 within the threshold and 1 past it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from pfcn.benchmarks import report
from pfcn.benchmarks.cli import main
from pfcn.benchmarks.rows import profile_by_stage
from pfcn.checkpoint import save_checkpoint
from pfcn.config import cfg_to_yaml, load_config
from pfcn.model import build_model
from pfcn.predictor import default_meta

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

SIZE = (64, 96)  # resized to 85x128 by the small config (max side 128): network canvas 96x128
NET = (96, 128)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from pfcn.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("bench")
    cfg = load_config(CONFIGS / "PanopticFCN-Small.yaml", ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    meta = default_meta(cfg)
    ckpt = save_checkpoint(out / "small.pth", model, meta, cfg_to_yaml(cfg))
    e2e = export_onnx(model, cfg, meta, out / "small.onnx", input_size=SIZE)
    net = export_onnx(model, cfg, meta, out / "small_network.onnx", graph="network", input_size=NET)
    return out, ckpt, e2e, net


@pytest.fixture(scope="module")
def result(artifacts):
    out, ckpt, e2e, net = artifacts
    code = main(["--model", str(ckpt), str(e2e), str(net), "--sizes", f"{SIZE[0]}x{SIZE[1]}", "--warmup", "1",
                 "--iters", "2", "--threads", "2", "--out", str(out / "results"), "--name", "run", "--profile",
                 "--fast", "fp32", "bf16+panoptic", "--no-progress"])
    assert code == 0
    return out / "results"


def test_bench_rows_and_json(result):
    doc = json.loads((result / "run.json").read_text())
    assert report.validate(doc) == []
    kinds = [r["kind"] for r in doc["rows"]]
    assert kinds == ["official", "pytorch", "pytorch-stages", "pytorch-fast", "pytorch-fast", "onnxruntime",
                     "onnxruntime-network"]
    fast = [r for r in doc["rows"] if r["kind"] == "pytorch-fast"]
    assert [(r["label"], r["precision"]) for r in fast] == [
        ("pytorch fast fp32 e2e (static buffers)", "fp32"),
        ("pytorch fast bf16 e2e (static buffers, panoptic outputs)", "bf16")]
    assert all(r["vs_official"] > 0 and r["artifact"] == "small.pth" for r in fast)
    rows = {r["kind"]: r for r in doc["rows"]}
    assert rows["official"]["vs_official"] == pytest.approx(1.0)
    assert set(rows["pytorch-stages"]["stages_s"]) == {"host_copies", "preprocess", "network", "postprocess", "merge"}
    assert set(rows["official"]["stages_s"]) >= {"preprocess", "network", "postprocess", "merge"}
    # the end-to-end ONNX row is split by the network graph of the same model
    ort = rows["onnxruntime"]
    assert set(ort["stages_s"]) == {"network", "non_network"}
    assert ort["stages_s"]["network"] == rows["onnxruntime-network"]["latency_s"]["p50"]
    assert set(ort["profile"]["stages_s"]) >= {"network", "merge", "postprocess", "preprocess"}
    for r in doc["rows"]:
        assert r["net_size"] == list(NET) and r["flops"] > 0 and 0 < r["floor_pct"]
        assert r["latency_s"]["n"] == 2
    assert doc["floor"]["peak_flops"] > 1e8
    assert doc["environment"]["libraries"]["onnxruntime"]
    assert (result / "run.md").read_text().startswith("# pfcn-bench")
    assert (result / "run.png").read_bytes()[:4] == b"\x89PNG"


def test_validate_rejects_broken_documents(result):
    doc = json.loads((result / "run.json").read_text())
    bad = copy.deepcopy(doc)
    bad["schema"] = "pfcn-bench/0"
    bad["rows"][0]["latency_s"]["p50"] = -1.0
    del bad["rows"][1]["fps"]
    errors = report.validate(bad)
    assert any("schema" in e for e in errors) and any("rows[0].latency_s" in e for e in errors)
    assert any("rows[1].fps" in e for e in errors)


def test_compare_exit_codes(result, tmp_path, capsys):
    new = result / "run.json"
    assert main(["--compare", str(new), "--against", str(new)]) == 0
    faster = json.loads(new.read_text())
    for r in faster["rows"]:  # an "old" run twice as fast: the new one regressed by 100 %
        r["latency_s"] = {k: (v / 2 if k != "n" else v) for k, v in r["latency_s"].items()}
    old = tmp_path / "old.json"
    old.write_text(json.dumps(faster))
    assert main(["--compare", str(old), "--against", str(new)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main(["--compare", str(old), "--against", str(new), "--max-regression", "1.5"]) == 0
    assert main(["--compare", str(tmp_path / "missing.json"), "--against", str(new)]) == 2


def test_flop_count_includes_deformable_convs():
    from pfcn.benchmarks.floor import count_network

    cfg = load_config(CONFIGS / "PanopticFCN-R50-1x.yaml", ["MODEL.DEVICE", "cpu"])
    counts = count_network(build_model(cfg), (800, 1344))
    assert counts["deform_conv"] == "counted"
    assert 600e9 < counts["flops"] < 750e9  # 674.6 GFLOP: ResNet-50-FPN + heads at 800x1344
    assert counts["bytes"] > 1e9


def test_profile_parser_splits_by_scope(tmp_path):
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        {"cat": "Node", "name": "/model/Cast_kernel_time", "ts": 1, "dur": 5, "args": {"op_name": "Cast"}},
        {"cat": "Node", "name": "/model/backbone/conv/Conv_kernel_time", "ts": 10, "dur": 50,
         "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "/model/MatMul_kernel_time", "ts": 70, "dur": 20, "args": {"op_name": "MatMul"}},
        {"cat": "Node", "name": "_inlfunc_PanopticMerge_And_kernel_time", "ts": 95, "dur": 4,
         "args": {"op_name": "And"}},
    ]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(events))
    stages = profile_by_stage(path)["stages_s"]
    assert stages == pytest.approx({"preprocess": 5e-6, "network": 50e-6, "postprocess": 20e-6, "merge": 4e-6})


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["--model", str(tmp_path / "nothing.onnx")]) == 2
    assert main(["--model", str(tmp_path / "x.txt")]) == 2
    assert main(["--sizes", "big"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error:") == 3


def test_fast_specs_are_checked(artifacts, capsys):
    from pfcn.benchmarks.cli import parse_fast

    assert parse_fast("FP16+panoptic+compile") == {"precision": "fp16", "outputs": "panoptic", "compile": True,
                                                   "compile_mode": "default"}
    assert parse_fast("fp32+eager") == {"precision": "fp32", "cuda_graphs": False}
    assert parse_fast("fp16+interpolate") == {"precision": "fp16", "resize": "interpolate"}
    out, ckpt, e2e, _ = artifacts
    assert main(["--model", str(ckpt), "--fast", "fp8", "--out", str(out / "bad")]) == 2
    assert main(["--model", str(ckpt), "--fast", "fp16+turbo", "--out", str(out / "bad")]) == 2
    assert main(["--model", str(e2e), "--fast", "fp32", "--out", str(out / "bad")]) == 2
    err = capsys.readouterr().err
    assert "'fp8'" in err and "'turbo'" in err and "pass a .pth with --model" in err and "Traceback" not in err
