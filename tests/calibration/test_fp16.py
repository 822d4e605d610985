"""The FP16 pass: what runs in FP16 and what stays FP32, metadata, the ΔPQ gate, and bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from pfcn.calibration.gates import GATES, compare
from pfcn.contract import ArtifactError
from pfcn.export.check import check_onnx
from pfcn.export.onnx_export import read_metadata
from pfcn.export.precision import convert_fp16, convert_fp16_file, network_scope
from pfcn.runtime import open_model


def _dtypes(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {vi.name: vi.type.tensor_type.elem_type for vi in
           list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    out.update({i.name: i.data_type for i in model.graph.initializer})
    return out


def test_fp16_regions(fp32_graph, fp16_graph):
    src, m = onnx.load(str(fp32_graph)), onnx.load(str(fp16_graph))
    dtypes = _dtypes(m)
    convs = [n for n in m.graph.node if n.op_type == "Conv" and network_scope(n.name) is not None]
    assert convs and all(dtypes[n.input[1]] == TensorProto.FLOAT16 for n in convs)
    # the kernel generators' 1x1 convs belong to kernel fusion, which stays FP32
    generators = [n for n in m.graph.node if n.op_type == "Conv" and "_generator" in n.name]
    assert generators and all(dtypes[n.input[1]] == TensorProto.FLOAT for n in generators)
    norms = [n for n in m.graph.node if n.op_type == "InstanceNormalization"]
    assert norms and all(dtypes[n.input[0]] == TensorProto.FLOAT for n in norms)  # GroupNorm statistics
    # everything outside the network (resize matrices, thresholds, kernel fusion, mask products) stays FP32
    outside = [n for n in m.graph.node if network_scope(n.name) is None and n.op_type in ("MatMul", "Sigmoid",
                                                                                           "ReduceL2", "Greater")]
    assert outside and all(dtypes.get(o) != TensorProto.FLOAT16 for n in outside for o in n.output)
    assert [f.SerializeToString() for f in m.functions] == [f.SerializeToString() for f in src.functions]
    assert [(i.name, i.type.tensor_type.elem_type) for i in m.graph.input] == \
        [(i.name, i.type.tensor_type.elem_type) for i in src.graph.input]
    assert [(o.name, o.type.tensor_type.elem_type) for o in m.graph.output] == \
        [(o.name, o.type.tensor_type.elem_type) for o in src.graph.output]
    meta, src_meta = read_metadata(m), read_metadata(src)
    assert meta["precision"] == "fp16"
    assert {k: v for k, v in meta.items() if k != "precision"} == src_meta
    report = check_onnx(fp16_graph)
    assert report.ok, report.to_text()


def test_fp16_gate(fp16_graph, held_out, reference):
    results, pq = reference
    gate = compare(open_model(fp16_graph), results, held_out, GATES["fp16"], reference_pq=pq)
    print("fp16 gate", gate.as_dict())
    assert gate.ok, gate.as_dict()
    assert gate.category_mismatches == 0 and gate.mean_pixel_agreement > 0.999


def test_fp16_refuses_fp16_and_foreign_graphs(fp16_graph, tmp_path):
    with pytest.raises(ArtifactError, match="already"):
        convert_fp16(onnx.load(str(fp16_graph)), str(fp16_graph))
    x = onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = onnx.helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    foreign = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                                            [x], [y]))
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ArtifactError, match="no pfcn metadata"):
        convert_fp16_file(tmp_path / "foreign.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_fp16_weights_close(fp32_graph, fp16_graph):
    """Converted weights are the FP32 weights rounded, not anything else."""
    src = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(fp32_graph)).graph.initializer}
    m = onnx.load(str(fp16_graph))
    for init in m.graph.initializer:
        if init.data_type == TensorProto.FLOAT16 and init.name.removesuffix("__fp16") in src:
            a = src[init.name.removesuffix("__fp16")]
            np.testing.assert_allclose(numpy_helper.to_array(init).astype(np.float32), a, rtol=1e-3, atol=1e-4)
