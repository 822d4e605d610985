"""Export PanopticFCN to a static ONNX graph, with the metadata an application needs to use it.

Both graph kinds (``export/graphs.py``) trace the model's own static forward, so the exported graph computes exactly
what ``pfcn-predict`` computes. The TorchScript-based exporter is used because it turns pfcn's fixed-trip loops and
constant-K TopKs into plain ONNX ops; torchvision's deformable conv becomes ONNX ``DeformConv`` (opset >= 19).
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

import pfcn
from pfcn.config import cfg_to_yaml, config_hash
from pfcn.contract import (E2E_INPUTS, NETWORK_INPUTS, NETWORK_OUTPUTS, OUTPUT_SETS, ArtifactError,
                           decode_metadata)
from pfcn.inference import PanopticMerge
from pfcn.metadata import CategoryMeta
from pfcn.model import PanopticFCN

from .graphs import EndToEndGraph, NetworkGraph
from .symbolics import DEFORM_CONV_OPSET, model_needs_deform, register_symbolics

MAX_SIDE = 16384  # a sanity bound on exported input sides
MAX_OPSET = 21
FUNCTION_DOMAIN = "pfcn"  # ONNX domain of pfcn's local functions = the plugin namespace that may replace them


class ExportError(ValueError):
    """Export arguments that cannot work; the message names the argument and the value."""


@dataclass(frozen=True)
class InputSpec:
    """What the graph's image input must look like."""

    graph: str  # "e2e" or "network"
    height: int | None  # fixed input height, None when dynamic
    width: int | None
    batch: int | None  # fixed batch, None when dynamic
    dynamic_range: tuple[int, int, int, int] | None  # (min_h, min_w, max_h, max_w) for dynamic graphs
    net_size: tuple[int, int] | None  # fixed network canvas, None when it follows the input


def check_export_args(model: PanopticFCN, graph: str, input_size: tuple[int, int] | None,
                      dynamic: tuple[int, int, int, int] | None, batch: int, dynamic_batch: bool,
                      opset: int) -> InputSpec:
    """Validate the export request and derive the input spec; raise ExportError naming what is wrong."""
    if graph not in ("e2e", "network"):
        raise ExportError(f"--graph {graph!r}: choose 'e2e' or 'network'")
    if model_needs_deform(model) and opset < DEFORM_CONV_OPSET:
        raise ExportError(f"--opset {opset}: this model has deformable convs, which ONNX expresses as DeformConv "
                          f"from opset {DEFORM_CONV_OPSET}; use --opset {DEFORM_CONV_OPSET} or higher")
    if not 9 <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset}: supported range is 9..{MAX_OPSET}")
    if batch < 1:
        raise ExportError(f"--batch {batch}: must be >= 1")
    if input_size is not None and dynamic is not None:
        raise ExportError("give either --input-size or --dynamic, not both")
    if graph == "network" and dynamic is not None:
        raise ExportError("--graph network takes a fixed --input-size (the resized, padded network canvas)")
    if dynamic is not None:
        min_h, min_w, max_h, max_w = dynamic
        for name, v in zip(("MIN_H", "MIN_W", "MAX_H", "MAX_W"), dynamic):
            if not 1 <= v <= MAX_SIDE:
                raise ExportError(f"--dynamic {name}={v}: must lie in 1..{MAX_SIDE}")
        if min_h > max_h or min_w > max_w:
            raise ExportError(f"--dynamic {dynamic}: the minimum exceeds the maximum")
        return InputSpec(graph, None, None, None if dynamic_batch else batch, tuple(dynamic), None)
    if input_size is None:
        input_size = (model.min_size_test, model.max_size_test)
    h, w = input_size
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ExportError(f"--input-size {h} {w}: each side must lie in 1..{MAX_SIDE}")
    div = model.size_divisibility
    if graph == "network":
        if h % div or w % div:
            raise ExportError(f"--input-size {h} {w}: the network graph takes the padded canvas, a multiple of {div}")
        net = (h, w)
    else:
        net = model.network_size(h, w)
    return InputSpec(graph, h, w, None if dynamic_batch else batch, None, net)


def metadata(model: PanopticFCN, cfg, meta: CategoryMeta, spec: InputSpec, opset: int,
             output_names: tuple[str, ...] = OUTPUT_SETS["all"]) -> dict[str, str]:
    """The ``metadata_props`` of an exported graph: everything needed to feed it and read it."""
    if spec.graph == "e2e":
        inputs = {
            "images": {"dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                       "shape": [spec.batch or "B", 3, spec.height or "H", spec.width or "W"],
                       "placement": "each image top-left at its original size, rest of the canvas ignored"},
            "sizes": {"dtype": "int64", "shape": [spec.batch or "B", 2], "meaning": "original (h, w) per image"},
        }
    else:
        inputs = {
            "images": {"dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                       "shape": [spec.batch or "B", 3, spec.height, spec.width],
                       "placement": "resized by the shortest-edge rule, top-left, zero elsewhere"},
            "resized_sizes": {"dtype": "int64", "shape": [spec.batch or "B", 2]},
        }
    input_spec = {
        "graph": spec.graph,
        "inputs": inputs,
        "dynamic_range": spec.dynamic_range,
        "net_size": spec.net_size,
        "normalization": {"model_channel_order": model.input_format,
                          "pixel_mean": model.pixel_mean.flatten().tolist(),
                          "pixel_std": model.pixel_std.flatten().tolist(),
                          "padding": "zeros after normalisation, to a multiple of 32"},
        "resize": {"rule": "shortest edge", "min_size_test": model.min_size_test,
                   "max_size_test": model.max_size_test,
                   "interpolation": "bilinear half-pixel, width then height, each pass rounded to 8 bits"},
        "size_divisibility": model.size_divisibility,
    }
    return {
        "pfcn_version": pfcn.__version__,
        "graph": spec.graph,
        "config": cfg_to_yaml(cfg),
        "config_hash": config_hash(cfg),
        "categories": json.dumps(meta.categories()),
        "thresholds": json.dumps(asdict(model.params)),
        "input_spec": json.dumps(input_spec),
        "output_names": json.dumps(list(output_names if spec.graph == "e2e" else NETWORK_OUTPUTS)),
        "opset": str(opset),
        "exported_with": f"torch {torch.__version__}, onnx {onnx.__version__}",
    }


def read_metadata(model_or_path: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """The pfcn metadata of an exported graph, JSON fields decoded (``pfcn.contract.decode_metadata``)."""
    if isinstance(model_or_path, onnx.ModelProto):
        proto, source = model_or_path, "model"
    else:
        proto, source = load_onnx(model_or_path, load_external_data=False), str(model_or_path)
    return decode_metadata({p.key: p.value for p in proto.metadata_props}, source)


def load_onnx(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    """``onnx.load`` with errors that name the file: missing, truncated or not ONNX at all."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as e:  # protobuf DecodeError, onnx errors
        raise ArtifactError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:200]}); "
                            "is the file complete?") from None


def _example_inputs(model: PanopticFCN, spec: InputSpec) -> tuple[torch.Tensor, torch.Tensor]:
    b = spec.batch or 2
    if spec.dynamic_range is not None:
        min_h, min_w, max_h, max_w = spec.dynamic_range
        h, w = (min_h + max_h) // 2, (min_w + max_w) // 2
    else:
        h, w = spec.height, spec.width
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=gen)
    if spec.graph == "e2e":
        sizes = torch.tensor([[h, w]] * b, dtype=torch.int64)
    else:
        from pfcn.resize import shortest_edge_size

        sizes = torch.minimum(shortest_edge_size(torch.tensor([[h, w]] * b), model.min_size_test,
                                                 model.max_size_test), torch.tensor([[h, w]]))
    return images, sizes


def _rename_function_domain(proto: onnx.ModelProto, domain: str) -> onnx.ModelProto:
    """Move pfcn's local functions (exported under their Python module's name) into one short domain."""
    old = {f.domain for f in proto.functions}
    if not old:
        return proto
    for f in proto.functions:
        f.domain = domain
    for node in proto.graph.node:
        if node.domain in old:
            node.domain = domain
    imports = [o for o in proto.opset_import if o.domain not in old]
    del proto.opset_import[:]
    proto.opset_import.extend(imports + [onnx.helper.make_opsetid(domain, 1)])
    return proto


def _rename_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Give every graph output its fixed name (the exporter leaves outputs of a local-function call unnamed)."""
    for output, name in zip(proto.graph.output, names):
        old = output.name
        if old == name:
            continue
        for node in proto.graph.node:
            node.output[:] = [name if o == old else o for o in node.output]
            node.input[:] = [name if i == old else i for i in node.input]
        output.name = name
    return proto


def export_onnx(model: PanopticFCN, cfg, meta: CategoryMeta, out: str | Path, graph: str = "e2e",
                input_size: tuple[int, int] | None = None, dynamic: tuple[int, int, int, int] | None = None,
                batch: int = 1, dynamic_batch: bool = False, opset: int = 19, outputs: str = "all") -> Path:
    """Export ``model`` to ``out`` and return the path.

    Args:
        graph: "e2e" (uint8 images + sizes -> panoptic result) or "network" (resized images -> kernels + feature).
        input_size: fixed input (H, W); default (MIN_SIZE_TEST, MAX_SIZE_TEST). For "network", the padded canvas.
        dynamic: (min_h, min_w, max_h, max_w) for a graph with dynamic H, W (e2e only).
        batch / dynamic_batch: fixed batch size, or a dynamic batch axis.
        outputs: the e2e graph's output set (``pfcn.contract.OUTPUT_SETS``): "all", or "panoptic" without the
            instance masks.
    """
    spec = check_export_args(model, graph, input_size, dynamic, batch, dynamic_batch, opset)
    if outputs not in OUTPUT_SETS:
        raise ExportError(f"--outputs {outputs!r}: choose one of {', '.join(OUTPUT_SETS)}")
    if graph != "e2e" and outputs != "all":
        raise ExportError(f"--outputs {outputs}: output sets are for the e2e graph (the network graph has its own)")
    register_symbolics()
    # A fresh copy per export: the TorchScript exporter's function extraction keeps per-module scope state and fails
    # (internal assert) when the same module instance is exported twice in one process.
    model = copy.deepcopy(model).eval().cpu()
    if graph == "e2e":
        module: torch.nn.Module = EndToEndGraph(model, meta, spec.net_size, OUTPUT_SETS[outputs])
        input_names, output_names = list(E2E_INPUTS), list(OUTPUT_SETS[outputs])
    else:
        module = NetworkGraph(model, model.params)
        input_names, output_names = list(NETWORK_INPUTS), list(NETWORK_OUTPUTS)
    dynamic_axes: dict[str, dict[int, str]] = {}
    if spec.batch is None:
        for name in input_names + output_names:
            dynamic_axes.setdefault(name, {})[0] = "batch"
    if spec.dynamic_range is not None:
        dynamic_axes.setdefault("images", {}).update({2: "height", 3: "width"})
        for name in ("panoptic", "semantic"):
            dynamic_axes.setdefault(name, {}).update({1: "height", 2: "width"})
        if "instance_masks" in output_names:
            dynamic_axes.setdefault("instance_masks", {}).update({2: "height", 3: "width"})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*will be removed.*")
        torch.onnx.export(module, _example_inputs(model, spec), str(tmp), dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes or None,
                          do_constant_folding=True, export_modules_as_functions={PanopticMerge})
    proto = _rename_outputs(_rename_function_domain(onnx.load(str(tmp)), FUNCTION_DOMAIN), output_names)
    for key, value in metadata(model, cfg, meta, spec, opset, tuple(output_names)).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "pfcn", pfcn.__version__
    onnx.save(proto, str(tmp))
    os.replace(tmp, out)
    return out
