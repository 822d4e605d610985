"""INT8 Q/DQ graphs from an FP32 pfcn graph with ONNX Runtime's static quantizer, and their calibration cache.

What is quantized: the convolutions of the network (backbone, FPN, semantic FPN, feature encoder, position and kernel
heads), found by the exporter's module scopes. Everything else stays float: the in-graph resize and normalisation,
GroupNorm, DeformConv (TensorRT's plugin runs FP32/FP16 only; it is not a ``Conv``), the kernel fusion, the mask
MatMuls and the merge. ``onnxruntime.quantization.quantize_static`` inserts the Q/DQ pairs (QDQ format, per-channel
weights on axis 0); pfcn only chooses the nodes, feeds the graph's own uint8 input and keys the cache.

Two targets from one calibration (the ranges do not depend on the target):

* ``tensorrt`` (S8S8): INT8 activations and weights, symmetric, zero point 0, float bias, Q/DQ only on the inputs of
  quantized Convs — what TensorRT parses and fuses.
* ``cpu`` (U8S8): UINT8 asymmetric activations, symmetric INT8 weights, INT32 bias — what ONNX Runtime runs fast on
  x86 (its QLinearConv path needs a Q on each Conv output); TensorRT rejects it (non-zero zero points).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import onnx

from pfcn.contract import ArtifactError, ArtifactInfo, atomic_write_bytes
from pfcn.export.precision import check_float_pfcn_graph, network_scope, set_precision

from .data import CanvasReader, ImageSet

TARGETS = ("tensorrt", "cpu")
METHODS = ("max", "entropy", "percentile")
CACHE_VERSION = 1


def _ort_quant():
    try:
        from onnxruntime import quantization
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ArtifactError("INT8 calibration needs onnxruntime (pip install onnxruntime)") from e
    return quantization


def calibrate_method(method: str):
    q = _ort_quant()
    table = {"max": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
             "percentile": q.CalibrationMethod.Percentile}
    if method not in table:
        raise ValueError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    return table[method]


def quantizable_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the network's Conv nodes (the ones INT8 may take), in graph order."""
    names = [n.name for n in model.graph.node if n.op_type == "Conv" and network_scope(n.name) is not None]
    if not names:
        raise ArtifactError("no Conv node under pfcn's network scopes: not a graph written by pfcn-export")
    return names


def inline_constant_identities(model: onnx.ModelProto) -> int:
    """Replace each ``Identity`` of an initializer by a copy of that initializer; returns how many were replaced.

    The exporter stores equal constants once and reads them through Identity nodes: every zero bias of a random or
    zero-initialised layer becomes one. ORT's quantizer cannot give such a Conv an INT32 bias, so ONNX Runtime does
    not fuse it into a QLinearConv and runs it in float (measured on the R50: the FPN and kernel-head convs, 0.3 s).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    keep, replaced = [], 0
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            replaced += 1
        else:
            keep.append(node)
    if replaced:
        del graph.node[:]
        graph.node.extend(keep)
    return replaced


def block_of(node_name: str) -> str:
    """The block a network node belongs to, for per-block sensitivity: backbone stage, FPN or head."""
    parts = node_name.split("/")
    scope = network_scope(node_name)
    if scope == "backbone":
        if len(parts) > 4 and parts[3] == "bottom_up":
            return f"backbone.{parts[4]}"  # stem, res2..res5
        return "fpn"
    return scope or "other"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class CacheKey:
    """What the calibration ranges depend on: the FP32 graph, the images, the method (not the target)."""

    model_sha256: str
    data_sha256: str
    method: str

    def file_name(self) -> str:
        return f"calib_{self.model_sha256[:16]}_{self.data_sha256[:16]}_{self.method}.json"

    def as_dict(self) -> dict[str, Any]:
        return {"version": CACHE_VERSION, "model_sha256": self.model_sha256, "data_sha256": self.data_sha256,
                "method": self.method}


def default_cache_dir() -> Path:
    base = os.environ.get("PFCN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pfcn")
    return Path(base) / "calibration"


@dataclass
class QuantizeResult:
    path: Path
    target: str
    method: str
    quantized: list[str]
    excluded: list[str]
    cache: Path
    cache_hit: bool
    seconds: dict[str, float] = field(default_factory=dict)


def target_options(target: str) -> dict[str, Any]:
    """quantize_static arguments of a target (see the module docstring)."""
    q = _ort_quant()
    if target == "tensorrt":
        return {"activation_type": q.QuantType.QInt8, "weight_type": q.QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                  # Q/DQ on the inputs of quantized Convs only (TensorRT's placement): no Q on a
                                  # Conv output, so head logits reach the float sigmoid/thresholds unquantized
                                  "OpTypesToExcludeOutputQuantization": ["Conv"]}}
    if target == "cpu":
        return {"activation_type": q.QuantType.QUInt8, "weight_type": q.QuantType.QInt8,
                "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True}}
    raise ValueError(f"--target {target!r}: choose one of {', '.join(TARGETS)}")


def _valid_cache(cache: Path, key: CacheKey) -> bool:
    """True if ``cache`` holds ranges for exactly this key (its sidecar says so)."""
    sidecar = cache.with_suffix(".key.json")
    if not (cache.is_file() and sidecar.is_file()):
        return False
    try:
        return json.loads(sidecar.read_text()) == key.as_dict()
    except (OSError, json.JSONDecodeError):
        return False


def quantize_int8(fp32: str | Path, out: str | Path, data: ImageSet, target: str = "tensorrt", method: str = "max",
                  exclude: Sequence[str] = (), cache_dir: str | Path | None = None,
                  percentile: float = 99.999) -> QuantizeResult:
    """Calibrate (or reuse the cached ranges) and write the INT8 Q/DQ graph of ``fp32`` to ``out``.

    Args:
        data: calibration images, fed as the graph's own uint8 input.
        exclude: Conv node names kept in float (e.g. from the sensitivity analysis).
        cache_dir: where calibration ranges are kept, keyed by model hash + data hash + method.
    """
    q = _ort_quant()
    fp32 = Path(fp32)
    from pfcn.export.onnx_export import load_onnx

    model = load_onnx(fp32)
    props = check_float_pfcn_graph(model, str(fp32))
    info = ArtifactInfo.from_metadata({p.key: p.value for p in model.metadata_props}, str(fp32))
    info.require_e2e()
    convs = quantizable_convs(model)
    unknown = sorted(set(exclude) - set(convs))
    if unknown:
        raise ValueError(f"--exclude: {', '.join(unknown[:5])} not among the graph's {len(convs)} network Conv nodes")
    quantized = [c for c in convs if c not in set(exclude)]
    opts = target_options(target)
    key = CacheKey(file_sha256(fp32), data.sha256(), method)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / key.file_name()
    hit = _valid_cache(cache, key)
    if not hit:
        cache.unlink(missing_ok=True)
    extra = dict(opts["extra_options"])
    extra["CalibStridedMinMax"] = 1  # one image per collection (CanvasReader.set_range): any sizes, bounded memory
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pfcn-int8-") as tmp:
        tmp_out = Path(tmp) / "int8.onnx"
        source = fp32
        if inline_constant_identities(model):
            source = Path(tmp) / "fp32_inlined.onnx"
            onnx.save(model, str(source))
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" warnings
        # Calibrate all network Convs whatever is excluded, so one cached calibration serves every subset.
        q.quantize_static(str(source), str(tmp_out), None if hit else CanvasReader(data, info),
                          quant_format=q.QuantFormat.QDQ, op_types_to_quantize=["Conv"], per_channel=True,
                          nodes_to_quantize=quantized, calibrate_method=calibrate_method(method),
                          activation_type=opts["activation_type"], weight_type=opts["weight_type"],
                          extra_options=extra, calibration_cache_path=str(cache),
                          calibration_providers=["CPUExecutionProvider"])
        seconds["quantize"] = time.perf_counter() - start
        if not hit:
            atomic_write_bytes(cache.with_suffix(".key.json"), json.dumps(key.as_dict()).encode())
        result = onnx.load(str(tmp_out))
    set_precision(result, "int8", {"quantization": json.dumps({
        "target": target, "method": method, "activations": "int8 symmetric" if target == "tensorrt" else
        "uint8 asymmetric", "weights": "int8 symmetric per-channel (axis 0)", "quantized_convs": len(quantized),
        "float_convs": sorted(exclude), "calibration_images": len(data.images), "calibration_source": data.source,
        "model_sha256": key.model_sha256, "data_sha256": key.data_sha256})})
    if props.get("precision", "fp32") != "fp32":  # pragma: no cover - refused above
        raise ArtifactError(f"{fp32}: not an FP32 graph")
    atomic_write_bytes(out, result.SerializeToString())
    return QuantizeResult(out, target, method, quantized, sorted(exclude), cache, hit, seconds)
