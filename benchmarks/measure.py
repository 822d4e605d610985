"""Timing statistics and memory high-water marks, measured the same way for every row."""

from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

RSS_METHOD = ("peak resident set size of this process while the row ran: /proc/self/status VmHWM after resetting "
              "it through /proc/self/clear_refs (Linux); elsewhere resource.getrusage ru_maxrss, the process-wide "
              "high-water mark")


def latency_stats(times: list[float]) -> dict[str, float]:
    """p50/p90/p99, mean and min of a list of seconds (linear interpolation between order statistics)."""
    arr = np.asarray(times, dtype=np.float64)
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean()), "min": float(arr.min()),
            "n": int(arr.size)}


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class PeakRSS:
    """``with PeakRSS() as peak: ...`` then ``peak.mb``: the resident-set high-water mark inside the block."""

    def __enter__(self) -> "PeakRSS":
        self._resettable = _reset_hwm()
        self.mb = 0.0
        return self

    def __exit__(self, *exc) -> None:
        hwm = _vm_hwm_kb() if self._resettable else None
        kb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mb = kb / 1024.0


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _vm_hwm_kb() is not None
    except OSError:
        return False


def _vm_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class GpuPeak:
    """Peak CUDA memory allocated by PyTorch inside the block (MB), or None without CUDA."""

    def __init__(self, device: str):
        self.active = device.startswith("cuda")
        self.mb: float | None = None

    def __enter__(self) -> "GpuPeak":
        if self.active:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            import torch

            torch.cuda.synchronize()
            self.mb = torch.cuda.max_memory_allocated() / 2**20


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for the device (a no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return lambda: None


def clock() -> float:
    return time.perf_counter()
