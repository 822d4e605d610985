"""The rows of a benchmark: one artifact (or the official baseline) at one input size, timed one iteration at a time.

Every row exposes ``step(images) -> (seconds, stages)`` so that the driver can interleave rows (one iteration of each
in turn): on a shared machine, load then slows every row alike and the ratios between rows stay meaningful.

What each row's end-to-end time includes (``includes``) is part of the result, so rows are compared knowingly.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pfcn.runtime.backend import Backend, batches, canvas_for

from .measure import clock, synchronizer

STAGES = ("host_copies", "preprocess", "network", "postprocess", "merge")
# ONNX node-name scopes of the network modules (the TorchScript exporter names nodes by module path).
NETWORK_SCOPES = ("/model/backbone/", "/model/semantic_fpn/", "/model/feature_encoder/", "/model/position_head/",
                  "/model/kernel_head/")


def to_host(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every output as a host numpy array (a device->host copy for CUDA tensors)."""
    host = {}
    for name, value in outputs.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        host[name] = np.asarray(value)
    return host


class BackendRow:
    """End to end through ``Backend.run``: canvas placement, the backend's run, outputs copied to host numpy."""

    includes = ("canvas placement (pfcn.contract.make_canvas), Backend.run (everything the artifact does: in-graph "
                "PIL-exact resize, network, post-processing, merge), outputs copied to host numpy")

    def __init__(self, backend: Backend, label: str, device: str = "cpu"):
        self.backend = backend
        self.label = label
        self.sync = synchronizer(device)

    def step(self, images: Sequence[np.ndarray]) -> tuple[float, dict[str, float]]:
        start = clock()
        for idx in batches(self.backend, images):
            canvas, sizes = canvas_for(self.backend, [images[i] for i in idx])
            to_host(self.backend.run(canvas, sizes))
        self.sync()
        return clock() - start, {}


class PyTorchStages:
    """The PyTorch backend's stages, timed by calling the model's own stage functions in ``forward``'s order.

    ``PanopticFCN.forward`` is ``preprocess`` -> ``forward_features`` -> ``postprocess`` (which calls the model's
    ``PanopticMerge``); this row calls exactly those on the backend's model, with a timing wrapper around the merge
    module, so "postprocess" excludes the merge. "host_copies" is canvas placement, host->device and device->host.
    """

    includes = ("canvas placement and host<->device copies, model.preprocess (in-graph PIL-exact resize + "
                "normalisation), model.forward_features, pfcn.inference.postprocess (merge timed separately)")

    def __init__(self, backend: Any, label: str, device: str = "cpu"):
        self.backend = backend
        self.model = backend.model
        self.label = label
        self.device = device
        self.sync = synchronizer(device)

    def step(self, images: Sequence[np.ndarray]) -> tuple[float, dict[str, float]]:
        import torch

        from pfcn.inference import postprocess

        stages: dict[str, float] = defaultdict(float)
        model, sync = self.model, self.sync
        total_start = clock()
        with torch.no_grad():
            for idx in batches(self.backend, images):
                t = clock()
                canvas, sizes = canvas_for(self.backend, [images[i] for i in idx])
                canvas_t = torch.as_tensor(canvas).to(self.device)
                sizes_t = torch.as_tensor(sizes).to(self.device)
                nets = [model.network_size(int(h), int(w)) for h, w in sizes.tolist()]
                net = (max(n[0] for n in nets), max(n[1] for n in nets))
                sync()
                stages["host_copies"] += clock() - t
                t = clock()
                x, resized = model.preprocess(canvas_t, sizes_t, net)
                sync()
                stages["preprocess"] += clock() - t
                t = clock()
                heads = model.forward_features(x)
                sync()
                stages["network"] += clock() - t
                merge = _TimedMerge(model.merge, sync)
                t = clock()
                out = postprocess(heads, model.thing_generator, model.stuff_generator, resized, sizes_t,
                                  tuple(canvas.shape[2:]), model.params, merge)
                sync()
                stages["postprocess"] += clock() - t - merge.seconds
                stages["merge"] += merge.seconds
                t = clock()
                to_host(out)
                stages["host_copies"] += clock() - t
        return clock() - total_start, dict(stages)


class _TimedMerge:
    """Calls the model's merge module and keeps the seconds it took (``postprocess`` accepts any callable)."""

    def __init__(self, merge: Callable, sync: Callable[[], None]):
        self.merge, self.sync, self.seconds = merge, sync, 0.0

    def __call__(self, *args: Any) -> Any:
        self.sync()
        start = clock()
        out = self.merge(*args)
        self.sync()
        self.seconds += clock() - start
        return out


class OfficialRow:
    """The official algorithm (``pfcn.benchmarks.official.OfficialBaseline``) on the PyTorch backend's weights,
    one image after another (the official inference handles batch size 1 only)."""

    includes = ("host PIL resize (detectron2 ResizeShortestEdge) + CHW tensor, normalisation and padding, "
                "model.forward_features (same modules and weights as the pytorch row), the official dynamic "
                "post-processing with its host syncs and the Python merge loop, panoptic map copied to host")

    def __init__(self, backend: Any, cfg: Any, label: str, device: str = "cpu"):
        from .official import OfficialBaseline

        self.baseline = OfficialBaseline(backend.model, cfg, device)
        self.label = label

    def step(self, images: Sequence[np.ndarray]) -> tuple[float, dict[str, float]]:
        stages: dict[str, float] = defaultdict(float)
        start = clock()
        for image in images:
            timings: dict[str, float] = {}
            self.baseline(image, timings)
            for k, v in timings.items():
                stages[k] += v
        return clock() - start, dict(stages)


class NetworkRow:
    """An ONNX ``--graph network`` export: the network (+ kernel fusion) alone, on the image resized on the host.

    The host resize (PIL) is done before the clock starts: this row measures what the graph computes, so that an
    end-to-end row of the same model minus this row is the time spent outside the network.
    """

    includes = ("Backend.run of the network graph (normalisation, network, thing/stuff kernel fusion) on the "
                "pre-resized canvas, outputs copied to host; the host resize is not timed")

    def __init__(self, backend: Any, label: str, min_size: int, max_size: int):
        self.backend = backend
        self.label = label
        self.min_size, self.max_size = min_size, max_size
        self._resized: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _prepare(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        key = id(images[0]) if len(images) == 1 else hash(tuple(id(i) for i in images))
        if key not in self._resized:
            from PIL import Image

            from pfcn.contract import make_canvas
            from pfcn.resize import shortest_edge_size_py

            resized = []
            for im in images:
                rh, rw = shortest_edge_size_py(im.shape[0], im.shape[1], self.min_size, self.max_size)
                resized.append(np.asarray(Image.fromarray(im).resize((rw, rh), Image.BILINEAR)))
            canvas, _ = make_canvas(resized, self.backend.info.fixed_hw)
            sizes = np.array([r.shape[:2] for r in resized], dtype=np.int64)
            self._resized[key] = canvas, sizes
        return self._resized[key]

    def step(self, images: Sequence[np.ndarray]) -> tuple[float, dict[str, float]]:
        canvas, sizes = self._prepare(images)
        step = max(1, self.backend.max_batch())
        start = clock()
        for s in range(0, len(images), step):
            to_host(self.backend.run(canvas[s: s + step], sizes[s: s + step]))
        return clock() - start, {}


def profile_by_stage(profile_json: str | Path, last_run_only: bool = False) -> dict[str, Any]:
    """Seconds per stage and per operator type from an ONNX Runtime profile of an end-to-end graph.

    Nodes under the network modules' scopes are "network"; nodes of the ``pfcn::PanopticMerge`` function are
    "merge"; the others are "preprocess" before the first network node ran and "postprocess" after it.
    Times are per run (the profile's node times divided by the number of runs it holds); ``last_run_only`` reads
    the last run alone (the first run of a session also allocates).
    """
    events = json.loads(Path(profile_json).read_text())
    nodes = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time")]
    run_starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if last_run_only and run_starts:
        nodes = [e for e in nodes if e["ts"] >= run_starts[-1]]
        run_starts = run_starts[-1:]
    runs = max(1, len(run_starts))
    first_network: dict[int, float] = {}  # per run (index into run_starts): when its first network node started
    for e in nodes:
        e["name"] = _original_node_name(str(e["name"]))
        if str(e["name"]).startswith(NETWORK_SCOPES):
            r = _run_index(e["ts"], run_starts)
            first_network[r] = min(first_network.get(r, float("inf")), e["ts"])
    stages: dict[str, float] = defaultdict(float)
    by_op: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for e in nodes:
        name = str(e["name"])[: -len("_kernel_time")]
        op = str(e.get("args", {}).get("op_name", "?"))
        if name.startswith(NETWORK_SCOPES):
            stage = "network"
        elif "PanopticMerge" in name:
            stage = "merge"
        else:
            before = e["ts"] < first_network.get(_run_index(e["ts"], run_starts), float("-inf"))
            stage = "preprocess" if before else "postprocess"
        seconds = float(e.get("dur", 0)) / 1e6 / runs
        stages[stage] += seconds
        by_op[stage][op] += seconds
    top = {s: dict(sorted(ops.items(), key=lambda kv: -kv[1])[:8]) for s, ops in by_op.items()}
    return {"runs": runs, "stages_s": dict(stages), "top_ops_s": top, "nodes": len(nodes) // runs}


# Prefixes ONNX Runtime puts on the nodes it rewrites (FP16 nodes run in FP32 on the CPU provider get casts around
# them and this prefix on their own name).
_REWRITE_PREFIXES = ("InsertedPrecisionFreeCast_",)


def _original_node_name(name: str) -> str:
    for prefix in _REWRITE_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _run_index(ts: float, run_starts: list[float]) -> int:
    """Which run of a profile an event at ``ts`` belongs to (runs are sequential)."""
    import bisect

    return max(0, bisect.bisect_right(run_starts, ts) - 1)
