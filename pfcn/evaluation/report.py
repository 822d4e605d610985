"""Human- and machine-readable outputs of an evaluation: the console table, metrics.json and report.md.

All inputs are the dict `PanopticEvaluator.evaluate` returns (percentages). NaN means "not defined" (e.g. AP with no
GT instances) and is written as null in JSON and "-" in tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from pfcn.evaluation.instance_ap import AP_METRICS
from pfcn.evaluation.predictions_io import atomic_write_text, to_jsonable

__all__ = ["format_table", "write_metrics_json", "write_report_md"]


def _fmt(value: Any, width: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-".rjust(width)
    return f"{value:{width}.2f}"


def format_table(results: Mapping[str, Any]) -> str:
    """The summary printed by pfcn-eval: PQ/SQ/RQ All/Things/Stuff, then AP and mIoU when computed."""
    pan = results["panoptic"]
    lines = [f"{'':10s}|     PQ     SQ     RQ      N", "-" * 38]
    for k in ("All", "Things", "Stuff"):
        lines.append(f"{k:10s}| {_fmt(pan[k]['PQ'])} {_fmt(pan[k]['SQ'])} {_fmt(pan[k]['RQ'])} {pan[k]['N']:6d}")
    inst = results.get("instance")
    if inst is not None:
        lines.append("mask AP   | " + "  ".join(f"{m} {_fmt(inst[m], 5).strip()}" for m in AP_METRICS))
    sem = results.get("semantic")
    if sem is not None:
        lines.append("semantic  | " + "  ".join(f"{m} {_fmt(sem[m], 5).strip()}" for m in ("mIoU", "fwIoU", "mACC",
                                                                                        "pACC")))
    lines.append(f"images    | {results['num_images']}")
    return "\n".join(lines)


def write_metrics_json(results: Mapping[str, Any], path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the metrics (and ``extra`` fields such as sources and timing) as JSON, atomically.

    pycocotools' printout (``instance.log``) stays out of the JSON; it goes into report.md.
    """
    data = dict(results)
    if data.get("instance") is not None:
        data["instance"] = {k: v for k, v in data["instance"].items() if k != "log"}
    if extra:
        data.update(extra)
    path = Path(path)
    atomic_write_text(path, json.dumps(to_jsonable(data), indent=1, allow_nan=False) + "\n")
    return path


def write_report_md(results: Mapping[str, Any], path: str | Path, title: str = "pfcn evaluation",
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write a markdown report: summary, AP, mIoU, per-class PQ and IoU tables, pycocotools' log."""
    pan = results["panoptic"]
    out = [f"# {title}", ""]
    for key, value in (extra or {}).items():
        out.append(f"- {key}: {value}")
    out += [f"- images: {results['num_images']}", "", "## Panoptic quality", "",
            "| | PQ | SQ | RQ | categories |", "|---|---:|---:|---:|---:|"]
    for k in ("All", "Things", "Stuff"):
        out.append(f"| {k} | {_fmt(pan[k]['PQ']).strip()} | {_fmt(pan[k]['SQ']).strip()} | "
                   f"{_fmt(pan[k]['RQ']).strip()} | {pan[k]['N']} |")
    inst = results.get("instance")
    if inst is not None:
        out += ["", "## Mask AP (COCOeval segm)", "", "| " + " | ".join(AP_METRICS) + " |",
                "|" + "---:|" * len(AP_METRICS), "| " + " | ".join(_fmt(inst[m]).strip() for m in AP_METRICS) + " |"]
    sem = results.get("semantic")
    if sem is not None:
        out += ["", "## Stuff-head semantic segmentation", "", "| mIoU | fwIoU | mACC | pACC |", "|---:|---:|---:|---:|",
                "| " + " | ".join(_fmt(sem[m]).strip() for m in ("mIoU", "fwIoU", "mACC", "pACC")) + " |"]
    out += ["", "## Per-class panoptic quality", "",
            "| id | name | kind | PQ | SQ | RQ | TP | FP | FN |" + (" AP |" if inst is not None else ""),
            "|---:|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if inst is not None else "")]
    unseen = []
    for cid, c in pan["per_class"].items():
        if c["TP"] + c["FP"] + c["FN"] == 0:
            unseen.append(c["name"])
            continue
        row = (f"| {cid} | {c['name']} | {'thing' if c['isthing'] else 'stuff'} | "
               + " | ".join(_fmt(c[m]).strip() for m in ("PQ", "SQ", "RQ"))
               + f" | {c['TP']} | {c['FP']} | {c['FN']} |")
        if inst is not None:
            row += f" {_fmt(inst['per_class'].get(cid)).strip() if c['isthing'] else ''} |"
        out.append(row)
    if unseen:
        out += ["", f"{len(unseen)} categories have no segment in the ground truth or the predictions "
                    f"(not part of the averages): {', '.join(unseen)}."]
    if sem is not None:
        out += ["", "## Per-class semantic IoU (stuff head)", "", "| label | name | IoU | ACC |", "|---:|---|---:|---:|"]
        for c in sem["per_class"]:
            out.append(f"| {c['label']} | {c['name']} | {_fmt(c['IoU']).strip()} | {_fmt(c['ACC']).strip()} |")
    if inst is not None and inst.get("log"):
        out += ["", "## pycocotools output", "", "```", inst["log"].rstrip(), "```"]
    path = Path(path)
    atomic_write_text(path, "\n".join(out) + "\n")
    return path
