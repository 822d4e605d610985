"""metrics.json is strict JSON (NaN -> null) and report.md carries the summary and per-class tables."""

from __future__ import annotations

import json
from pathlib import Path

from pfcn.evaluation import PanopticEvaluator, PanopticGroundTruth, format_table, write_metrics_json, write_report_md
from tests.pfcn.evaluation.panoptic_fixtures import SAMPLE, perfect_results


def _results() -> dict:
    gt = PanopticGroundTruth(SAMPLE / "panoptic_examples.json")
    ev = PanopticEvaluator(gt)
    for r in perfect_results(gt):
        ev.process(r)
    return ev.evaluate()


def test_report_files(tmp_path: Path) -> None:
    res = _results()
    extra = {"predictions": "perfect", "seconds": 1.5}
    write_metrics_json(res, tmp_path / "metrics.json", extra=extra)
    write_report_md(res, tmp_path / "report.md", extra=extra)
    data = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=lambda c: 1 / 0)  # NaN would fail
    assert data["panoptic"]["All"]["PQ"] == 100.0 and data["seconds"] == 1.5
    assert data["instance"]["APl"] is None and "log" not in data["instance"]  # no large GT instance: NaN -> null
    assert data["panoptic"]["per_class"]["1"]["name"] == "person"
    md = (tmp_path / "report.md").read_text()
    assert "| All | 100.00 | 100.00 | 100.00 |" in md
    assert "| 1 | person | thing | 100.00 | 100.00 | 100.00 |" in md
    assert "categories have no segment" in md and "bicycle" in md
    assert "Average Precision" in md  # pycocotools' printout lands in the report
    assert not list(tmp_path.glob(".*"))


def test_console_table() -> None:
    table = format_table(_results())
    lines = table.splitlines()
    assert lines[2].startswith("All       | 100.00 100.00 100.00")
    assert "AP 100.00" in table and "mIoU 100.00" in table and "APl -" in table
