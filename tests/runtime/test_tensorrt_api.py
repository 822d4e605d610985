"""pfcn's TensorRT code uses only API that each supported TensorRT version has — proven against the real bindings.

For TensorRT 10.13 and 11.4 the real Python bindings are imported (``trt_bindings.py``: PyPI wheel + link-only
stand-in libraries) in a subprocess, and ``trt_api.py`` walks the AST of ``export/engine.py`` and
``runtime/tensorrt.py``: every ``tensorrt`` attribute, method, enum member, keyword argument, returned class and
overridden method on the code path of that version, and the Polygraphy calls (names, keywords, and the TensorRT
features those keywords switch on inside Polygraphy). Deliberate misuses show that the check fails when it should.
Skips (with the reason) where the wheels cannot be downloaded or gcc/nm are missing.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from .trt_bindings import REPO, WHEELS, Unavailable, prepare

CODE = ("export/engine.py", "runtime/tensorrt.py")
RUNNER = "import sys; sys.path.insert(0, 'tests/runtime'); import trt_api; sys.exit(trt_api.main())"


@pytest.fixture(scope="module", params=sorted(WHEELS), ids=lambda m: f"trt{m}")
def bindings(request):
    pytest.importorskip("polygraphy", reason="polygraphy is not installed (the engine builder uses it)")
    try:
        return prepare(request.param)
    except Unavailable as e:
        pytest.skip(f"TensorRT {request.param}.x bindings unavailable here: {e}")


def run_check(bindings, files: dict[str, str], tables: dict[str, dict[str, str]] | None = None) -> dict:
    proc = bindings.python(RUNNER, json.dumps({"files": files, "tables": tables or {}}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def snippet(source: str) -> dict[str, str]:
    return {"snippet.py": textwrap.dedent(source)}


def problems(report: dict) -> list[str]:
    return [f"{m['where']}: {m['owner']}.{m['name']} — {m['problem']}" for m in report["missing"]]


def test_pfcn_uses_only_api_this_tensorrt_has(bindings):
    files = {name: (REPO / name).read_text() for name in CODE}
    report = run_check(bindings, files)
    assert "error" not in report, report.get("error")
    assert report["version"] == bindings.version
    assert not report["missing"], "\n".join(problems(report))
    assert not report["unused_table"], report["unused_table"]
    names = {(u["kind"], u["owner"], u["name"]) for u in report["checked"]}
    print(f"TensorRT {bindings.version}: {len(names)} distinct API uses checked "
          f"({len(report['checked'])} sites)")
    # The execution API of TensorRT 10/11 is on the checked path of both versions.
    for use in [("attr", "IExecutionContext", "set_input_shape"), ("attr", "IExecutionContext", "set_tensor_address"),
                ("attr", "IExecutionContext", "execute_async_v3"), ("attr", "", "init_libnvinfer_plugins"),
                ("poly-kwarg", "NetworkFromOnnxPath", "strongly_typed")]:
        assert use in names, use
    # TensorRT 10's builder precision flags are used (through Polygraphy) only on the 10.x path.
    flags = {u["owner"] for u in report["checked"] if u["kind"] == "poly-trt"}
    assert ("BuilderFlag.FP16" in flags) == (bindings.major == 10)


def test_builder_precision_flag_on_the_11_path_fails(bindings):
    """``BuilderFlag.FP16`` exists in 10.x and not in 11.x: used on a path 11 takes, the check must fail there."""
    report = run_check(bindings, snippet("""
        def build(trt, config):
            if trt_major(trt) >= 11:
                config.set_flag(trt.BuilderFlag.FP16)
            if trt_major(trt) == 10:
                config.set_flag(trt.BuilderFlag.INT8)
        """))
    missing = {(m["owner"], m["name"]) for m in report["missing"]}
    checked = {(u["owner"], u["name"]) for u in report["checked"]}
    if bindings.major >= 11:
        assert ("BuilderFlag", "FP16") in missing
        assert ("BuilderFlag", "INT8") not in missing | checked  # the 10.x branch is not this version's path
    else:
        assert not missing
        assert ("BuilderFlag", "INT8") in checked and ("BuilderFlag", "FP16") not in checked


def test_polygraphy_precision_keyword_on_11_fails(bindings):
    """``CreateConfig(fp16=True)`` makes Polygraphy set ``BuilderFlag.FP16``: fine on 10.x, missing on 11.x."""
    report = run_check(bindings, snippet("""
        def config():
            from polygraphy.backend.trt import CreateConfig
            return CreateConfig(fp16=True, memory_pool_limits={})
        """))
    wrong = [m for m in report["missing"] if m["kind"] == "poly-kwarg" and m["name"] == "fp16"]
    assert bool(wrong) == (bindings.major >= 11), report
    if wrong:
        assert "BuilderFlag.FP16" in wrong[0]["problem"]


def test_wrong_names_fail_on_every_version(bindings):
    report = run_check(bindings, snippet("""
        def run(trt, context, engine):
            context.execute_async_v3(stream=0)          # the keyword is stream_handle
            engine.get_binding_shape(0)                 # removed in TensorRT 10
            trt.IInt8EntropyCalibrator3                  # never existed
            from polygraphy.backend.trt import CreateConfig
            CreateConfig(workspace=1 << 30)             # Polygraphy's keyword is memory_pool_limits
        """), tables={"snippet.py": {"context": "IExecutionContext", "engine": "ICudaEngine"}})
    missing = {(m["kind"], m["owner"], m["name"]) for m in report["missing"]}
    assert ("kwarg", "IExecutionContext.execute_async_v3", "stream") in missing
    assert ("attr", "ICudaEngine", "get_binding_shape") in missing
    assert ("attr", "", "IInt8EntropyCalibrator3") in missing
    assert ("poly-kwarg", "CreateConfig", "workspace") in missing


def test_the_object_table_cannot_drift(bindings):
    """A TensorRT object kept under a name the table does not map (or maps to another class) is reported, so its
    methods cannot escape the check; so is a version test the walker cannot read."""
    report = run_check(bindings, snippet("""
        TRT_OBJECTS = {"runtime": "Runtime"}
        def load(trt, logger, data):
            runtime = trt.Runtime(logger)
            eng = runtime.deserialize_cuda_engine(data)
            return eng.get_binding_shape(0)
        """))
    assert any(m["kind"] == "returns" and "'eng'" in m["problem"] for m in report["missing"]), report
    unreadable = run_check(bindings, snippet("""
        def f(trt):
            if trt_major(trt) in (10, 11):
                pass
        """))
    assert "version test" in unreadable.get("error", "")


def test_bindings_facts_of_each_version(bindings):
    """A direct fact of the two versions, as a sanity check of the bindings themselves."""
    proc = bindings.python("import tensorrt as t; print(hasattr(t, 'IInt8EntropyCalibrator2'), "
                           "hasattr(t.BuilderFlag, 'FP16'), "
                           "hasattr(t.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED'))")
    assert proc.returncode == 0, proc.stderr
    calib, fp16, strong = proc.stdout.split()
    assert (calib == "True", fp16 == "True", strong) == (bindings.major == 10, bindings.major == 10, "True")


def test_polygraphy_calls_exist_in_pinned_version():
    """The Polygraphy loaders pfcn builds with (and that the engine tests compare with) take the keywords used."""
    import inspect

    polygraphy = pytest.importorskip("polygraphy")
    from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork, EngineFromBytes, NetworkFromOnnxBytes,
                                        NetworkFromOnnxPath, Profile, TrtRunner)
    from polygraphy.comparator import Comparator

    assert tuple(int(p) for p in polygraphy.__version__.split(".")[:2]) >= (0, 49), polygraphy.__version__
    assert {"strongly_typed"} <= set(inspect.signature(NetworkFromOnnxPath).parameters)
    assert {"strongly_typed"} <= set(inspect.signature(NetworkFromOnnxBytes).parameters)
    assert {"config", "save_timing_cache"} <= set(inspect.signature(EngineBytesFromNetwork).parameters)
    assert {"min", "opt", "max"} <= set(inspect.signature(Profile.add).parameters)
    assert {"fp16", "int8"} <= set(inspect.signature(CreateConfig).parameters)
    common = set(inspect.signature(CreateConfig.__mro__[1].__init__).parameters)
    assert {"profiles", "memory_pool_limits", "load_timing_cache", "progress_monitor"} <= common
    assert callable(EngineFromBytes) and callable(TrtRunner) and hasattr(Comparator, "run")
    assert Path(inspect.getsourcefile(CreateConfig)).is_file()  # its source is read for the flag mapping


def test_cuda_python_names_exist():
    """The torch-free buffer path (``cuda.bindings.runtime`` as ``cudart``) uses only names cuda-python has."""
    import ast
    import sys

    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python (cuda-bindings) is not installed")
    sys.path.insert(0, str(Path(__file__).parent))
    from trt_api import chain

    tree = ast.parse((REPO / "runtime" / "tensorrt.py").read_text())
    used = set()
    for node in ast.walk(tree):
        parts = chain(node) if isinstance(node, ast.Attribute) else None
        if parts and parts[0] == "self" and len(parts) > 2 and parts[1] == "cudart":
            parts = parts[1:]
        if parts and parts[0] == "cudart" and len(parts) > 1:
            used.add(tuple(parts[1:]))
    assert len(used) >= 8, used
    for path in used:
        obj = cudart
        for part in path:
            assert hasattr(obj, part), f"cuda.bindings.runtime has no {'.'.join(path)}"
            obj = getattr(obj, part)
