"""benchmarks/device_suite.sh on a machine without a GPU: its help, its argument check, and a clean stop at the
environment check (the GPU run itself is recorded in benchmarks/results/h200_2026-11-30/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SUITE = Path(__file__).resolve().parents[2] / "benchmarks" / "device_suite.sh"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SUITE), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_help_and_bad_arguments():
    out = run("--help")
    assert out.returncode == 0 and "--wheels DIR" in out.stdout and out.stdout.rstrip().endswith("python3).")
    bad = run("--turbo")
    assert bad.returncode == 2 and "unknown argument --turbo" in bad.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the suite runs for real")
def test_stops_cleanly_without_a_gpu(tmp_path):
    out = run("--python", sys.executable, "--out", str(tmp_path / "suite"))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "no CUDA device visible to torch" in out.stdout and "no usable GPU environment" in out.stdout
    summary = (tmp_path / "suite" / "summary.txt").read_text()
    assert summary.startswith("environment: rc=1")
