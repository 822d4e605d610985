"""Build a TensorRT engine (10.x >= 10.1 or 11.x) from a pfcn ONNX graph: FP32, an FP16 graph or an INT8 Q/DQ graph.

Precision lives in the graph: the network is strongly typed, so the graph's own dtypes and Q/DQ nodes decide what
runs in FP16/INT8, on TensorRT 10 and 11 alike. TensorRT 10's builder precision flags (``--weakly-typed
--precision fp16``) are offered only on 10.x, which has them; TensorRT 11 removed them.

Polygraphy does the standard work (parse with the plugin library loaded, config, profiles, timing cache, build);
pfcn adds the profiles derived from the graph's metadata, the PanopticMerge plugin switch, build progress, and the
JSON sidecar with the metadata the runtime checks (``pfcn.runtime.tensorrt``). The plan file is written exactly as
TensorRT serialized it, so trtexec and Triton load it as is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import onnx

from pfcn.contract import E2E_INPUTS, ArtifactError, atomic_write_bytes, decode_metadata, encode_metadata, \
    engine_sidecar
from pfcn.runtime.tensorrt import get_logger, gpu_properties, import_tensorrt, trt_major

PRECISIONS = ("fp32", "fp16", "int8")
MERGE_FUNCTION = ("pfcn", "PanopticMerge")  # (domain = plugin namespace, name) of the merge's local function

# Variable names that hold TensorRT objects in this module, with their TensorRT class (see runtime/tensorrt.py).
TRT_OBJECTS = {
    "registry": "IPluginRegistry",
}


class EngineBuildError(ValueError):
    """A build request that cannot work; the message names the option or file and what to do."""


# ------------------------------------------------------------------------------------------------ profiles
@dataclass(frozen=True)
class EngineProfile:
    """One optimization profile for the ``images`` input as (batch, height, width) triples; ``sizes`` follows."""

    min: tuple[int, int, int]
    opt: tuple[int, int, int]
    max: tuple[int, int, int]

    def shapes(self) -> dict[str, list[list[int]]]:
        """min/opt/max shapes of each e2e input (JSON-ready, as stored in the sidecar)."""
        return {"images": [[b, 3, h, w] for b, h, w in (self.min, self.opt, self.max)],
                "sizes": [[b, 2] for b, _, _ in (self.min, self.opt, self.max)]}


def parse_shape(text: str, what: str = "--profile") -> tuple[int, int, int]:
    """'HxW' or 'BxHxW' -> (B, H, W) (B = 1 when omitted)."""
    parts = str(text).lower().split("x")
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or any(n <= 0 for n in nums):
        raise EngineBuildError(f"{what} {text!r}: write a shape as HxW or BxHxW with positive integers, "
                               "e.g. 480x640 or 4x800x1344")
    return (1, nums[0], nums[1]) if len(nums) == 2 else (nums[0], nums[1], nums[2])


def check_profile(profile: EngineProfile, spec: dict[str, Any], source: str) -> EngineProfile:
    """``profile`` is ordered (min <= opt <= max) and fits the graph: fixed dims equal, dynamic H/W in range."""
    for i, axis in enumerate(("batch", "height", "width")):
        lo, mid, hi = profile.min[i], profile.opt[i], profile.max[i]
        if not lo <= mid <= hi:
            raise EngineBuildError(f"--profile: {axis} must satisfy MIN <= OPT <= MAX (got {lo}, {mid}, {hi})")
    shape = spec["inputs"]["images"]["shape"]
    fixed = {0: shape[0], 1: shape[2], 2: shape[3]}
    for i, axis in enumerate(("batch", "height", "width")):
        dim = fixed[i]
        if isinstance(dim, int) and {profile.min[i], profile.opt[i], profile.max[i]} != {dim}:
            raise EngineBuildError(f"--profile: {source} has a fixed {axis} of {dim}; the profile must keep it "
                                   f"(got {profile.min[i]}..{profile.max[i]})")
    rng = spec.get("dynamic_range")
    if rng:
        min_h, min_w, max_h, max_w = rng
        if profile.min[1] < min_h or profile.min[2] < min_w or profile.max[1] > max_h or profile.max[2] > max_w:
            raise EngineBuildError(f"--profile {profile.min[1]}x{profile.min[2]} .. {profile.max[1]}x{profile.max[2]}"
                                   f" leaves the graph's dynamic range {min_h}x{min_w} .. {max_h}x{max_w} "
                                   f"({source}); choose a profile inside it or re-export with a wider --dynamic")
    return profile


def default_profile(spec: dict[str, Any], max_batch: int = 1) -> EngineProfile | None:
    """The profile derived from the graph's metadata: the whole dynamic H/W range (OPT at its middle, a multiple of
    32) and batch 1..``max_batch``. None for a fully fixed graph, which needs no profile."""
    shape = spec["inputs"]["images"]["shape"]
    dyn_batch = not isinstance(shape[0], int)
    rng = spec.get("dynamic_range")
    if not dyn_batch and not rng:
        return None
    b = (1, max_batch, max_batch) if dyn_batch else (shape[0],) * 3
    if rng:
        min_h, min_w, max_h, max_w = rng
        opt_h = max(min_h, min(max_h, (min_h + max_h) // 2 // 32 * 32))
        opt_w = max(min_w, min(max_w, (min_w + max_w) // 2 // 32 * 32))
        hs, ws = (min_h, opt_h, max_h), (min_w, opt_w, max_w)
    else:
        hs, ws = (shape[2],) * 3, (shape[3],) * 3
    return EngineProfile(*((b[i], hs[i], ws[i]) for i in range(3)))


# ------------------------------------------------------------------------------------------------ the graph
@dataclass
class GraphInfo:
    """What the build needs to know about the ONNX graph, read without TensorRT."""

    path: Path
    props: dict[str, str]  # raw metadata_props
    spec: dict[str, Any]
    precision: str
    sha256: str
    has_merge_function: bool


def read_graph(onnx_path: str | Path) -> GraphInfo:
    """The pfcn metadata, precision and sha256 of an ONNX file; ArtifactError naming the file when it is not pfcn's."""
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and onnx errors
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(e).__name__}); is the file complete?") from None
    props = {p.key: p.value for p in proto.metadata_props}
    decoded = decode_metadata(props, str(path))
    if decoded["input_spec"].get("graph") != "e2e" or [i.name for i in proto.graph.input] != list(E2E_INPUTS):
        raise ArtifactError(f"{path}: engines are built from the e2e graph (inputs {list(E2E_INPUTS)}); export it "
                            "with pfcn-export --graph e2e")
    precision = str(props.get("precision", "fp32")).lower()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    merge = any((fn.domain, fn.name) == MERGE_FUNCTION for fn in proto.functions)
    return GraphInfo(path, props, decoded["input_spec"], precision, h.hexdigest(), merge)


def with_plugin_namespace(onnx_path: Path) -> bytes:
    """The graph with ``plugin_namespace`` set on its PanopticMerge nodes, so that the parser takes a registered
    plugin over the local function (it inlines the function otherwise)."""
    proto = onnx.load(str(onnx_path))
    for node in proto.graph.node:
        if (node.domain, node.op_type) == MERGE_FUNCTION and not any(a.name == "plugin_namespace"
                                                                     for a in node.attribute):
            node.attribute.append(onnx.helper.make_attribute("plugin_namespace", MERGE_FUNCTION[0]))
    return proto.SerializeToString()


def merge_plugin_registered(trt) -> bool:
    """A plugin creator ``pfcn::PanopticMerge`` (version 1) is in TensorRT's registry."""
    registry = trt.get_plugin_registry()
    return registry.get_creator(MERGE_FUNCTION[1], "1", MERGE_FUNCTION[0]) is not None


# ------------------------------------------------------------------------------------------------ progress
def make_progress_monitor(trt):
    """A TensorRT IProgressMonitor that shows the builder's phases as tqdm bars."""
    from tqdm import tqdm

    class BuildProgress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=len(self.bars),
                                         leave=False, dynamic_ncols=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return BuildProgress()


class Spinner:
    """Elapsed-time display for builders without IProgressMonitor."""

    def __init__(self, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(desc=desc, bar_format="{desc}: {elapsed}", dynamic_ncols=True)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)

    def _tick(self) -> None:
        while not self.done.wait(1.0):
            self.bar.refresh()

    def __enter__(self) -> "Spinner":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self.bar.close()


# ------------------------------------------------------------------------------------------------ the build
def build_command(onnx_path: Path, out: Path, precision: str | None, weakly_typed: bool, workspace: float | None,
                  timing_cache: str | Path | None, profile: EngineProfile | None, max_batch: int) -> str:
    """The pfcn-export command that rebuilds this engine (stored in the sidecar for the runtime's messages)."""
    cmd = ["pfcn-export", "--format", "engine", "--onnx", str(onnx_path), "--out", str(out)]
    if precision:
        cmd += ["--precision", precision]
    if weakly_typed:
        cmd += ["--weakly-typed"]
    if workspace:
        cmd += ["--workspace", f"{workspace:g}"]
    if timing_cache:
        cmd += ["--timing-cache", str(timing_cache)]
    if profile is not None:
        cmd += ["--profile"] + ["x".join(str(d) for d in s) for s in (profile.min, profile.opt, profile.max)]
    if max_batch != 1:
        cmd += ["--max-batch", str(max_batch)]
    return shlex.join(cmd)


def resolve_precision(graph: GraphInfo, precision: str | None, weakly_typed: bool, major: int) -> str:
    """The engine's precision, checked against the graph and the TensorRT version (pure, testable without TRT)."""
    if precision is not None and precision not in PRECISIONS:
        raise EngineBuildError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if weakly_typed:
        if major >= 11:
            raise EngineBuildError("--weakly-typed: TensorRT 11 has no builder precision flags (every network is "
                                   "strongly typed); build from a graph that carries its precision (an FP16 graph "
                                   "or an INT8 Q/DQ graph) without --weakly-typed")
        want = precision or graph.precision
        if want == "int8" and graph.precision != "int8":
            raise EngineBuildError(f"--precision int8: {graph.path} has no Q/DQ nodes (precision "
                                   f"{graph.precision!r}) and pfcn does not calibrate inside TensorRT; build from "
                                   "the INT8 Q/DQ graph")
        return want
    if precision is not None and precision != graph.precision:
        hint = " or, on TensorRT 10, add --weakly-typed to use the builder's precision flags" if major == 10 else ""
        raise EngineBuildError(f"--precision {precision}: {graph.path} is a {graph.precision} graph and a strongly "
                               f"typed build keeps the graph's precision; build from a {precision} graph{hint}")
    return graph.precision


def build_engine(onnx_path: str | Path, out: str | Path, precision: str | None = None, workspace: float | None = None,
                 timing_cache: str | Path | None = None, profiles: Sequence[EngineProfile] | None = None,
                 max_batch: int = 1, weakly_typed: bool = False, device: str = "cuda",
                 progress: bool = True) -> Path:
    """Build ``out`` (a TensorRT plan) and its JSON sidecar from a pfcn e2e ONNX graph; return ``out``.

    Args:
        precision: None = the graph's own ("precision" metadata, default fp32). With a strongly typed network
            (the default) it must equal the graph's; on TensorRT 10 ``weakly_typed=True`` lets fp16/int8 set the
            builder's precision flags instead.
        workspace: the builder's workspace limit in GiB (None: TensorRT's default, all device memory).
        timing_cache: a tactic timing cache file, read when present and updated after the build.
        profiles: one EngineProfile (MIN, OPT, MAX of the images input), or None to derive it from the graph's
            metadata (its dynamic H/W range, batch 1..``max_batch`` for a dynamic-batch graph).
        max_batch: the largest batch of a dynamic-batch graph when no profile is given.
        device: the GPU to build for ("cuda" or "cuda:i").
    """
    graph = read_graph(onnx_path)
    out = Path(out)
    if out.suffix.lower() not in (".engine", ".plan", ".trt"):
        raise EngineBuildError(f"--out {out}: an engine file ends in .engine, .plan or .trt")
    if profiles is not None and len(profiles) > 1:
        raise EngineBuildError("--profile: pfcn engines take one optimization profile (give MIN OPT MAX once)")
    profile = check_profile(profiles[0], graph.spec, str(graph.path)) if profiles else \
        default_profile(graph.spec, max_batch)
    trt = import_tensorrt()  # also refuses TensorRT versions pfcn does not support
    engine_precision = resolve_precision(graph, precision, weakly_typed, trt_major(trt))
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxBytes, \
        NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    if ":" in device:
        import torch

        torch.cuda.set_device(int(device.split(":")[1]))
    device_name, cc = gpu_properties(device)
    get_logger(trt)  # registers the std plugins (ModulatedDeformConv2d) before parsing
    strongly_typed = not weakly_typed
    if graph.has_merge_function and merge_plugin_registered(trt):
        network = NetworkFromOnnxBytes(with_plugin_namespace(graph.path), strongly_typed=strongly_typed)
        merge = "plugin pfcn::PanopticMerge"
    else:
        network = NetworkFromOnnxPath(str(graph.path), strongly_typed=strongly_typed)
        merge = "local function inlined by the parser"
    config_args: dict[str, Any] = {}
    if profile is not None:
        shapes = profile.shapes()
        poly = Profile()
        for name, (lo, mid, hi) in shapes.items():
            poly.add(name, min=lo, opt=mid, max=hi)
        config_args["profiles"] = [poly]
    if workspace:
        config_args["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(float(workspace) * 2**30)}
    if timing_cache and Path(timing_cache).is_file():
        config_args["load_timing_cache"] = str(timing_cache)
    monitor = make_progress_monitor(trt) if progress and hasattr(trt, "IProgressMonitor") else None
    if monitor is not None:
        config_args["progress_monitor"] = monitor
    if weakly_typed and trt_major(trt) == 10:
        if engine_precision == "fp16":
            config = CreateConfig(fp16=True, **config_args)
        elif engine_precision == "int8":
            config = CreateConfig(fp16=True, int8=True, **config_args)
        else:
            config = CreateConfig(**config_args)
    else:
        config = CreateConfig(**config_args)
    build = EngineBytesFromNetwork(network, config=config,
                                   save_timing_cache=str(timing_cache) if timing_cache else None)
    print(f"pfcn-export: building a TensorRT {trt.__version__} engine for {device_name} (sm {cc}) from "
          f"{graph.path} ({engine_precision}, {'strongly' if strongly_typed else 'weakly'} typed; PanopticMerge: "
          f"{merge}); this takes minutes", flush=True)
    start = time.perf_counter()
    try:
        if monitor is None and progress:
            with Spinner("building"):
                plan = build()
        else:
            plan = build()
    except PolygraphyException as e:
        raise EngineBuildError(f"{graph.path}: TensorRT could not build an engine ({str(e).strip()[:500]}); see "
                               "the TensorRT log above") from None
    data = bytes(plan)
    seconds = time.perf_counter() - start
    props: dict[str, Any] = dict(graph.props)
    props.update({
        "precision": engine_precision,
        "strongly_typed": strongly_typed,
        "tensorrt_version": trt.__version__,
        "compute_capability": cc,
        "device_name": device_name,
        "profiles": [profile.shapes()] if profile is not None else [],
        "onnx_sha256": graph.sha256,
        "onnx_file": graph.path.name,
        "build_seconds": round(seconds, 1),
        "build_command": build_command(graph.path, out, precision, weakly_typed, workspace, timing_cache, profile,
                                       max_batch),
    })
    return write_engine(out, data, props)


def write_engine(out: str | Path, plan: bytes, props: dict[str, Any]) -> Path:
    """Write the plan bytes untouched and its JSON sidecar (``props`` + the plan's size and sha256), each atomically;
    the sidecar goes last, so a plan without a matching sidecar is never taken for a complete engine."""
    out = Path(out)
    props = dict(props, engine_bytes=len(plan), engine_sha256=hashlib.sha256(plan).hexdigest())
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, plan)
    atomic_write_bytes(engine_sidecar(out), json.dumps(encode_metadata(props), indent=1).encode())
    return out


# ------------------------------------------------------------------------------------------------ CLI
def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The ``pfcn-export --format engine`` options (``--out`` is the exporter's own)."""
    g = parser.add_argument_group("TensorRT engine (--format engine)")
    g.add_argument("--onnx", metavar="SOURCE", help="the pfcn e2e ONNX graph to build the engine from")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="onnx: fp16 runs the FP16 pass on the exported graph (int8: pfcn-calibrate); engine: the "
                        "graph's own by default, must match it unless --weakly-typed; aoti: fp16 on cuda")
    g.add_argument("--weakly-typed", action="store_true",
                   help="TensorRT 10 only: a weakly typed network where --precision sets the builder's FP16/INT8 "
                        "flags (TensorRT 11 has no such flags)")
    g.add_argument("--workspace", type=float, default=None, metavar="GIB", help="builder workspace limit in GiB")
    g.add_argument("--timing-cache", metavar="FILE", help="tactic timing cache: read if present, updated after")
    g.add_argument("--profile", nargs=3, metavar=("MIN", "OPT", "MAX"),
                   help="optimization profile of the images input, each HxW or BxHxW (e.g. 1x320x320 1x640x640 "
                        "4x1344x1344); default: derived from the graph's dynamic range and --max-batch")
    g.add_argument("--max-batch", type=int, default=1, help="largest batch of a dynamic-batch graph (default 1)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars during the build")


def engine_from_args(args: argparse.Namespace) -> int:
    """Run ``pfcn-export --format engine`` from parsed arguments; returns the exit code."""
    if not getattr(args, "onnx", None):
        raise EngineBuildError("--format engine needs --onnx SOURCE (a graph from pfcn-export --format onnx)")
    out = Path(getattr(args, "out", None) or "model.engine")
    if out.suffix.lower() == ".onnx":  # the exporter's default --out
        out = out.with_suffix(".engine")
    profiles = None
    if args.profile:
        profiles = [EngineProfile(*(parse_shape(s) for s in args.profile))]
    device = getattr(args, "device", None) or "cuda"
    path = build_engine(args.onnx, out, precision=args.precision, workspace=args.workspace,
                        timing_cache=args.timing_cache, profiles=profiles, max_batch=args.max_batch,
                        weakly_typed=args.weakly_typed, device=device if device.startswith("cuda") else "cuda",
                        progress=not args.no_progress)
    size_mb = path.stat().st_size / 2**20
    print(f"pfcn-export: wrote {path} ({size_mb:.1f} MB) and {engine_sidecar(path).name}")
    print(f"next: pfcn-predict IMAGES --weights {path} --device cuda (or pfcn.runtime.open_model)")
    return 0
