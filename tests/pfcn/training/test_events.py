"""Training events: the remaining-time estimate under changing load, and metrics files on resume."""

from __future__ import annotations

import json
from pathlib import Path

from pfcn.training.events import EtaMeter, MetricsLog, read_metrics


def _bursty(n: int) -> list[float]:
    """Iteration times on a shared machine: 25 fast iterations, then 25 twenty times slower, and so on."""
    return [0.1 if (k // 25) % 2 == 0 else 2.0 for k in range(n)]


def test_eta_is_steady_under_bursts_of_load():
    meter = EtaMeter(max_iter=2000)
    etas = []
    for done, seconds in enumerate(_bursty(1000), start=1):
        meter.add(seconds)
        if done >= 100:
            etas.append(meter.eta(done) / (2000 - done))  # seconds per remaining iteration the ETA assumes
    assert max(etas) / min(etas) < 1.5, (min(etas), max(etas))
    # The recent speed (what the log line shows as s/it) still follows the load.
    assert meter.seconds_per_iter() in (0.1, 2.0)


def test_eta_follows_a_lasting_change_of_speed():
    meter = EtaMeter(max_iter=5000, window=200)
    for _ in range(300):
        meter.add(1.0)
    for _ in range(400):
        meter.add(0.25)
    assert abs(meter.eta(700) - 0.25 * 4300) < 1e-6


def test_metrics_log_keeps_the_iterations_done_before_a_resume(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"iteration": i, "total_loss": 1.0 / i}) + "\n" for i in range(1, 9)))
    MetricsLog(path, start_iter=4)  # resumed after 4 iterations: records 5.. are redone
    assert [r["iteration"] for r in read_metrics(path)] == [1, 2, 3, 4]
    MetricsLog(path, start_iter=0)  # a fresh run
    assert read_metrics(path) == []
