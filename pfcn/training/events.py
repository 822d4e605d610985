"""Training events: JSON lines, TensorBoard scalars, console lines with ETA, and the loss-curve picture.

Every record is a flat dict of floats keyed by name plus its ``iteration``: the number of iterations done (1 after
the first), the count the console shows ("iter N/MAX"). Checkpoint files keep detectron2's 0-based names, so the
record of iteration N describes the weights of ``model_{N-1:07d}.pth``.
`MetricsLog` appends them to OUTPUT/metrics.jsonl (one JSON object per line, detectron2's ``metrics.json`` idea)
and, when a run resumes, first drops the records of iterations the resumed run will redo, so the file describes one
uninterrupted run. `TensorBoardLog` mirrors the scalars under OUTPUT/tb. `EtaMeter` turns iteration times into a
remaining-time estimate that stays steady on a machine whose load comes and goes. `plot_loss_curve` draws
OUTPUT/loss_curve.png from the JSON lines.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["MetricsLog", "TensorBoardLog", "EtaMeter", "format_seconds", "read_metrics", "plot_loss_curve",
           "LOSS_KEYS"]

LOSS_KEYS = ("loss_pos_th", "loss_pos_st", "loss_seg_th", "loss_seg_st")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line, from a killed run, is ignored)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "iteration" in rec:
            records.append(rec)
    return records


class MetricsLog:
    """Append-only JSON lines; a run resumed after ``start_iter`` iterations drops the records of later ones.

    Args:
        path: OUTPUT/metrics.jsonl.
        start_iter: iterations already done when this run starts (0 for a fresh run: any old file is replaced).
    """

    def __init__(self, path: str | Path, start_iter: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = [r for r in read_metrics(self.path) if int(r["iteration"]) <= start_iter] if start_iter else []
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        try:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def write(self, record: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(record)) + "\n")
            f.flush()


class TensorBoardLog:
    """Scalars under OUTPUT/tb (``torch.utils.tensorboard``), stepped by iterations done; events after
    ``start_iter``, left by a killed run, are purged on resume."""

    def __init__(self, folder: str | Path, start_iter: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard is slow to import

        self.writer = SummaryWriter(str(folder), purge_step=start_iter + 1 if start_iter else None)

    def write(self, record: Mapping[str, Any]) -> None:
        step = int(record["iteration"])
        for key, value in record.items():
            if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def format_seconds(seconds: float) -> str:
    """``1:02:03`` / ``2:03``: hours only when needed."""
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class EtaMeter:
    """Iteration timing: the recent speed for the log, and a steady remaining-time estimate.

    ``seconds_per_iter`` is the median of the last ``recent`` iterations (what the machine does now). The ETA uses the
    mean over the last ``window`` iterations instead: on a shared machine short bursts of load make the recent median
    jump by an order of magnitude (an ETA swinging between minutes and hours), while the long mean moves only as
    fast as the real throughput does. Pauses (evaluation, checkpoints) are excluded from both.
    """

    def __init__(self, max_iter: int, window: int = 500, recent: int = 20):
        self.max_iter = int(max_iter)
        self.times: deque[float] = deque(maxlen=max(1, window))
        self.recent = max(1, recent)
        self._last: float | None = None

    def add(self, seconds: float) -> None:
        """Record the duration of one iteration."""
        self.times.append(float(seconds))

    def step(self) -> float:
        """Mark the end of an iteration; returns its duration (0 for the first)."""
        now = time.perf_counter()
        dt = 0.0 if self._last is None else now - self._last
        if self._last is not None:
            self.add(dt)
        self._last = now
        return dt

    def pause(self) -> None:
        """Exclude the time until the next ``step`` (evaluation, checkpointing)."""
        self._last = None

    def seconds_per_iter(self) -> float:
        """Median duration of the most recent iterations (NaN before the first)."""
        if not self.times:
            return float("nan")
        ordered = sorted(list(self.times)[-self.recent:])
        return ordered[len(ordered) // 2]

    def mean_seconds_per_iter(self) -> float:
        """Mean duration over the long window (NaN before the first)."""
        return sum(self.times) / len(self.times) if self.times else float("nan")

    def eta(self, done: int) -> float:
        """Seconds left after ``done`` iterations, at the long-window mean speed."""
        return self.mean_seconds_per_iter() * max(0, self.max_iter - done)


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what exists)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_loss_curve(records: Iterable[Mapping[str, Any]], out: str | Path, title: str = "") -> Path:
    """Draw total and per-term losses (and PQ of the periodic evaluations, if any) against the iteration.

    Written atomically as a PNG with matplotlib's Agg backend (no display needed).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    records = list(records)
    train = [r for r in records if "total_loss" in r]
    evals = [r for r in records if "eval/PQ" in r]
    if not train:
        raise ValueError(f"no training losses to plot for {out}")
    its = [int(r["iteration"]) for r in train]
    window = max(1, len(train) // 25)
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    for key, style in (("total_loss", dict(color="black", lw=2.0)),) + tuple(
            (k, dict(lw=1.0)) for k in LOSS_KEYS):
        ys = [float(r[key]) for r in train if key in r]
        if len(ys) == len(its):
            ax.plot(its, _smooth(ys, window), label=key, **style)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"loss (moving average of {window} log points)" if window > 1 else "loss")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if evals:
        ax2 = ax.twinx()
        line, = ax2.plot([int(r["iteration"]) for r in evals], [float(r["eval/PQ"]) for r in evals], "o--",
                         color="tab:purple", label="PQ (held-out)")
        ax2.set_ylabel("PQ")
        ax2.set_ylim(0, 100)
        handles.append(line)
        labels.append("PQ (held-out)")
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(title or "pfcn-train losses")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out)
    return out
