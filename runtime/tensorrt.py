"""TensorRT backend: a pfcn ``.engine`` (TensorRT 10.x >= 10.1 or 11.x) behind the backend interface.

The plan file holds exactly what TensorRT serialized, so trtexec and Triton load it as is; pfcn's metadata lives in
the JSON sidecar next to it (``pfcn.contract.engine_sidecar``). Everything that can be checked without TensorRT —
sidecar present and pfcn's, plan complete, built by this TensorRT version for this GPU — is checked first, by pure
functions, so that a wrong file gets a clear message (and the rebuild command) before TensorRT is even imported.

Execution uses the TensorRT 10/11 named-tensor API: ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``.
Device buffers come from torch CUDA tensors, or from cuda-python (``cuda.bindings``) where torch is absent.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from pfcn.contract import E2E_INPUTS, ArtifactError, ArtifactInfo, engine_sidecar

MIN_VERSION = (10, 1)  # DeformConv -> ModulatedDeformConv2d v2 arrived in the 10.1 ONNX parser
SUPPORTED_MAJORS = (10, 11)

# Variable (or ``self.`` attribute) names that hold TensorRT objects in this module, with their TensorRT class.
# tests/runtime/test_tensorrt_api.py checks every attribute used on these names, and every ``trt.X.Y`` chain,
# against the real bindings of each supported TensorRT version.
TRT_OBJECTS = {
    "logger": "Logger",
    "trt_runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
}


# ------------------------------------------------------------------------------------------------ pure checks
def rebuild_hint(props: Mapping[str, Any], engine_path: str | Path) -> str:
    """The command that rebuilds ``engine_path`` from its ONNX graph (recorded at build time, else a template)."""
    cmd = props.get("build_command")
    if isinstance(cmd, str) and cmd:
        return cmd
    return f"pfcn-export --format engine --onnx MODEL.onnx --out {engine_path}"


def read_sidecar(engine_path: str | Path) -> dict[str, Any]:
    """The raw metadata of ``engine_path`` from its JSON sidecar; ArtifactError naming the file and what to do."""
    engine_path = Path(engine_path)
    side = engine_sidecar(engine_path)
    if not side.is_file():
        raise ArtifactError(f"{engine_path}: its metadata file {side} is missing; pfcn writes it next to every "
                            "engine it builds — build the engine with pfcn-export --format engine --onnx MODEL.onnx "
                            f"--out {engine_path} (an engine built by trtexec has no pfcn metadata)")
    try:
        props = json.loads(side.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{side}: not valid JSON ({e}); the file is damaged — rebuild the engine with "
                            f"pfcn-export --format engine --out {engine_path}") from None
    if not isinstance(props, dict):
        raise ArtifactError(f"{side}: expected a JSON object of pfcn metadata, got {type(props).__name__}; "
                            "rebuild the engine with pfcn-export --format engine")
    missing = [k for k in ("pfcn_version", "tensorrt_version", "compute_capability") if k not in props]
    if missing:
        raise ArtifactError(f"{side}: not pfcn engine metadata (keys {', '.join(missing)} missing); rebuild the "
                            f"engine with pfcn-export --format engine --onnx MODEL.onnx --out {engine_path}")
    return props


def check_engine_file(engine_path: str | Path, props: Mapping[str, Any]) -> None:
    """The plan is the one the sidecar describes: same size and sha256 (a truncated or swapped file fails here)."""
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise FileNotFoundError(f"{engine_path}: no such engine file")
    size = engine_path.stat().st_size
    want_size = props.get("engine_bytes")
    if want_size is not None and int(want_size) != size:
        raise ArtifactError(f"{engine_path}: {size} bytes, but its metadata says {want_size}; the engine is "
                            f"truncated or was replaced — rebuild it: {rebuild_hint(props, engine_path)}")
    want_sha = props.get("engine_sha256")
    if want_sha:
        h = hashlib.sha256()
        with open(engine_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        if h.hexdigest() != want_sha:
            raise ArtifactError(f"{engine_path}: its content does not match the sha256 in "
                                f"{engine_sidecar(engine_path).name}; the engine is damaged or was replaced — "
                                f"rebuild it: {rebuild_hint(props, engine_path)}")


def parse_version(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(version).split(".") if p.isdigit())


def check_tensorrt_version(version: str, what: str = "pfcn") -> None:
    """This TensorRT is one pfcn supports (10.x >= 10.1, 11.x)."""
    v = parse_version(version)
    if v[:1] not in [(m,) for m in SUPPORTED_MAJORS] or v[:2] < MIN_VERSION:
        raise ArtifactError(f"TensorRT {version} is not supported by {what}: use TensorRT 10.x (>= 10.1) or 11.x")


def check_built_here(engine_path: str | Path, props: Mapping[str, Any], tensorrt_version: str,
                     compute_capability: str, device_name: str = "") -> None:
    """An engine runs only on the TensorRT version and GPU architecture that built it: say which built it, and how
    to rebuild it here."""
    built_v, built_cc = str(props.get("tensorrt_version")), str(props.get("compute_capability"))
    hint = rebuild_hint(props, engine_path)
    if built_v != str(tensorrt_version):
        raise ArtifactError(f"{engine_path}: built by TensorRT {built_v}, but this is TensorRT {tensorrt_version}; "
                            f"engines do not move between TensorRT versions — rebuild it here: {hint}")
    if built_cc != str(compute_capability):
        on = f" ({props.get('device_name')})" if props.get("device_name") else ""
        here = f" ({device_name})" if device_name else ""
        raise ArtifactError(f"{engine_path}: built for a GPU of compute capability {built_cc}{on}, but this GPU has "
                            f"{compute_capability}{here}; rebuild it on this GPU: {hint}")


def check_in_profile(engine_path: str | Path, name: str, shape: Sequence[int],
                     profile: tuple[Sequence[int], Sequence[int], Sequence[int]]) -> None:
    """``shape`` of input ``name`` lies within the engine's optimization profile (min, opt, max)."""
    lo, _, hi = profile
    if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
        raise ArtifactError(f"{engine_path}: input {name!r} of shape {tuple(shape)} is outside the engine's "
                            f"optimization profile (min {tuple(lo)}, max {tuple(hi)}); resize the images, or rebuild "
                            "the engine with a wider --profile")


# ------------------------------------------------------------------------------------------------ TensorRT access
def import_tensorrt():
    """``tensorrt``, of a supported version; ArtifactError with what to install otherwise."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ArtifactError(f"TensorRT engines need the tensorrt Python package ({e}); install TensorRT 10.x "
                            "(>= 10.1) or 11.x with its Python bindings (pip install tensorrt-cu12 or tensorrt-cu13 "
                            "from NVIDIA's index), or run the .onnx with ONNX Runtime instead") from None
    check_tensorrt_version(trt.__version__)
    return trt


def trt_major(trt) -> int:
    """TensorRT's major version; ``if trt_major(trt) >= 11:`` marks version-specific code (the API test reads it)."""
    return parse_version(trt.__version__)[0]


_LOGGER: Any = None


def get_logger(trt):
    """One TensorRT logger per process (TensorRT keeps the first logger given to its plugin library)."""
    global _LOGGER
    if _LOGGER is None:
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")  # DeformConv -> ModulatedDeformConv2d needs the std plugins
        _LOGGER = logger
    return _LOGGER


def gpu_properties(device: str = "cuda") -> tuple[str, str]:
    """(name, compute capability "major.minor") of ``device``, from torch, else from cuda-python."""
    index = int(device.split(":")[1]) if ":" in device else 0
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        if not torch.cuda.is_available():
            raise ArtifactError(f"--device {device}: no CUDA GPU is visible to torch; TensorRT needs an NVIDIA GPU")
        major, minor = torch.cuda.get_device_capability(index)
        return torch.cuda.get_device_name(index), f"{major}.{minor}"
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise ArtifactError("TensorRT needs torch (with CUDA) or cuda-python (pip install cuda-python) for device "
                            "memory; neither is installed") from None
    err, prop = cudart.cudaGetDeviceProperties(index)
    if err != cudart.cudaError_t.cudaSuccess:
        raise ArtifactError(f"--device {device}: CUDA cannot open this device ({err})")
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return name, f"{prop.major}.{prop.minor}"


# ------------------------------------------------------------------------------------------------ device buffers
class _TorchMemory:
    """Device buffers as torch CUDA tensors (the simplest allocator with a stream of its own)."""

    def __init__(self, device: str):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    @property
    def stream_handle(self) -> int:
        return int(self.stream.cuda_stream)

    def empty(self, shape: Sequence[int], dtype: np.dtype):
        return self.torch.empty(tuple(shape), dtype=self.torch.from_numpy(np.zeros(0, dtype)).dtype,
                                device=self.device)

    def address(self, buf) -> int:
        return int(buf.data_ptr())

    def upload(self, buf, array: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.copy_(self.torch.from_numpy(np.ascontiguousarray(array)), non_blocking=False)

    def download(self, buf) -> np.ndarray:
        with self.torch.cuda.stream(self.stream):
            return buf.cpu().numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()


class _CudaPythonMemory:
    """Device buffers from cuda-python (``cuda.bindings.runtime``) for installations without torch."""

    def __init__(self, device: str):
        from cuda.bindings import runtime as cudart

        self.cudart = cudart
        self._check(cudart.cudaSetDevice(int(device.split(":")[1]) if ":" in device else 0), "cudaSetDevice")
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._owned: list[Any] = []

    def _check(self, result, what: str):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != self.cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"{what} failed: {err}")
        return rest[0] if rest else None

    @property
    def stream_handle(self) -> int:
        return int(self.stream)

    def empty(self, shape: Sequence[int], dtype: np.dtype):
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        ptr = self._check(self.cudart.cudaMalloc(nbytes), "cudaMalloc")
        self._owned.append(ptr)
        return (int(ptr), tuple(shape), np.dtype(dtype))

    def address(self, buf) -> int:
        return buf[0]

    def upload(self, buf, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array, dtype=buf[2])
        self._check(self.cudart.cudaMemcpy(buf[0], array.ctypes.data, array.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy")

    def download(self, buf) -> np.ndarray:
        out = np.empty(buf[1], dtype=buf[2])
        self.synchronize()
        self._check(self.cudart.cudaMemcpy(out.ctypes.data, buf[0], out.nbytes,
                                           self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost), "cudaMemcpy")
        return out

    def synchronize(self) -> None:
        self._check(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def free(self) -> None:
        for ptr in self._owned:
            self.cudart.cudaFree(ptr)
        self._owned.clear()


# ------------------------------------------------------------------------------------------------ the backend
class TensorRTBackend:
    """An end-to-end pfcn engine in a TensorRT execution context.

    Args:
        path: a ``.engine``/``.plan`` built by ``pfcn-export --format engine`` (with its ``.json`` sidecar).
        device: "cuda" or "cuda:i".
        batch_size: images per run where the engine's batch is dynamic (capped by the profile's maximum).
        cuda_graph: capture each fixed input shape once in a CUDA graph and replay it (less launch overhead).
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, device: str = "cuda", batch_size: int = 1, cuda_graph: bool = False):
        self.path = Path(path)
        if not str(device).startswith("cuda"):
            raise ArtifactError(f"{self.path}: TensorRT engines run on a GPU; use --device cuda (got {device!r})")
        props = read_sidecar(self.path)
        self.info = ArtifactInfo.from_metadata(props, str(self.path))
        self.info.require_e2e()
        check_engine_file(self.path, props)
        trt = import_tensorrt()
        device_name, cc = gpu_properties(device)
        check_built_here(self.path, props, trt.__version__, cc, device_name)
        self.device, self.batch_size, self.use_cuda_graph = device, max(1, int(batch_size)), bool(cuda_graph)
        try:
            import torch  # noqa: F401

            self.memory: Any = _TorchMemory(device)
        except ImportError:
            self.memory = _CudaPythonMemory(device)
        logger = get_logger(trt)
        self.trt_runtime = trt.Runtime(logger)
        engine = self.trt_runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise ArtifactError(f"{self.path}: TensorRT {trt.__version__} cannot deserialize this engine (see its "
                                f"log above); rebuild it: {rebuild_hint(props, self.path)}")
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if tuple(inputs) != E2E_INPUTS:
            raise ArtifactError(f"{self.path}: engine inputs {inputs} are not pfcn's {list(E2E_INPUTS)}; "
                                f"rebuild it from a pfcn e2e graph: {rebuild_hint(props, self.path)}")
        self.output_names = [n for n in names if n not in inputs]
        self.dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        self.profiles = {n: self._profile(n) for n in inputs}
        context = engine.create_execution_context()
        if context is None:
            raise ArtifactError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        self.context = context
        self._buffers: dict[str, Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._graphs: dict[tuple[int, ...], Any] = {}

    # The protocol ------------------------------------------------------------------------------------------------
    def group_key(self, h: int, w: int) -> Hashable:
        return (0, 0) if self.info.fixed_hw else (h, w)

    def max_batch(self) -> int:
        return self.info.batch or min(self.batch_size, self.profiles["images"][2][0])

    def run(self, canvas: np.ndarray, sizes: np.ndarray) -> Mapping[str, Any]:
        canvas = self._fit_profile(np.ascontiguousarray(canvas, dtype=np.uint8))
        feed = {"images": canvas, "sizes": np.ascontiguousarray(sizes, dtype=np.int64)}
        for name, value in feed.items():
            check_in_profile(self.path, name, value.shape, self.profiles[name])
        reshaped = self._prepare(feed)
        for name, value in feed.items():
            self.memory.upload(self._buffers[name], value)
        key = canvas.shape
        if self.use_cuda_graph and self.memory.__class__ is _TorchMemory:
            if reshaped or key not in self._graphs:
                self._graphs.clear()
                self._execute()  # TensorRT applies shape changes on the first enqueue, outside any capture
                self.memory.synchronize()
                self._graphs[key] = self._capture()
            self._graphs[key].replay()
        else:
            self._execute()
        self.memory.synchronize()
        return {n: self.memory.download(self._buffers[n]) for n in self.output_names}

    def close(self) -> None:
        self._graphs.clear()
        self._buffers.clear()
        if isinstance(self.memory, _CudaPythonMemory):
            self.memory.free()
        self.context = None
        self.engine = None
        self.trt_runtime = None

    # Helpers -----------------------------------------------------------------------------------------------------
    def _profile(self, name: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) shape of an input: its fixed shape, or the range of optimization profile 0."""
        engine = self.engine
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        if all(d >= 0 for d in shape):
            return shape, shape, shape
        lo, mid, hi = (tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(name, 0))
        return lo, mid, hi

    def _fit_profile(self, canvas: np.ndarray) -> np.ndarray:
        """Pad a canvas smaller than the profile's minimum H/W with zeros (the graph ignores pixels outside each
        image's size), so small images run on an engine built for larger ones."""
        lo = self.profiles["images"][0]
        h, w = max(canvas.shape[2], lo[2]), max(canvas.shape[3], lo[3])
        if (h, w) == canvas.shape[2:]:
            return canvas
        out = np.zeros(canvas.shape[:2] + (h, w), dtype=canvas.dtype)
        out[:, :, : canvas.shape[2], : canvas.shape[3]] = canvas
        return out

    def _prepare(self, feed: Mapping[str, np.ndarray]) -> bool:
        """Set input shapes and (re)allocate buffers when a shape changed; True if anything changed."""
        context = self.context
        changed = False
        for name, value in feed.items():
            if self._shapes.get(name) != value.shape:
                if not context.set_input_shape(name, tuple(value.shape)):
                    raise ArtifactError(f"{self.path}: TensorRT rejected input {name!r} of shape {value.shape}")
                self._shapes[name] = value.shape
                self._buffers[name] = self.memory.empty(value.shape, self.dtypes[name])
                changed = True
        if changed:
            for name in self.output_names:
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise ArtifactError(f"{self.path}: output {name!r} has a data-dependent shape {shape}; pfcn "
                                        "graphs have fixed-size outputs — rebuild from a pfcn-export graph")
                self._buffers[name] = self.memory.empty(shape, self.dtypes[name])
            for name, buf in self._buffers.items():
                context.set_tensor_address(name, self.memory.address(buf))
        return changed

    def _execute(self) -> None:
        context = self.context
        if not context.execute_async_v3(self.memory.stream_handle):
            raise RuntimeError(f"{self.path}: TensorRT execution failed (see its log above)")

    def _capture(self):
        torch = self.memory.torch
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.memory.stream, capture_error_mode="thread_local"):
            self._execute()
        return graph
