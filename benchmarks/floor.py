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


def gemm_peak(threads: int | None, n: int = 2048, repeats: int = 8) -> dict[str, Any]:
    """The machine's float32 peak, measured: best of ``repeats`` ``torch.matmul`` of two n x n matrices."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        torch.matmul(a, b)  # warm-up (thread pool, caches)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return {"method": f"torch.matmul float32 {n}x{n} @ {n}x{n}, best of {repeats} after a warm-up",
            "threads": threads or previous, "n": n, "best_s": best, "peak_flops": 2.0 * n ** 3 / best}


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
