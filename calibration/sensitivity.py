"""Sensitivity analysis: which blocks (or layers) lose PQ when they alone run INT8, and auto-exclusion.

For each group (backbone stem and stages res2..res5, FPN, semantic FPN, feature encoder, position head, kernel head —
or every Conv with ``per_layer``), the graph is quantized with only that group in INT8, from the one cached
calibration, and scored against the reference results: ΔPQ = PQ(group INT8) - PQ(reference). ``auto_exclude`` then
starts from the fully quantized graph and keeps the worst groups in float, one at a time, until |ΔPQ| is within the
budget.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pfcn.contract import atomic_write_bytes
from pfcn.export.onnx_export import load_onnx
from pfcn.runtime import open_model

from .data import ImageSet
from .gates import panoptic_results, pq_of
from .int8 import block_of, quantizable_convs, quantize_int8


@dataclass
class SensitivityReport:
    target: str
    method: str
    budget: float
    pq_reference: float
    groups: dict[str, list[str]]  # group -> Conv node names
    delta_pq: dict[str, float]  # group -> ΔPQ with only this group in INT8
    steps: list[dict[str, Any]] = field(default_factory=list)  # auto-exclusion: kept-float groups -> ΔPQ
    kept_float: list[str] = field(default_factory=list)
    final_delta_pq: float | None = None
    within_budget: bool | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def to_markdown(self) -> str:
        lines = [f"# INT8 sensitivity ({self.target}, {self.method})", "",
                 f"Reference PQ {self.pq_reference:.2f}; budget |ΔPQ| <= {self.budget}.", "",
                 "| group | convs | ΔPQ (only this group INT8) |", "|---|---|---|"]
        for g, d in sorted(self.delta_pq.items(), key=lambda kv: kv[1]):
            lines.append(f"| {g} | {len(self.groups[g])} | {d:+.3f} |")
        if self.steps:
            lines += ["", "| kept in float | ΔPQ (rest INT8) |", "|---|---|"]
            for s in self.steps:
                lines.append(f"| {', '.join(s['kept_float']) or '(none)'} | {s['delta_pq']:+.3f} |")
            lines += ["", f"Kept in float: {', '.join(self.kept_float) or 'nothing'}; final ΔPQ "
                          f"{self.final_delta_pq:+.3f} ({'within' if self.within_budget else 'NOT within'} budget)."]
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        return (atomic_write_bytes(folder / "sensitivity.json", self.to_json().encode()),
                atomic_write_bytes(folder / "sensitivity.md", self.to_markdown().encode()))


def conv_groups(fp32: str | Path, per_layer: bool = False) -> dict[str, list[str]]:
    convs = quantizable_convs(load_onnx(fp32, load_external_data=False))
    groups: dict[str, list[str]] = {}
    for c in convs:
        groups.setdefault(c if per_layer else block_of(c), []).append(c)
    return groups


def _delta(path: Path, data: ImageSet, pq_reference: float) -> float:
    backend = open_model(path)
    try:
        return pq_of(panoptic_results(backend, data), data, backend)["PQ_All"] - pq_reference
    finally:
        backend.close()


def analyse(fp32: str | Path, calib: ImageSet, val: ImageSet, pq_reference: float, target: str = "tensorrt",
            method: str = "max", budget: float = 1.0, auto_exclude: bool = False, per_layer: bool = False,
            cache_dir: str | Path | None = None) -> SensitivityReport:
    """Per-group ΔPQ (and, with ``auto_exclude``, the float groups that bring |ΔPQ| within ``budget``)."""
    groups = conv_groups(fp32, per_layer)
    all_convs = [c for members in groups.values() for c in members]
    report = SensitivityReport(target, method, budget, pq_reference, groups, {})
    with tempfile.TemporaryDirectory(prefix="pfcn-sensitivity-") as tmp:
        path = Path(tmp) / "int8.onnx"
        for g, members in tqdm(groups.items(), desc="sensitivity", unit="group"):
            exclude = [c for c in all_convs if c not in set(members)]
            quantize_int8(fp32, path, calib, target, method, exclude=exclude, cache_dir=cache_dir)
            report.delta_pq[g] = _delta(path, val, pq_reference)
        if auto_exclude:
            order = sorted(groups, key=lambda g: report.delta_pq[g])  # most harmful first
            kept: list[str] = []
            while True:
                exclude = [c for g in kept for c in groups[g]]
                quantize_int8(fp32, path, calib, target, method, exclude=exclude, cache_dir=cache_dir)
                d = _delta(path, val, pq_reference)
                report.steps.append({"kept_float": list(kept), "delta_pq": d})
                if abs(d) <= budget or len(kept) == len(order) - 1:
                    break
                kept.append(order[len(kept)])
            report.kept_float, report.final_delta_pq, report.within_budget = kept, d, abs(d) <= budget
    return report
