"""TensorRT engines: bad input caught before TensorRT is needed (runs everywhere), and — marked ``tensorrt``, run
only where TensorRT and a GPU exist — real builds of a small pfcn graph, parity with PyTorch and the mismatch errors.

The first group uses the real export metadata of a Small model and pfcn's own engine writer with plan bytes that are
not an engine (nothing here can build one); every check it reaches runs before ``import tensorrt``.
"""

from __future__ import annotations

import argparse
import json
import shutil

import onnx
import pytest
from onnx import TensorProto, helper

from pfcn.contract import ArtifactError, ArtifactInfo, E2E_INPUTS, engine_sidecar
from pfcn.export.engine import (EngineBuildError, EngineProfile, add_engine_args, build_engine, check_profile,
                                default_profile, engine_from_args, parse_shape, read_graph, resolve_precision,
                                write_engine)
from pfcn.runtime import open_model
from pfcn.runtime.tensorrt import check_built_here, check_in_profile, read_sidecar

from ..pfcn.parity import SMALL_CONFIG


@pytest.fixture(scope="module")
def onnx_props() -> dict[str, str]:
    """The metadata pfcn-export writes for a Small model's dynamic-batch graph with H/W in 64..256."""
    from pfcn.config import load_config
    from pfcn.export.onnx_export import check_export_args, metadata
    from pfcn.model import build_model
    from pfcn.predictor import default_meta

    cfg = load_config(SMALL_CONFIG, ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    spec = check_export_args(model, "e2e", None, (64, 64, 256, 256), 1, True, 19)
    return metadata(model, cfg, default_meta(cfg), spec, 19)


def engine_props(onnx_props: dict[str, str], **extra) -> dict:
    props = dict(onnx_props, precision="fp32", tensorrt_version="10.13.3.9", compute_capability="9.0",
                 device_name="NVIDIA H200", profiles=[], onnx_sha256="0" * 64,
                 build_command="pfcn-export --format engine --onnx model.onnx --out model.engine")
    props.update(extra)
    return props


def io_graph(path, props: dict[str, str] | None, inputs=E2E_INPUTS, merge: bool = False):
    """An ONNX file with pfcn's e2e input signature and the given metadata (for the build's graph checks); with
    ``merge``, its output comes from a call of a ``pfcn::PanopticMerge`` local function, as in an exported graph."""
    ins = [helper.make_tensor_value_info(inputs[0], TensorProto.UINT8, ["B", 3, "H", "W"]),
           helper.make_tensor_value_info(inputs[1], TensorProto.INT64, ["B", 2])]
    outs = [helper.make_tensor_value_info("panoptic", TensorProto.INT64, ["B", 2])]
    op, domain = ("PanopticMerge", "pfcn") if merge else ("Identity", "")
    graph = helper.make_graph([helper.make_node(op, [inputs[1]], ["panoptic"], domain=domain)], "g", ins, outs)
    opsets = [helper.make_opsetid("", 19)] + ([helper.make_opsetid("pfcn", 1)] if merge else [])
    proto = helper.make_model(graph, opset_imports=opsets)
    if merge:
        proto.functions.append(helper.make_function("pfcn", "PanopticMerge", ["x"], ["y"],
                                                    [helper.make_node("Identity", ["x"], ["y"])],
                                                    [helper.make_opsetid("", 19)]))
    for k, v in (props or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(proto, str(path))
    return path


# ------------------------------------------------------------------------------------------------ bad engines
def test_missing_sidecar(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(ArtifactError) as e:
        open_model(engine, device="cuda")
    msg = str(e.value)
    assert str(engine) in msg and "model.engine.json" in msg and "pfcn-export --format engine" in msg


@pytest.mark.parametrize("content, expected", [
    ('{"pfcn_version": "0.1", "tensorrt_', "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"producer": "trtexec"}', "not pfcn engine metadata"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
])
def test_corrupt_or_foreign_sidecar(tmp_path, content, expected):
    engine = tmp_path / "model.plan"
    engine.write_bytes(b"plan")
    side = engine_sidecar(engine)
    side.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ArtifactError) as e:
        open_model(engine, device="cuda")
    assert expected in str(e.value) and str(side) in str(e.value) and "rebuild" in str(e.value)


def test_sidecar_without_onnx_metadata(tmp_path):
    engine = write_engine(tmp_path / "model.engine", b"plan",
                          {"pfcn_version": "0.1", "tensorrt_version": "10.13.3.9", "compute_capability": "9.0"})
    with pytest.raises(ArtifactError, match="lacks 'categories'") as e:
        open_model(engine, device="cuda")
    assert str(engine) in str(e.value)


def test_truncated_and_replaced_engine(tmp_path, onnx_props):
    engine = write_engine(tmp_path / "model.engine", bytes(range(256)) * 64, engine_props(onnx_props))
    props = read_sidecar(engine)
    assert ArtifactInfo.from_metadata(props, str(engine)).dynamic_range == (64, 64, 256, 256)
    engine.write_bytes(engine.read_bytes()[:1000])  # truncated
    with pytest.raises(ArtifactError, match="truncated") as e:
        open_model(engine, device="cuda")
    assert str(engine) in str(e.value) and "pfcn-export --format engine --onnx model.onnx" in str(e.value)
    engine.write_bytes(bytes(reversed(range(256))) * 64)  # same size, other bytes
    with pytest.raises(ArtifactError, match="damaged or was replaced"):
        open_model(engine, device="cuda")


def test_engine_needs_a_gpu_device(tmp_path, onnx_props):
    engine = write_engine(tmp_path / "model.engine", b"plan", engine_props(onnx_props))
    from pfcn.runtime.tensorrt import TensorRTBackend

    with pytest.raises(ArtifactError, match="--device cuda"):
        TensorRTBackend(engine, device="cpu")  # open_model itself sends engines to the GPU


def test_network_graph_engine_is_refused(tmp_path, onnx_props):
    props = engine_props(onnx_props)
    spec = json.loads(props["input_spec"])
    spec["graph"] = "network"
    engine = write_engine(tmp_path / "model.engine", b"plan", dict(props, input_spec=json.dumps(spec)))
    with pytest.raises(ArtifactError, match="--graph e2e"):
        open_model(engine, device="cuda")


def test_engine_from_another_tensorrt_version_or_gpu(tmp_path, onnx_props):
    engine = write_engine(tmp_path / "model.engine", b"plan", engine_props(onnx_props, tensorrt_version="10.3.0.26"))
    props = read_sidecar(engine)
    with pytest.raises(ArtifactError) as e:
        check_built_here(engine, props, "11.4.0.106", "9.0")
    msg = str(e.value)
    assert str(engine) in msg and "TensorRT 10.3.0.26" in msg and "TensorRT 11.4.0.106" in msg
    assert "pfcn-export --format engine --onnx model.onnx --out model.engine" in msg
    with pytest.raises(ArtifactError) as e:
        check_built_here(engine, props, "10.3.0.26", "8.9", "NVIDIA L4")
    assert "compute capability 9.0 (NVIDIA H200)" in str(e.value) and "8.9 (NVIDIA L4)" in str(e.value)
    check_built_here(engine, props, "10.3.0.26", "9.0")  # the machine that built it


def test_without_tensorrt_the_error_says_what_to_install(tmp_path, onnx_props):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    engine = write_engine(tmp_path / "model.engine", b"plan", engine_props(onnx_props))
    with pytest.raises(ArtifactError, match="tensorrt Python package.*ONNX Runtime"):
        open_model(engine, device="cuda")
    with pytest.raises(ArtifactError, match="tensorrt Python package"):
        build_engine(io_graph(tmp_path / "model.onnx", onnx_props), tmp_path / "built.engine")
    assert not (tmp_path / "built.engine").exists()


def test_shape_outside_profile():
    profile = ((1, 3, 64, 64), (1, 3, 160, 160), (2, 3, 256, 256))
    check_in_profile("m.engine", "images", (2, 3, 64, 256), profile)
    with pytest.raises(ArtifactError) as e:
        check_in_profile("m.engine", "images", (1, 3, 300, 200), profile)
    assert "m.engine" in str(e.value) and "(1, 3, 300, 200)" in str(e.value) and "(2, 3, 256, 256)" in str(e.value)


# ------------------------------------------------------------------------------------------------ build options
def test_profile_syntax_and_derivation(onnx_props):
    assert parse_shape("480x640") == (1, 480, 640) and parse_shape("4x800X1344") == (4, 800, 1344)
    for bad in ("480", "4x3x2x1", "axb", "0x64"):
        with pytest.raises(EngineBuildError, match="HxW or BxHxW"):
            parse_shape(bad)
    spec = json.loads(onnx_props["input_spec"])
    derived = default_profile(spec, max_batch=4)
    assert derived == EngineProfile((1, 64, 64), (4, 160, 160), (4, 256, 256))
    assert derived.shapes()["sizes"] == [[1, 2], [4, 2], [4, 2]]
    check_profile(derived, spec, "model.onnx")
    with pytest.raises(EngineBuildError, match="dynamic range 64x64 .. 256x256"):
        check_profile(EngineProfile((1, 64, 64), (1, 128, 128), (1, 512, 512)), spec, "model.onnx")
    with pytest.raises(EngineBuildError, match="MIN <= OPT <= MAX"):
        check_profile(EngineProfile((1, 128, 64), (1, 64, 64), (1, 256, 256)), spec, "model.onnx")
    fixed = dict(spec, dynamic_range=None, inputs={"images": {"shape": [1, 3, 320, 480]}})
    assert default_profile(fixed) is None
    with pytest.raises(EngineBuildError, match="fixed height of 320"):
        check_profile(EngineProfile((1, 256, 480), (1, 320, 480), (1, 320, 480)), fixed, "model.onnx")


def test_precision_rules(tmp_path, onnx_props):
    fp32 = read_graph(io_graph(tmp_path / "fp32.onnx", onnx_props))
    int8 = read_graph(io_graph(tmp_path / "int8.onnx", dict(onnx_props, precision="int8")))
    assert fp32.precision == "fp32" and int8.precision == "int8" and len(fp32.sha256) == 64
    assert resolve_precision(fp32, None, False, 11) == "fp32"
    assert resolve_precision(int8, None, False, 11) == "int8"
    with pytest.raises(EngineBuildError, match="TensorRT 11 has no builder precision flags"):
        resolve_precision(fp32, "fp16", True, 11)
    with pytest.raises(EngineBuildError, match="--weakly-typed") as e:
        resolve_precision(fp32, "fp16", False, 10)
    assert "fp32 graph" in str(e.value)
    with pytest.raises(EngineBuildError) as e:
        resolve_precision(fp32, "fp16", False, 11)
    assert "--weakly-typed" not in str(e.value)  # not offered where it does not exist
    assert resolve_precision(fp32, "fp16", True, 10) == "fp16"
    with pytest.raises(EngineBuildError, match="no Q/DQ nodes"):
        resolve_precision(fp32, "int8", True, 10)


def test_merge_function_and_plugin_namespace(tmp_path, onnx_props):
    """A registered pfcn::PanopticMerge plugin replaces the local function only when the call node names its
    namespace (the parser inlines the function otherwise)."""
    from pfcn.export.engine import with_plugin_namespace

    path = io_graph(tmp_path / "merge.onnx", onnx_props, merge=True)
    onnx.checker.check_model(onnx.load(str(path)))
    assert read_graph(path).has_merge_function
    assert not read_graph(io_graph(tmp_path / "plain.onnx", onnx_props)).has_merge_function
    proto = onnx.load_from_string(with_plugin_namespace(path))
    node = next(n for n in proto.graph.node if n.op_type == "PanopticMerge")
    assert [(a.name, a.s) for a in node.attribute] == [("plugin_namespace", b"pfcn")]
    assert [p.key for p in proto.metadata_props] == list(onnx_props)  # metadata kept


def test_build_refuses_bad_graphs_before_tensorrt(tmp_path, onnx_props):
    with pytest.raises(ArtifactError, match="no pfcn metadata"):
        build_engine(io_graph(tmp_path / "plain.onnx", None), tmp_path / "m.engine")
    with pytest.raises(ArtifactError, match="e2e graph"):
        build_engine(io_graph(tmp_path / "net.onnx", onnx_props, ("images", "resized_sizes")), tmp_path / "m.engine")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(io_graph(tmp_path / "ok.onnx", onnx_props).read_bytes()[:50])
    with pytest.raises(ArtifactError, match="not a readable ONNX model"):
        build_engine(broken, tmp_path / "m.engine")
    with pytest.raises(EngineBuildError, match=r"\.engine, \.plan or \.trt"):
        build_engine(tmp_path / "ok.onnx", tmp_path / "m.onnx")
    with pytest.raises(EngineBuildError, match="dynamic range"):
        build_engine(tmp_path / "ok.onnx", tmp_path / "m.engine",
                     profiles=[EngineProfile((1, 64, 64), (1, 64, 64), (1, 999, 999))])
    assert not list(tmp_path.glob("m.*"))  # nothing written


def test_engine_cli_arguments(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="model.onnx")
    add_engine_args(parser)
    args = parser.parse_args(["--onnx", "m.onnx", "--profile", "64x64", "2x128x128", "2x256x256",
                              "--precision", "fp16", "--workspace", "2", "--timing-cache", "t.cache"])
    assert args.profile == ["64x64", "2x128x128", "2x256x256"] and args.workspace == 2.0
    with pytest.raises(EngineBuildError, match="--onnx SOURCE"):
        engine_from_args(parser.parse_args([]))
    with pytest.raises(EngineBuildError, match="HxW or BxHxW"):
        engine_from_args(parser.parse_args(["--onnx", "m.onnx", "--profile", "64", "64", "64"]))


# ------------------------------------------------------------------------------------------------ real TensorRT
def _tensorrt_and_gpu():
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def small_graphs(tmp_path_factory):
    """A calibrated Small model (with DeformConv) exported fixed and dynamic, plus images."""
    from pfcn.export.onnx_export import export_onnx
    from pfcn.predictor import default_meta

    from ..pfcn.parity import calibrated_model, synthetic_image

    images = [synthetic_image(150, 210, 1), synthetic_image(150, 210, 2)]
    model, cfg = calibrated_model(SMALL_CONFIG, 0, images, ["MODEL.POSITION_HEAD.DEFORM", "True",
                                                            "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "384"])
    root = tmp_path_factory.mktemp("trt")
    meta = default_meta(cfg)
    fixed = export_onnx(model, cfg, meta, root / "fixed.onnx", input_size=(160, 224))
    dynamic = export_onnx(model, cfg, meta, root / "dynamic.onnx", dynamic=(128, 128, 256, 320), dynamic_batch=True)
    return {"model": model, "cfg": cfg, "meta": meta, "images": images, "fixed": fixed, "dynamic": dynamic,
            "root": root}


def _eager(small_graphs, images):
    from pfcn.predictor import Predictor
    from pfcn.runtime.backend import predict

    return predict(Predictor(small_graphs["model"], small_graphs["meta"], "cpu"), images)


def _agree(reference, results, floor: float) -> None:
    from pfcn.runtime.compare import result_agreement

    for a, b in zip(reference, results):
        agreement = result_agreement(a, b)
        assert agreement.pixel_agreement >= floor, agreement
        assert agreement.category_mismatch == 0, agreement


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_and_gpu(), reason="needs TensorRT and a GPU")
@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
def test_fp32_engine_matches_pytorch(small_graphs, kind):
    from pfcn.runtime.backend import predict

    engine = build_engine(small_graphs[kind], small_graphs["root"] / f"{kind}.engine", max_batch=2,
                          timing_cache=small_graphs["root"] / "timing.cache", progress=False)
    side = json.loads(engine_sidecar(engine).read_text())
    assert side["precision"] == "fp32" and side["strongly_typed"] == "true"
    reference = _eager(small_graphs, small_graphs["images"])
    backend = open_model(engine, device="cuda", batch_size=2)
    try:
        _agree(reference, predict(backend, small_graphs["images"]), 0.999)
        if kind == "fixed":
            graphed = type(backend)(engine, device="cuda", cuda_graph=True)
            _agree(reference, predict(graphed, small_graphs["images"]), 0.999)
            _agree(reference, predict(graphed, small_graphs["images"]), 0.999)  # replay
            graphed.close()
        else:
            from ..pfcn.parity import synthetic_image

            with pytest.raises(ArtifactError, match="outside the engine's optimization profile"):
                predict(backend, [synthetic_image(300, 200, 3)])
    finally:
        backend.close()


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_and_gpu(), reason="needs TensorRT and a GPU")
def test_backend_equals_polygraphy_runner(small_graphs):
    """pfcn's buffers and named-tensor execution give exactly what Polygraphy's TrtRunner gives on the same plan."""
    import numpy as np
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from pfcn.runtime.backend import canvas_for

    engine = small_graphs["root"] / "dynamic.engine"
    if not engine.is_file():
        build_engine(small_graphs["dynamic"], engine, max_batch=2, progress=False)
    backend = open_model(engine, device="cuda", batch_size=2)
    canvas, sizes = canvas_for(backend, small_graphs["images"])
    ours = backend.run(canvas, sizes)
    backend.close()
    with TrtRunner(EngineFromBytes(engine.read_bytes())) as runner:
        theirs = runner.infer({"images": canvas, "sizes": sizes})
    for name, value in ours.items():
        np.testing.assert_array_equal(value, np.asarray(theirs[name]), err_msg=name)


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_and_gpu(), reason="needs TensorRT and a GPU")
def test_fp16_engine(small_graphs):
    """FP16 through TensorRT 10's builder flag (weakly typed); on 11.x the same request is refused."""
    import tensorrt as trt

    out = small_graphs["root"] / "fp16.engine"
    if int(trt.__version__.split(".")[0]) >= 11:
        with pytest.raises(EngineBuildError, match="TensorRT 11 has no builder precision flags"):
            build_engine(small_graphs["fixed"], out, precision="fp16", weakly_typed=True)
        return
    from pfcn.runtime.backend import predict

    engine = build_engine(small_graphs["fixed"], out, precision="fp16", weakly_typed=True, progress=False)
    backend = open_model(engine, device="cuda")
    _agree(_eager(small_graphs, small_graphs["images"]), predict(backend, small_graphs["images"]), 0.99)
    backend.close()


@pytest.mark.tensorrt
@pytest.mark.skipif(not _tensorrt_and_gpu(), reason="needs TensorRT and a GPU")
def test_real_engine_mismatches(small_graphs, tmp_path):
    import tensorrt as trt

    engine = small_graphs["root"] / "fixed.engine"
    if not engine.is_file():
        build_engine(small_graphs["fixed"], engine, progress=False)
    side = json.loads(engine_sidecar(engine).read_text())
    for key, value, expected in [("tensorrt_version", "10.0.0.6", "built by TensorRT 10.0.0.6"),
                                 ("compute_capability", "1.0", "compute capability 1.0")]:
        copy = tmp_path / f"{key}.engine"
        shutil.copy(engine, copy)
        engine_sidecar(copy).write_text(json.dumps(dict(side, **{key: value})))
        with pytest.raises(ArtifactError, match=expected) as e:
            open_model(copy, device="cuda")
        assert str(copy) in str(e.value) and "pfcn-export --format engine" in str(e.value)
    # a truncated plan whose sidecar was made to match it: TensorRT itself must refuse it, with pfcn's message
    cut = tmp_path / "cut.engine"
    write_engine(cut, engine.read_bytes()[: engine.stat().st_size // 2], {k: v for k, v in side.items()})
    with pytest.raises(ArtifactError, match=f"TensorRT {trt.__version__} cannot deserialize"):
        open_model(cut, device="cuda")
