"""INT8 Q/DQ graphs: TensorRT's structural rules, the calibration cache, the ΔPQ gate, and bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from pfcn.calibration.data import CalibrationDataError, ImageSet, load_images
from pfcn.calibration.gates import GATES, compare
from pfcn.calibration.int8 import quantize_int8
from pfcn.contract import ArtifactError
from pfcn.export.check import check_onnx, qdq_problems
from pfcn.export.onnx_export import read_metadata
from pfcn.export.precision import network_scope
from pfcn.runtime import open_model


def test_tensorrt_graph_passes_check(int8_graphs):
    r = int8_graphs["tensorrt"]
    report = check_onnx(r.path)
    assert report.ok, report.to_text()
    m = onnx.load(str(r.path))
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    meta = read_metadata(m)
    assert meta["precision"] == "int8" and json.loads(meta["quantization"])["target"] == "tensorrt"
    # only network Convs are quantized: no Q/DQ reaches pre/post-processing (kernel fusion, mask MatMuls), a
    # DeformConv or the merge
    dq_out = {n.output[0] for n in m.graph.node if n.op_type == "DequantizeLinear"}
    readers = [n for n in m.graph.node if set(n.input) & dq_out]
    assert any(n.op_type == "Conv" for n in readers)
    assert not [n.name for n in readers if network_scope(n.name) is None and not n.name.endswith("QuantizeLinear")
                or n.op_type in ("MatMul", "DeformConv", "PanopticMerge")]
    assert len(m.functions) == 1


def test_cpu_graph_fails_tensorrt_rules(int8_graphs):
    report = check_onnx(int8_graphs["cpu"].path)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "UINT8" in text and "non-zero zero point" in text


def test_edited_zero_point_and_per_tensor_weight_fail(int8_graphs, tmp_path):
    m = onnx.load(str(int8_graphs["tensorrt"].path))
    assert qdq_problems(m) == []
    inits = {i.name: i for i in m.graph.initializer}
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[2] in inits)
    zp = numpy_helper.to_array(inits[q.input[2]]).copy()
    zp[...] = 3
    inits[q.input[2]].CopyFrom(numpy_helper.from_array(zp.astype(np.int8), q.input[2]))
    problems = qdq_problems(m)
    assert any("non-zero zero point" in p for p in problems)
    w_dq = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
                and numpy_helper.to_array(inits[n.input[0]]).ndim == 4)
    for a in w_dq.attribute:
        if a.name == "axis":
            a.i = 1
    assert any("per-channel scales on axis 0" in p for p in qdq_problems(m))
    onnx.save(m, str(tmp_path / "broken.onnx"))
    assert not check_onnx(tmp_path / "broken.onnx").ok


def test_int8_gate_tensorrt(int8_graphs, held_out, reference):
    results, pq = reference
    gate = compare(open_model(int8_graphs["tensorrt"].path), results, held_out, GATES["int8"], reference_pq=pq)
    print("int8 tensorrt gate", gate.as_dict())
    assert gate.ok, gate.as_dict()


def test_cache_reused_only_for_same_model_data_method(int8_graphs, fp32_graph, calib_images, fp16_graph, tmp_path,
                                                      cache_dir):
    first, second = int8_graphs["tensorrt"], int8_graphs["cpu"]
    # the second target reuses the first's ranges (the first may itself reuse a cache an earlier test wrote)
    assert second.cache_hit and first.cache == second.cache
    again = quantize_int8(fp32_graph, tmp_path / "again.onnx", calib_images, "tensorrt", cache_dir=cache_dir)
    assert again.cache_hit
    fewer = ImageSet(calib_images.source, calib_images.names[:4], calib_images.images[:4])
    other_data = quantize_int8(fp32_graph, tmp_path / "d.onnx", fewer, "tensorrt", cache_dir=cache_dir)
    assert not other_data.cache_hit and other_data.cache != first.cache
    other_method = quantize_int8(fp32_graph, tmp_path / "m.onnx", fewer, "tensorrt", "percentile",
                                 cache_dir=cache_dir)
    assert not other_method.cache_hit and other_method.cache != other_data.cache
    # a cache file whose key sidecar names another model is not trusted
    sidecar = first.cache.with_suffix(".key.json")
    key = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**key, "model_sha256": "0" * 64}))
    redo = quantize_int8(fp32_graph, tmp_path / "r.onnx", calib_images, "tensorrt", cache_dir=cache_dir)
    assert not redo.cache_hit and json.loads(sidecar.read_text()) == key


def test_histogram_methods_calibrate_images_of_different_sizes(calib_images, tmp_path):
    """A dynamic-size graph sees each image at its own size. ONNX Runtime's histogram calibrators (entropy,
    percentile) stacked every image's activations at once and failed on mixed shapes ("inhomogeneous shape");
    pfcn collects one image at a time, which also holds one image's activations in memory, not all of them."""
    from pfcn.export.onnx_export import export_onnx
    from pfcn.predictor import Predictor
    from pfcn.runtime.loader import load_model_config

    from .conftest import CHECKPOINT

    cfg = load_model_config(CHECKPOINT, None, ["INPUT.MAX_SIZE_TEST", "256"])  # so that a wide image stays wide
    pred = Predictor.from_files(cfg, CHECKPOINT, "cpu")
    dynamic = export_onnx(pred.model, cfg, pred.meta, tmp_path / "dynamic.onnx", dynamic=(64, 64, 256, 256))
    wide = np.concatenate([calib_images.images[0], calib_images.images[2]], axis=1)
    images = [wide, calib_images.images[1]]
    assert pred.model.network_size(*wide.shape[:2]) != pred.model.network_size(*images[1].shape[:2])
    mixed = ImageSet("mixed sizes", ["cropped", "whole"], images)
    for method in ("percentile", "entropy"):
        result = quantize_int8(dynamic, tmp_path / f"{method}.onnx", mixed, "tensorrt", method,
                               cache_dir=tmp_path / "cache")
        assert not result.cache_hit and len(result.quantized) > 10
        assert len(open_model(result.path).run(*_canvas(result.path, images[1]))["panoptic"]) == 1


def _canvas(path, image):
    from pfcn.runtime.backend import canvas_for

    return canvas_for(open_model(path), [image], ["image"])


def test_bad_calibration_input(tmp_path, fp32_graph, int8_graphs, fp16_graph, calib_images):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationDataError, match="no calibration images"):
        load_images(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CalibrationDataError, match="broken.jpg"):
        load_images(tmp_path / "bad")
    with pytest.raises(CalibrationDataError, match="no such calibration image folder"):
        load_images(tmp_path / "missing")
    for graph in (int8_graphs["tensorrt"].path, fp16_graph):
        with pytest.raises(ArtifactError, match="already"):
            quantize_int8(graph, tmp_path / "x.onnx", calib_images, cache_dir=tmp_path / "c")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    foreign = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                                            [x], [y]))
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ArtifactError, match="no pfcn metadata"):
        quantize_int8(tmp_path / "foreign.onnx", tmp_path / "x.onnx", calib_images, cache_dir=tmp_path / "c")
    assert not (tmp_path / "x.onnx").exists()


def test_inline_constant_identities():
    """An Identity of an initializer becomes a copy of it, under the Identity's output name; others stay."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from pfcn.calibration.int8 import inline_constant_identities

    bias = numpy_helper.from_array(np.zeros(4, np.float32), "zeros")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["zeros"], ["b1"], name="id1"),
         helper.make_node("Identity", ["x"], ["x1"], name="id_of_input"),
         helper.make_node("Add", ["x1", "b1"], ["y"], name="add")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [bias])
    model = helper.make_model(graph)
    assert inline_constant_identities(model) == 1
    assert [n.name for n in model.graph.node] == ["id_of_input", "add"]
    assert {t.name for t in model.graph.initializer} == {"zeros", "b1"}
    onnx.checker.check_model(model)
