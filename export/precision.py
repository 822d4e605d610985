"""FP16 graphs: a pass on an exported pfcn ``.onnx`` that casts the network to FP16 and keeps the rest in FP32.

TensorRT 11 builds every network strongly typed, so the dtypes in the ONNX graph decide precision. The conversion
itself is onnxconverter-common's ``convert_float_to_float16`` (a small pure-Python, well-kept converter; ModelOpt's
AutoCast does the same for TensorRT but pulls in NVIDIA's whole optimisation stack). What is pfcn's own here:

* the **block list**: only the convolutional network (backbone, FPN, semantic FPN, feature encoder, position and kernel
  heads) runs in FP16. Everything around it stays FP32, found by the exporter's module scopes (``/model/backbone/...``)
  rather than node numbers: the in-graph PIL-exact resize matrices and normalisation (FP16 would move pixels), the
  sigmoid/threshold comparisons and top-k that choose candidates, the cosine similarity and kernel fusion, the mask
  products and mask rescoring, and the merge (the ``pfcn::PanopticMerge`` local function, left untouched). Inside the
  network, the GroupNorm statistics (``InstanceNormalization`` / ``GroupNormalization``) stay FP32 (FP16 variance
  overflows; the per-channel affine after them is FP16), and the FPN's nearest/bilinear ``Resize`` nodes (their
  ``scales`` input must stay float32).
* two repairs of the converter's output: initializers shared by an FP16 and an FP32 node are split (the converter would
  keep one FP32 copy and feed it to an FP16 node), and FP32 -> FP16 -> FP32 round trips that the converter leaves
  between two blocked nodes are removed, so FP32 regions exchange exact FP32 values.

Inputs and outputs keep their dtypes; the pfcn metadata is copied with ``precision: fp16``.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import onnx
from onnx import TensorProto, helper

from pfcn.contract import ArtifactError, atomic_write_bytes, decode_metadata

# Module scopes of PanopticFCN's convolutional network, as the exporter names nodes (``/model/<module>/...``).
NETWORK_MODULES = ("backbone", "semantic_fpn", "feature_encoder", "position_head", "kernel_head")
# Ops kept in FP32 even inside the network: normalisation statistics, and Resize (its ``scales``/``roi`` inputs must
# stay float32, which the converter cannot express for one input of a node).
FP32_OPS = ("InstanceNormalization", "GroupNormalization", "LayerNormalization", "BatchNormalization", "Resize")
# ONNX domains of ops onnxconverter-common must not touch (pfcn's local functions).
FUNCTION_DOMAINS = ("pfcn",)


def network_scope(node_name: str) -> str | None:
    """The network module a node belongs to (by its exporter scope), or None for pre/post-processing nodes."""
    parts = node_name.split("/")
    # TorchScript exporter names: "/model/backbone/bottom_up/res2/res2.0/conv1/Conv"
    if len(parts) > 3 and parts[0] == "" and parts[1] == "model" and parts[2] in NETWORK_MODULES:
        return parts[2]
    return None


def fp32_block_list(model: onnx.ModelProto) -> list[str]:
    """Names of the top-level nodes that stay FP32; ArtifactError if the graph has no recognisable network."""
    blocked, in_network = [], 0
    for node in model.graph.node:
        if network_scope(node.name) is None or node.op_type in FP32_OPS or node.domain in FUNCTION_DOMAINS:
            blocked.append(node.name)
        elif node.op_type == "Conv":
            in_network += 1
    if in_network == 0:
        raise ArtifactError("no Conv node under the network scopes /model/{" + ",".join(NETWORK_MODULES) + "}/: "
                            "not a graph written by pfcn-export (or its node names were changed)")
    return blocked


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (the converter addresses nodes by name)."""
    seen: set[str] = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"pfcn_unnamed_{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def _network_submodel(model: onnx.ModelProto, region: list[onnx.NodeProto]) -> onnx.ModelProto:
    """The network region as a model of its own: inputs = tensors it reads from outside, outputs = what leaves it.

    Float initializers the region reads are copied into it (renamed when outside nodes read them too), so converting
    the region never changes a tensor that an FP32 node reads.
    """
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi for vi in list(inferred.graph.value_info) + list(graph.input) + list(graph.output)}
    inits = {i.name: i for i in graph.initializer}
    region_ids = {id(n) for n in region}
    produced = {o for n in region for o in n.output}
    outside_reads = {i for n in graph.node if id(n) not in region_ids for i in n.input}
    outside_reads |= {i for f in model.functions for n in f.node for i in n.input}
    graph_outputs = {o.name for o in graph.output}
    nodes, sub_inits, inputs, seen_inputs = [], [], [], set()
    renamed: dict[str, str] = {}
    for node in region:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        for k, name in enumerate(copy.input):
            if not name or name in produced:
                continue
            if name in inits:
                if name not in renamed:
                    new = f"{name}__fp16" if name in outside_reads else name
                    init = onnx.TensorProto()
                    init.CopyFrom(inits[name])
                    init.name = new
                    sub_inits.append(init)
                    renamed[name] = new
                copy.input[k] = renamed[name]
            elif name not in seen_inputs:
                if name not in types:
                    raise ArtifactError(f"tensor {name!r} entering the network has no inferred type; re-export")
                inputs.append(types[name])
                seen_inputs.add(name)
        nodes.append(copy)
    outputs = []
    for name in dict.fromkeys(o for n in region for o in n.output):
        if name in outside_reads or name in graph_outputs:
            if name not in types:
                raise ArtifactError(f"tensor {name!r} leaving the network has no inferred type; re-export")
            outputs.append(types[name])
    sub = helper.make_graph(nodes, "pfcn_network", inputs, outputs, sub_inits)
    out = helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    # Shared initializers that moved into the region under a new name stay in the main graph for the FP32 nodes;
    # the ones only the region read are dropped from it.
    keep = [i for i in graph.initializer if not (i.name in renamed and renamed[i.name] == i.name)]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return out


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Nodes in an order where each input is produced before it is read (Kahn's algorithm, stable)."""
    producers = {o: k for k, n in enumerate(nodes) for o in n.output if o}
    deps = [{producers[i] for i in n.input if i and i not in available and i in producers} for n in nodes]
    users: dict[int, list[int]] = defaultdict(list)
    for k, d in enumerate(deps):
        for j in d:
            users[j].append(k)
    remaining = [len(d) for d in deps]
    ready = [k for k, r in enumerate(remaining) if r == 0]
    order: list[int] = []
    import heapq

    heapq.heapify(ready)
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for u in users[k]:
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ArtifactError("the FP16 graph has a cycle; this is a pfcn bug, please report it")
    return [nodes[k] for k in order]


def _cast_to(node: onnx.NodeProto) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def _remove_round_trips(model: onnx.ModelProto, fp32_names: set[str]) -> int:
    """Replace ``Cast(FLOAT)(Cast(FLOAT16)(x))`` by ``x`` when ``x`` is FP32; returns the casts removed."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    drop: set[int] = set()
    for node in graph.node:
        if _cast_to(node) != TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is None or _cast_to(first) != TensorProto.FLOAT16 or first.input[0] not in fp32_names:
            continue
        if node.output[0] in outputs:  # keep the graph output's name: an Identity of the FP32 source
            node.op_type, node.input[0] = "Identity", first.input[0]
            del node.attribute[:]
        else:
            rename[node.output[0]] = first.input[0]
            drop.add(id(node))
    for node in graph.node:
        node.input[:] = [rename.get(i, i) for i in node.input]
    kept = [n for n in graph.node if id(n) not in drop]
    used = {i for n in kept for i in n.input} | outputs
    kept = [n for n in kept if not (_cast_to(n) == TensorProto.FLOAT16 and n.output[0] not in used)]
    removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    return removed


def _float32_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the tensors known to be FP32 (inputs, initializers, value_info, Cast(FLOAT) outputs)."""
    g = model.graph
    names = {i.name for i in g.initializer if i.data_type == TensorProto.FLOAT}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
            names.add(vi.name)
    names |= {n.output[0] for n in g.node if _cast_to(n) == TensorProto.FLOAT}
    return names


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger")
               for n in model.graph.node)


def is_fp16(model: onnx.ModelProto) -> bool:
    return any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer) or any(
        _cast_to(n) == TensorProto.FLOAT16 for n in model.graph.node)


def check_float_pfcn_graph(model: onnx.ModelProto, source: str) -> dict:
    """pfcn metadata of an FP32 graph; ArtifactError for a non-pfcn, already quantized or FP16 graph."""
    props = decode_metadata({p.key: p.value for p in model.metadata_props}, source)
    precision = props.get("precision", "fp32")
    if is_quantized(model) or precision not in ("fp32",):
        raise ArtifactError(f"{source}: this graph is already {precision if precision != 'fp32' else 'quantized'} "
                            "(it has Q/DQ or FP16 ops); start from the FP32 graph written by pfcn-export")
    if is_fp16(model):
        raise ArtifactError(f"{source}: this graph already holds FP16 tensors; start from the FP32 graph written by "
                            "pfcn-export")
    return props


def set_precision(model: onnx.ModelProto, precision: str, extra: dict[str, str] | None = None) -> None:
    """Set ``precision`` (and extra keys) in the graph's metadata_props, keeping everything else."""
    values = {"precision": precision, **(extra or {})}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    for key, value in kept + list(values.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def convert_fp16(model: onnx.ModelProto, source: str = "model", extra_fp32_nodes: Iterable[str] = ()
                 ) -> onnx.ModelProto:
    """The FP16 graph of an FP32 pfcn graph (see the module docstring). ``extra_fp32_nodes``: more nodes to keep."""
    try:
        from onnxconverter_common.float16 import convert_float_to_float16
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ArtifactError("FP16 conversion needs onnxconverter-common: pip install 'onnxconverter-common>=1.14'"
                            ) from e
    check_float_pfcn_graph(model, source)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    _name_nodes(model)
    blocked = set(fp32_block_list(model)) | set(extra_fp32_nodes)
    graph = model.graph
    # The region in FP16: network nodes not blocked by name. Network nodes blocked for their op type (GroupNorm
    # statistics, Resize) are converted with the region, as FP32 islands inside it (the converter's op block list).
    region = [n for n in graph.node if network_scope(n.name) is not None and n.domain not in FUNCTION_DOMAINS
              and (n.name not in blocked or n.op_type in FP32_OPS) and n.name not in set(extra_fp32_nodes)]
    sub = _network_submodel(model, region)
    with warnings.catch_warnings():  # "the float32 number 1e-8 will be truncated to 1e-7": tiny weights, expected
        warnings.simplefilter("ignore", UserWarning)
        sub16 = convert_float_to_float16(sub, keep_io_types=True, op_block_list=list(FP32_OPS),
                                         check_fp16_ready=False)
    _remove_round_trips(sub16, _float32_tensors(sub16))
    region_ids = {id(n) for n in region}
    nodes = [n for n in graph.node if id(n) not in region_ids] + list(sub16.graph.node)
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {
        i.name for i in sub16.graph.initializer}
    ordered = _toposort(nodes, available)
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(sub16.graph.initializer)
    del graph.value_info[:]
    _cast_mixed_inputs(model)
    converted = model
    set_precision(converted, "fp16")
    return converted


# Ops whose float inputs must share one type (the type parameter T of the ONNX schema).
_SAME_TYPE_OPS = {"Add", "Sub", "Mul", "Div", "MatMul", "Concat", "Sum", "Max", "Min", "Equal", "Less", "Greater",
                  "LessOrEqual", "GreaterOrEqual"}


def _cast_mixed_inputs(model: onnx.ModelProto) -> int:
    """Cast FP32 inputs to FP16 where an FP16 node of the network meets an FP32 value it did not see converted.

    The converter sees the network as a sub-model; values computed from shapes at run time (e.g. the coordinate
    maps of a dynamic-size graph) can reach a converted node in FP32. Returns the casts inserted.
    """
    inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    new_nodes, inserted = [], 0
    for node in model.graph.node:
        if node.op_type in _SAME_TYPE_OPS and network_scope(node.name) is not None:
            kinds = {types.get(i) for i in node.input if i}
            if TensorProto.FLOAT16 in kinds and TensorProto.FLOAT in kinds:
                for k, name in enumerate(node.input):
                    if types.get(name) == TensorProto.FLOAT:
                        cast = onnx.helper.make_node("Cast", [name], [f"{name}__fp16_{node.name}"],
                                                     name=f"{node.name}/cast_fp16_{k}", to=TensorProto.FLOAT16)
                        new_nodes.append(cast)
                        node.input[k] = cast.output[0]
                        inserted += 1
        new_nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    return inserted


def convert_fp16_file(src: str | Path, dst: str | Path) -> Path:
    """``convert_fp16`` from file to file (written atomically)."""
    from .onnx_export import load_onnx

    model = load_onnx(src)
    out = convert_fp16(model, str(src))
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(dst, out.SerializeToString())


def main(argv: list[str] | None = None) -> int:
    """``python -m pfcn.export.precision IN.onnx OUT.onnx``: the FP16 pass on an exported graph."""
    import sys

    from pfcn.arguments import run_cli

    def _run(args: list[str] | None) -> int:
        args = sys.argv[1:] if args is None else args
        if len(args) != 2:
            raise ValueError("usage: python -m pfcn.export.precision FP32.onnx FP16.onnx")
        out = convert_fp16_file(args[0], args[1])
        print(f"wrote {out} ({os.path.getsize(out) / 2**20:.1f} MB, fp16)")
        return 0

    return run_cli(_run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
