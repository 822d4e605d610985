"""pfcn-bench results: the JSON document (versioned and validated), the console table, markdown, chart, comparison."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SCHEMA = "pfcn-bench/1"
ROW_KEYS = {"label": str, "kind": str, "artifact": str, "precision": str, "graph": str, "size": list,
            "net_size": list, "batch": int, "latency_s": dict, "fps": float, "throughput": float,
            "stages_s": dict, "peak_rss_mb": float, "includes": str}
LATENCY_KEYS = ("p50", "p90", "p99", "mean", "min", "n")
KINDS = ("official", "pytorch", "pytorch-stages", "pytorch-fast", "onnxruntime", "onnxruntime-network", "tensorrt",
         "other")


def validate(doc: Any) -> list[str]:
    """Problems of a pfcn-bench JSON document (empty: valid). Checks the schema version, types and consistency."""
    errors: list[str] = []
    if not isinstance(doc, dict):
        return ["the document is not a JSON object"]
    if doc.get("schema") != SCHEMA:
        errors.append(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    for key in ("created", "settings", "environment", "floor", "rows"):
        if key not in doc:
            errors.append(f"missing key {key!r}")
    env = doc.get("environment", {})
    if not isinstance(env, dict) or "cpu" not in env or "libraries" not in env:
        errors.append("environment must hold 'cpu' and 'libraries'")
    floor = doc.get("floor", {})
    if not isinstance(floor, dict) or not isinstance(floor.get("peak_flops"), (int, float)) or floor["peak_flops"] <= 0:
        errors.append("floor.peak_flops must be a positive number")
    rows = doc.get("rows", [])
    if not isinstance(rows, list) or not rows:
        errors.append("rows must be a non-empty list")
        rows = []
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            errors.append(f"{where} is not an object")
            continue
        for key, typ in ROW_KEYS.items():
            value = row.get(key)
            ok = isinstance(value, (int, float)) if typ is float else isinstance(value, typ)
            if not ok or isinstance(value, bool):
                errors.append(f"{where}.{key} must be {typ.__name__}, got {type(value).__name__}")
        if row.get("kind") not in KINDS:
            errors.append(f"{where}.kind {row.get('kind')!r} is not one of {KINDS}")
        lat = row.get("latency_s", {})
        if isinstance(lat, dict):
            for key in LATENCY_KEYS:
                if not isinstance(lat.get(key), (int, float)):
                    errors.append(f"{where}.latency_s.{key} missing")
            if all(isinstance(lat.get(k), (int, float)) for k in ("min", "p50", "p90", "p99")):
                if not (0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"]):
                    errors.append(f"{where}.latency_s: expected 0 < min <= p50 <= p90 <= p99, got {lat}")
        for stage, seconds in (row.get("stages_s") or {}).items():
            if not isinstance(seconds, (int, float)) or seconds < 0:
                errors.append(f"{where}.stages_s.{stage} must be a non-negative number")
        for key in ("flops", "floor_pct", "vs_official", "gpu_peak_mb"):
            if row.get(key) is not None and not isinstance(row.get(key), (int, float)):
                errors.append(f"{where}.{key} must be a number or null")
    return errors


def row_key(row: dict) -> str:
    return f"{row['label']} @ {row['size'][0]}x{row['size'][1]} b{row['batch']}"


# ------------------------------------------------------------------------------------------------ text outputs
def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _stage_text(row: dict) -> str:
    stages = row.get("stages_s") or {}
    return ", ".join(f"{k} {_fmt_s(v)}" for k, v in stages.items()) or "-"


TABLE_HEADER = ("row", "size", "batch", "p50", "p90", "p99", "img/s", "vs official", "% of floor", "RSS MB")


def table_rows(doc: dict) -> list[tuple[str, ...]]:
    out = []
    for r in doc["rows"]:
        lat = r["latency_s"]
        out.append((r["label"], f"{r['size'][0]}x{r['size'][1]}", str(r["batch"]), _fmt_s(lat["p50"]),
                    _fmt_s(lat["p90"]), _fmt_s(lat["p99"]), f"{r['throughput']:.2f}",
                    "-" if r.get("vs_official") is None else f"{r['vs_official']:.2f}x",
                    "-" if r.get("floor_pct") is None else f"{r['floor_pct']:.1f} %", f"{r['peak_rss_mb']:.0f}"))
    return out


def print_table(doc: dict) -> None:
    """The results table on the console: rich when installed, else aligned plain text."""
    rows = table_rows(doc)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(TABLE_HEADER)]
        print("  ".join(h.ljust(w) for h, w in zip(TABLE_HEADER, widths)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    else:
        table = Table(title="pfcn-bench")
        for h in TABLE_HEADER:
            table.add_column(h, justify="left" if h == "row" else "right")
        for r in rows:
            table.add_row(*r)
        Console().print(table)
    for r in doc["rows"]:
        if r.get("stages_s"):
            print(f"  {row_key(r)}: {_stage_text(r)}")


def markdown(doc: dict, chart_name: str | None = None) -> str:
    env = doc["environment"]
    cpu, libs, floor, settings = env["cpu"], env["libraries"], doc["floor"], doc["settings"]
    lines = [f"# pfcn-bench {doc['created']}", ""]
    lines.append(f"- CPU: {cpu['model']} ({cpu['usable_cores']} usable of {cpu['logical_cores']} logical cores; "
                 f"flags {' '.join(cpu['flags']) or '-'})")
    gpu = env.get("gpu")
    lines.append(f"- GPU: {gpu['name']}, driver {gpu['driver']}, CUDA {gpu['cuda']}" if gpu else "- GPU: none")
    lines.append("- libraries: " + ", ".join(f"{k} {v}" for k, v in libs.items() if v))
    lines.append(f"- settings: threads {settings['threads']}, device {settings['device']}, batch {settings['batch']}, "
                 f"warm-up {settings['warmup']}, timed iterations {settings['iters']} "
                 f"({'interleaved' if settings.get('interleave') else 'row after row'}), input {settings['images']}")
    by_precision = floor["gemm"].get("by_precision")
    if by_precision:  # a GPU: one peak per precision
        rates = ", ".join(f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in by_precision.items())
        lines.append(f"- compute floor: {rates} ({floor['gemm']['method']})")
    else:
        lines.append(f"- compute floor: {floor['peak_flops'] / 1e9:.1f} GFLOP/s ({floor['gemm']['method']}, "
                     f"{floor['gemm']['threads']} threads)")
    counted = []  # artifacts of one network (a checkpoint and its graphs) give the same line once
    for key, sizes in floor.get("models", {}).items():
        for size, c in sizes.items():
            line = (f"- network at {size}: {c['flops'] / 1e9:.1f} GFLOP, {c['bytes'] / 2**30:.2f} GiB moved "
                    f"(deform conv {c['deform_conv']})")
            if line not in counted:
                counted.append(line)
    lines += counted
    lines += ["", "| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(doc)]
    staged = [r for r in doc["rows"] if r.get("stages_s")]
    if staged:
        lines += ["", "Per stage (median seconds per iteration):", "",
                  "| row | size | stages |", "|---|---|---|"]
        lines += [f"| {r['label']} | {r['size'][0]}x{r['size'][1]} | {_stage_text(r)} |" for r in staged]
    profiled = [r for r in doc["rows"] if r.get("profile")]
    for r in profiled:
        p = r["profile"]
        lines += ["", f"ONNX Runtime profile of {r['label']} at {r['size'][0]}x{r['size'][1]} "
                      f"({p['runs']} run(s), {p['nodes']} nodes per run; node time, per run):", ""]
        for stage, secs in sorted(p["stages_s"].items(), key=lambda kv: -kv[1]):
            ops = ", ".join(f"{op} {_fmt_s(s)}" for op, s in p["top_ops_s"].get(stage, {}).items())
            lines.append(f"- {stage}: {_fmt_s(secs)} — {ops}")
    lines += ["", "What each row includes:", ""]
    seen = set()
    for r in doc["rows"]:
        if r["label"] not in seen:
            seen.add(r["label"])
            lines.append(f"- **{r['label']}**: {r['includes']}")
    for note in doc.get("notes", []):
        lines.append(f"- {note}")
    if chart_name:
        lines += ["", f"![pfcn-bench chart]({chart_name})"]
    return "\n".join(lines) + "\n"


STAGE_COLORS = {"host_copies": "#999999", "preprocess": "#f0a030", "network": "#3070c0", "postprocess": "#50a050",
                "merge": "#c04040", "non_network": "#a0a060", "end_to_end": "#707070"}


def chart(doc: dict, path: Path) -> Path:
    """A horizontal bar per row (median latency), split by stage where the row has stages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(rows) + 1.5))
    labels, used = [], set()
    for i, r in enumerate(rows):
        p50 = r["latency_s"]["p50"]
        stages = {k: v for k, v in (r.get("stages_s") or {}).items() if k in STAGE_COLORS and k != "end_to_end"}
        if stages and r["kind"] != "onnxruntime":
            scale = p50 / max(sum(stages.values()), 1e-12)  # stage medians drawn in proportion, to the row's p50
            left = 0.0
            for k, v in stages.items():
                ax.barh(i, v * scale, left=left, color=STAGE_COLORS[k], label=None if k in used else k)
                used.add(k)
                left += v * scale
        elif "network" in stages:
            net = stages["network"]
            ax.barh(i, net, color=STAGE_COLORS["network"], label=None if "network" in used else "network")
            ax.barh(i, p50 - net, left=net, color=STAGE_COLORS["non_network"],
                    label=None if "non_network" in used else "non_network")
            used.update({"network", "non_network"})
        else:
            ax.barh(i, p50, color=STAGE_COLORS["end_to_end"], label=None if "end_to_end" in used else "end_to_end")
            used.add("end_to_end")
        note = f" {p50:.2f} s" + (f"  ({r['vs_official']:.2f}x official)" if r.get("vs_official") else "")
        ax.text(p50, i, note, va="center", fontsize=8)
        labels.append(f"{r['label']}\n{r['size'][0]}x{r['size'][1]} b{r['batch']}")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("median latency per iteration (s)")
    cpu = doc["environment"]["cpu"]
    ax.set_title(f"pfcn-bench: {cpu['model']}, {doc['settings']['threads']} threads", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, max(r["latency_s"]["p50"] for r in rows) * 1.45)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def load_result(path: str | Path) -> dict:
    """A pfcn-bench JSON file, validated; ValueError naming the file and the first problems."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pfcn-bench result file")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e}); pass a file written by pfcn-bench") from None
    errors = validate(doc)
    if errors:
        raise ValueError(f"{path}: not a valid pfcn-bench result: {'; '.join(errors[:3])}")
    return doc


def compare(old: dict, new: dict, max_regression: float) -> tuple[list[tuple[str, float, float, float]], bool]:
    """Rows present in both, as (key, old p50, new p50, new/old); and whether any slowed down past the threshold.

    A row regresses when its median latency grew by more than ``max_regression`` (0.1 = 10 %).
    """
    old_rows = {row_key(r): r for r in old["rows"]}
    out, regressed = [], False
    for r in new["rows"]:
        key = row_key(r)
        if key in old_rows:
            a, b = old_rows[key]["latency_s"]["p50"], r["latency_s"]["p50"]
            out.append((key, a, b, b / a))
            regressed |= b > a * (1.0 + max_regression)
    return out, regressed
