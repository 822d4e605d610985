"""What a benchmark ran on: CPU model and instruction-set flags, cores, GPU and driver, library versions."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

# The /proc/cpuinfo flags that decide which kernels ONNX Runtime and PyTorch can use (the full list is long).
INTERESTING_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
                     "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info() -> dict[str, Any]:
    """CPU model, relevant flags and core counts (from /proc/cpuinfo where it exists)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "flags": [f for f in INTERESTING_FLAGS if f in flags],
            "logical_cores": os.cpu_count(), "usable_cores": usable, "machine": platform.machine()}


def gpu_info() -> dict[str, Any] | None:
    """Name, memory and driver of the first CUDA device, or None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    driver = None
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "driver": driver, "cuda": torch.version.cuda}


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "onnxruntime", "onnx", "numpy", "PIL", "tensorrt"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", None)
        except ImportError:
            versions[name] = None
    return versions


def machine_name() -> str:
    """A short file-name-safe name for the results files: the CPU (or GPU) model, lower case."""
    gpu = gpu_info()
    name = gpu["name"] if gpu else cpu_info()["model"]
    keep = "".join(c.lower() if c.isalnum() else "-" for c in name)
    return "-".join(p for p in keep.split("-") if p)[:48] or "machine"


def environment() -> dict[str, Any]:
    return {"cpu": cpu_info(), "gpu": gpu_info(), "libraries": library_versions(), "os": platform.platform()}
