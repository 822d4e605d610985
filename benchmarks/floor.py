"""The compute floor: how many FLOPs a PanopticFCN forward needs, and how many FLOP/s this machine can do.

A row's "% of floor" is (model FLOPs / latency) / peak: the share of the machine's measured dense float32 GEMM rate
that the row achieves on the network's arithmetic. 100 % would mean the whole end-to-end time ran the network's
convolutions at GEMM speed; everything else (pre/post-processing, memory-bound ops, overheads) pulls it down.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

DEFORM_NOTE = ("torchvision deform_conv2d counted as its dense convolution (2 * N * Cout * Cin * kh * kw * Ho * Wo); "
               "the bilinear sampling of the offsets (about 10 FLOPs per sampled value) is not counted")
BYTES_NOTE = ("bytes = the sum of every operator's input and output tensor sizes (float32 weights included), i.e. the "
              "memory traffic of an unfused eager run; fused runtimes move less")


def _deform_conv_flops(*args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``torchvision::deform_conv2d`` (args are shapes): the dense conv with the same weights."""
    weight = args[1]
    b, cout, ho, wo = out_shape
    return 2 * b * ho * wo * cout * weight[1] * weight[2] * weight[3]


class _ByteCounter(TorchDispatchMode):
    """Adds up the sizes of every operator's tensor inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten((args, kwargs or {}, out))[0]:
            if isinstance(t, torch.Tensor):
                self.bytes += t.numel() * t.element_size()
        return out


def _custom_mapping() -> dict:
    try:
        import torchvision  # noqa: F401  (registers torch.ops.torchvision)

        return {torch.ops.torchvision.deform_conv2d: _deform_conv_flops}
    except (ImportError, AttributeError):  # pragma: no cover - torchvision is a dependency
        return {}


@torch.no_grad()
def count_network(model: torch.nn.Module, net_hw: tuple[int, int], batch: int = 1) -> dict[str, Any]:
    """FLOPs and bytes of ``model.forward_features`` on a ``batch x 3 x net_hw`` input, counted on the meta device
    (shapes only, no arithmetic: instant even for the R50 at 800x1344)."""
    meta_model = copy.deepcopy(model).to("meta").eval()
    x = torch.zeros(batch, 3, *net_hw, device="meta")
    flops = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    with flops:
        meta_model.forward_features(x)
    per_op = {str(k): int(v) for k, v in flops.get_flop_counts().get("Global", {}).items()}
    counter = _ByteCounter()
    with counter:
        meta_model.forward_features(x)
    return {"flops": int(flops.get_total_flops()), "bytes": int(counter.bytes), "per_op_flops": per_op,
            "deform_conv": "counted" if any("deform" in k for k in per_op) else "absent"}


def _best_of(fn, repeats: int) -> float:
    fn()  # warm-up (thread pool, caches, packing)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _ort_matmul(n: int, threads: int | None):
    """A one-node ONNX Runtime MatMul session and its feed, or None without onnxruntime."""
    try:
        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in ("a", "b")],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {k: rng.standard_normal((n, n), dtype=np.float32) for k in ("a", "b")}
    return lambda: session.run(None, feed)


def gemm_peak(threads: int | None, n: int = 2048, repeats: int = 8) -> dict[str, Any]:
    """The machine's float32 peak, measured: the best of ``repeats`` n x n x n GEMMs in PyTorch (its BLAS) and in
    ONNX Runtime (MLAS); the faster library sets the peak (BLAS builds differ in which vector units they use)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        rates = {"torch.matmul": 2.0 * n ** 3 / _best_of(lambda: torch.matmul(a, b), repeats)}
    finally:
        torch.set_num_threads(previous)
    ort_run = _ort_matmul(n, threads)
    if ort_run is not None:
        rates["onnxruntime MatMul"] = 2.0 * n ** 3 / _best_of(ort_run, repeats)
    best = max(rates, key=rates.get)
    return {"method": f"float32 {n}x{n} @ {n}x{n} GEMM, best of {repeats} after a warm-up, fastest of "
                      f"{' / '.join(rates)} ({best})",
            "threads": threads or previous, "n": n, "rates_flops": rates, "peak_flops": rates[best]}


def gpu_gemm_peak(device: str, n: int = 8192, repeats: int = 10) -> dict[str, Any]:
    """The GPU's matrix peak per precision, measured: n x n x n products timed with CUDA events, best of ``repeats``.

    FP32 rows are held to the TF32 tensor-core rate: cuDNN runs FP32 convolutions in TF32 by default
    (``torch.backends.cudnn.allow_tf32``), so that is the rate the eager FP32 network can reach (the fast path's
    strict FP32 cannot).
    ``peak_flops`` is the FP16 rate (the fastest precision the rows use)."""
    dev = torch.device(device)
    rates: dict[str, float] = {}
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("fp16", torch.float16, False), ("bf16", torch.bfloat16, False),
                                  ("fp32", torch.float32, True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=dev, dtype=dtype)
            b = torch.randn(n, n, device=dev, dtype=dtype)
            torch.matmul(a, b)  # warm-up: kernel choice, clocks
            best = float("inf")
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                torch.matmul(a, b)
                end.record()
                end.synchronize()
                best = min(best, start.elapsed_time(end) / 1e3)
            rates[name] = 2.0 * n ** 3 / best
            del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
        torch.cuda.empty_cache()
    return {"method": f"{n}x{n} @ {n}x{n} matmul on {torch.cuda.get_device_name(dev)}, best of {repeats} after a "
                      "warm-up (CUDA events); fp32 = TF32 tensor cores, cuDNN's default for FP32 convolutions",
            "threads": None, "n": n, "by_precision": rates, "peak_flops": rates["fp16"]}


def cached_gemm_peak(cache: Path | None, key: str, threads: int | None) -> dict[str, Any]:
    """``gemm_peak`` measured once per machine, thread count and torch version; kept in ``cache`` (a JSON file)."""
    entries: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        try:
            entries = json.loads(cache.read_text())
        except (OSError, json.JSONDecodeError):
            entries = {}
    if key in entries:
        return dict(entries[key], cached=True)
    result = gemm_peak(threads)
    if cache is not None:
        entries[key] = result
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        tmp.replace(cache)
    return dict(result, cached=False)
