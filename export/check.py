"""``pfcn-export --check``: is an ONNX graph valid, and will TensorRT's ONNX parser take it?

The ONNX checker (full check) and strict shape inference answer the first question. The second is answered by a table
of the operators TensorRT 10.x/11.x parses, with the restrictions that matter for pfcn's graphs, read from
onnx-tensorrt's operator support list and the TensorRT changelog (see ../shared/design/tensorrt.md). The report
names every operator, its first supporting TensorRT version, each violated restriction, and the minimum version the
whole graph needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

BASE = (10, 0)
# op -> (first TensorRT version whose ONNX parser supports it as pfcn uses it, note)
TRT_OPS: dict[str, tuple[tuple[int, int], str]] = {op: (BASE, "") for op in (
    "Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant ConstantOfShape Conv "
    "ConvTranspose Div Einsum Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm "
    "GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual Identity If InstanceNormalization LayerNormalization Less "
    "LessOrEqual Log Loop MatMul Max MaxPool Mean Min Mod Mul Neg Not OneHot Or Pad Pow Range Reciprocal ReduceL1 "
    "ReduceL2 ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize "
    "Round ScatterElements ScatterND Shape Sigmoid Sign Size Slice Softmax Split Sqrt Squeeze Sub Sum Tanh Tile TopK "
    "Transpose Trilu Unsqueeze Where Xor CumSum GridSample QuantizeLinear DequantizeLinear").split()}
TRT_OPS.update({
    "DeformConv": ((10, 1), "parsed into the ModulatedDeformConv2d plugin: FP32/FP16 only, needs libnvinfer_plugin "
                            "loaded (trt.init_libnvinfer_plugins)"),
    "GroupNormalization": ((10, 9), "opset-21 per-channel scale/bias form"),
    "NonZero": (BASE, "data-dependent output shape: needs an IOutputAllocator; pfcn graphs must not contain it"),
})
UNSUPPORTED = {"Unique": "not supported by the TensorRT ONNX parser"}
FORBIDDEN_IN_PFCN = {"NonZero", "Unique"}  # data-dependent shapes: the static formulation never needs them
OPSET_TRT = [(20, (10, 0)), (24, (10, 15)), (25, (11, 5))]  # highest default-domain opset each version parses
TOPK_MAX = 3840
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
LARGE_CONSTANT = 1 << 16  # bytes; duplicates of constants this big are reported


@dataclass
class OpReport:
    op: str
    count: int
    min_trt: tuple[int, int] | None  # None = unsupported
    notes: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    path: str
    opset: int
    onnx_ok: bool
    shape_inference_ok: bool
    errors: list[str]
    ops: list[OpReport]
    problems: list[str]  # TensorRT incompatibilities
    warnings: list[str]
    min_trt: tuple[int, int] | None

    @property
    def ok(self) -> bool:
        return self.onnx_ok and self.shape_inference_ok and not self.problems and not self.errors

    def to_text(self) -> str:
        lines = [f"pfcn-export --check {self.path}",
                 f"  ONNX full check: {'ok' if self.onnx_ok else 'FAILED'}",
                 f"  shape inference: {'ok' if self.shape_inference_ok else 'FAILED'}",
                 f"  opset: {self.opset}"]
        lines += [f"  error: {e}" for e in self.errors]
        lines.append(f"  {'op':<22}{'count':>6}  {'TensorRT':<9} notes")
        for r in self.ops:
            trt = "NO" if r.min_trt is None else f">= {r.min_trt[0]}.{r.min_trt[1]}"
            lines.append(f"  {r.op:<22}{r.count:>6}  {trt:<9} {'; '.join(r.notes)}")
        lines += [f"  PROBLEM: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        verdict = ("no unsupported op; minimum TensorRT " + f"{self.min_trt[0]}.{self.min_trt[1]}") if self.ok and \
            self.min_trt else "NOT compatible with TensorRT as is"
        lines.append(f"  verdict: {verdict}")
        return "\n".join(lines)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = _attr(node, "value")
            if value is not None:
                out[node.output[0]] = numpy_helper.to_array(value)
    return out


def qdq_problems(model: onnx.ModelProto, constants: dict[str, np.ndarray] | None = None) -> list[str]:
    """TensorRT's explicit-quantization rules for every Q/DQ node (empty list: all kept).

    TensorRT parses only symmetric quantization: every zero point present and 0, INT8 (not UINT8) quantized tensors
    (a missing zero point means UINT8 in ONNX), positive float scales; weights (a DequantizeLinear of an initializer
    feeding a Conv's weight input) per-channel on axis 0, one scale per output channel. Messages are capped per rule.
    """
    constants = _constants(model) if constants is None else constants
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: dict[str, list[str]] = {}

    def bad(rule: str, text: str) -> None:
        found.setdefault(rule, []).append(text)

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or node.domain not in ("", "ai.onnx"):
            continue
        name = node.name or node.output[0]
        quantize = node.op_type == "QuantizeLinear"
        scale = constants.get(node.input[1]) if len(node.input) > 1 else None
        zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        zp = constants.get(zp_name) if zp_name else None
        out_dtype = _attr(node, "output_dtype", 0) if quantize else 0
        if zp_name is None:
            if not (quantize and out_dtype == onnx.TensorProto.INT8):
                bad("zero_point", f"{node.op_type} {name}: no zero point (ONNX then means UINT8); "
                                  "TensorRT needs an INT8 zero point of 0")
        elif zp is None:
            bad("zero_point", f"{node.op_type} {name}: zero point {zp_name!r} is not a constant")
        else:
            if zp.dtype == np.uint8:
                bad("uint8", f"{node.op_type} {name}: UINT8 quantization (TensorRT takes INT8 only; "
                             "this is the CPU U8S8 form)")
            elif zp.dtype not in (np.int8,) and zp.dtype != np.int32:
                bad("dtype", f"{node.op_type} {name}: quantized type {zp.dtype} (TensorRT INT8 graphs use int8)")
            if np.any(zp != 0):
                bad("zero_point", f"{node.op_type} {name}: non-zero zero point (asymmetric); TensorRT requires 0")
            if zp.dtype == np.int32 and not quantize:
                bad("dtype", f"DequantizeLinear {name}: INT32 input (a quantized bias); TensorRT dequantizes "
                             "INT8 only: keep the bias in float")
        if scale is None:
            bad("scale", f"{node.op_type} {name}: scale is not a constant")
            continue
        if scale.dtype not in (np.float32, np.float16) or np.any(scale <= 0):
            bad("scale", f"{node.op_type} {name}: scales must be positive float32/float16")
        if not quantize and node.input[0] in constants and constants[node.input[0]].ndim == 4:
            weight = constants[node.input[0]]
            feeds_weight = any(c.op_type == "Conv" and len(c.input) > 1 and c.input[1] == node.output[0]
                               for c in consumers.get(node.output[0], []))
            if feeds_weight and weight.shape[0] > 1:
                axis = _attr(node, "axis", 1)
                if scale.ndim != 1 or scale.shape[0] != weight.shape[0] or axis != 0:
                    bad("per_channel", f"DequantizeLinear {name}: weight {list(weight.shape)} needs per-channel "
                                       f"scales on axis 0 ({weight.shape[0]}); got {list(scale.shape)} on axis {axis}")
    out = []
    for rule, items in found.items():
        out += [f"Q/DQ: {t}" for t in items[:3]]
        if len(items) > 3:
            out.append(f"Q/DQ: ... and {len(items) - 3} more nodes breaking the same rule ({rule})")
    return out


def check_onnx(path: str | Path) -> CheckReport:
    """Check an ONNX file; see the module docstring. Raises ValueError if the file is not an ONNX model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # onnx raises DecodeError or google.protobuf errors for non-ONNX bytes
        raise ValueError(f"{path}: not an ONNX model ({type(e).__name__}: {e})") from e
    if not model.graph.node:
        raise ValueError(f"{path}: not an ONNX model (empty graph)")
    errors, problems, warnings = [], [], []
    onnx_ok = shape_ok = True
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        onnx_ok = False
        errors.append(f"ONNX checker: {str(e).splitlines()[0]}")
    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except Exception as e:  # InferenceError
        shape_ok = False
        errors.append(f"shape inference: {str(e).splitlines()[0]}")

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    constants = _constants(model)
    functions = {(f.domain, f.name): f for f in model.functions}
    for f in model.functions:  # constants inside local function bodies
        for node in f.node:
            if node.op_type == "Constant" and node.output and _attr(node, "value") is not None:
                constants[node.output[0]] = numpy_helper.to_array(_attr(node, "value"))
    counts: dict[str, int] = {}
    notes: dict[str, set[str]] = {}
    all_nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    for node in all_nodes:
        if (node.domain, node.op_type) in functions:
            body = functions[(node.domain, node.op_type)]
            key = f"{node.domain}::{node.op_type}"
            counts[key] = counts.get(key, 0) + 1
            notes.setdefault(key, set()).add(
                f"ONNX local function of {len(body.node)} standard-op nodes: TensorRT inlines it, or uses a plugin "
                f"'{node.op_type}' registered in namespace '{node.domain}' (TensorRT >= 10.10 reads the domain)")
            continue
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[op] = counts.get(op, 0) + 1
        n = notes.setdefault(op, set())
        if node.op_type == "TopK":
            k = constants.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                problems.append(f"TopK {node.name}: K is not a constant (data-dependent output shape)")
            elif int(np.asarray(k).reshape(-1)[0]) >= TOPK_MAX:
                problems.append(f"TopK {node.name}: K={int(np.asarray(k).reshape(-1)[0])} >= {TOPK_MAX}")
            else:
                n.add(f"K <= {max(int(np.asarray(constants[node.input[1]]).reshape(-1)[0]), 0)} const")
            if _attr(node, "sorted", 1) != 1:
                problems.append(f"TopK {node.name}: sorted=0 is not supported")
        elif node.op_type == "Resize":
            mode = _attr(node, "mode", b"nearest")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            coord = _attr(node, "coordinate_transformation_mode", b"half_pixel")
            coord = coord.decode() if isinstance(coord, bytes) else coord
            if mode not in RESIZE_MODES:
                problems.append(f"Resize {node.name}: mode {mode!r} (TensorRT: nearest, linear)")
            if coord not in RESIZE_COORD:
                problems.append(f"Resize {node.name}: coordinate_transformation_mode {coord!r}")
            if _attr(node, "antialias", 0):
                problems.append(f"Resize {node.name}: antialias is not supported")
            n.add(f"{mode}/{coord}")
        elif node.op_type == "MaxPool":
            if len(node.output) > 1 and node.output[1]:
                problems.append(f"MaxPool {node.name}: the Indices output is not supported")
            if any(d != 1 for d in (_attr(node, "dilations") or [1])):
                problems.append(f"MaxPool {node.name}: dilations must be 1")
        elif node.op_type == "CumSum":
            if node.input[1] not in constants:
                problems.append(f"CumSum {node.name}: axis must be a build-time constant")
        elif node.op_type in ("Loop",):
            n.add("fixed trip count and fixed-shape carried state required")
        elif node.op_type == "Cast" and _attr(node, "to") == onnx.TensorProto.DOUBLE:
            warnings.append(f"Cast {node.name} to FLOAT64: TensorRT has no float64 tensors")
        elif node.op_type == "ScatterElements" and _attr(node, "reduction", b"none") not in (b"none", "none"):
            n.add("reduction goes through the ScatterElements plugin")

    reports = []
    min_trt: tuple[int, int] | None = BASE
    for op in sorted(counts):
        if op in FORBIDDEN_IN_PFCN:
            problems.append(f"{op}: data-dependent shape; pfcn graphs are static and must not contain it")
        if "::" in op and tuple(op.split("::", 1)) in functions:
            reports.append(OpReport(op, counts[op], (9, 0), sorted(notes.get(op, ()))))
            continue
        if op in UNSUPPORTED:
            reports.append(OpReport(op, counts[op], None, [UNSUPPORTED[op]]))
            problems.append(f"{op}: {UNSUPPORTED[op]}")
            continue
        if op not in TRT_OPS:
            reports.append(OpReport(op, counts[op], None, ["not in TensorRT's ONNX operator list (needs a plugin)"]))
            problems.append(f"{op}: not in TensorRT's ONNX operator list; a plugin named {op!r} must be registered")
            continue
        version, note = TRT_OPS[op]
        reports.append(OpReport(op, counts[op], version, ([note] if note else []) + sorted(notes.get(op, ()))))
        min_trt = max(min_trt, version) if min_trt else min_trt
    opset_trt = next((v for top, v in OPSET_TRT if opset <= top), None)
    if opset_trt is None:
        problems.append(f"opset {opset} is newer than any TensorRT release parses")
    elif min_trt:
        min_trt = max(min_trt, opset_trt)

    problems += qdq_problems(model, constants)

    seen: dict[str, str] = {}
    for init in model.graph.initializer:
        raw = init.raw_data
        if len(raw) >= LARGE_CONSTANT:
            digest = hashlib.sha1(raw).hexdigest()
            if digest in seen:
                warnings.append(f"initializers {seen[digest]} and {init.name} hold the same {len(raw)} bytes")
            seen.setdefault(digest, init.name)
    return CheckReport(str(path), opset, onnx_ok, shape_ok, errors, reports, problems, warnings,
                       min_trt if not problems else None)
