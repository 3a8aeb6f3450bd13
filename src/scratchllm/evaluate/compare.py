"""Several models on the same evaluations, side by side: a Markdown table, JSON and a bar chart.

`write_report(rows, out_dir, title=...)` takes one row per model ({"model": name, metric: value,
...}, the metrics of `evaluate.perplexity` and `evaluate.multiple_choice`) and writes
`report.md`, `report.json` and `report.png` (one panel per metric, a bar per model) into `out_dir`,
each atomically. This is what `scratchllm eval compare` leaves: base vs finetuned vs quantized vs
pruned on one text and one set of questions.

Not here: running the evaluations (`cli/eval.py` calls `perplexity` and `score_items`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scratchllm.files import save_figure, write_atomic

# The metrics a report shows, in order, with their label and which way is better.
METRICS = {
    "bits_per_byte": ("bits per byte", "lower"),
    "perplexity": ("perplexity", "lower"),
    "loss": ("loss (nats/token)", "lower"),
    "acc": ("accuracy", "higher"),
    "acc_norm": ("accuracy, length-normalised", "higher"),
}
REPORT_MD, REPORT_JSON, REPORT_PNG = "report.md", "report.json", "report.png"


def shown(rows: list[dict[str, Any]]) -> list[str]:
    """The metrics of METRICS that some row has, in METRICS' order."""
    return [m for m in METRICS if any(isinstance(r.get(m), (int, float)) for r in rows)]


def markdown(rows: list[dict[str, Any]], title: str = "", setup: dict[str, Any] | None = None) -> str:
    """A Markdown table, a row per model, the best value of each column in bold."""
    metrics = shown(rows)
    lines = [f"# {title or 'model comparison'}", ""]
    for k, v in (setup or {}).items():
        lines.append(f"- {k}: {v}")
    if setup:
        lines.append("")
    lines.append("| model | " + " | ".join(f"{METRICS[m][0]} ({METRICS[m][1]} is better)" for m in metrics) + " |")
    lines.append("|---|" + "---:|" * len(metrics))
    best = {}
    for m in metrics:
        values = [r[m] for r in rows if isinstance(r.get(m), (int, float))]
        best[m] = min(values) if METRICS[m][1] == "lower" else max(values)
    for r in rows:
        cells = []
        for m in metrics:
            v = r.get(m)
            cell = "-" if not isinstance(v, (int, float)) else f"{v:.4f}"
            cells.append(f"**{cell}**" if len(rows) > 1 and v == best[m] else cell)
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """One panel per metric, a bar per model (matplotlib, Agg backend), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = shown(rows)
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.2 * max(1, len(metrics)) + 1, 3.6), squeeze=False)
    names = [str(r["model"]) for r in rows]
    colors = [f"C{i % 10}" for i in range(len(rows))]
    for ax, m in zip(axes[0], metrics):
        values = [r.get(m) if isinstance(r.get(m), (int, float)) else 0.0 for r in rows]
        ax.bar_label(ax.bar(range(len(rows)), values, color=colors), fmt="%.4g", fontsize=7)
        ax.set_title(f"{METRICS[m][0]}\n({METRICS[m][1]} is better)", fontsize=9)
        ax.set_xticks(range(len(rows)), [Path(n).name or n for n in names], rotation=30, ha="right", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def write_report(rows: list[dict[str, Any]], out_dir: str | os.PathLike, title: str = "",
                 setup: dict[str, Any] | None = None) -> dict[str, Path]:
    """report.md, report.json and report.png of `rows` in `out_dir` (made if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / REPORT_MD, "json": out / REPORT_JSON, "chart": out / REPORT_PNG}
    write_atomic(paths["json"], json.dumps({"title": title, "setup": setup or {}, "models": rows}, indent=1))
    write_atomic(paths["markdown"], markdown(rows, title, setup) + f"\n![{title or 'comparison'}]({REPORT_PNG})\n")
    bar_chart(rows, paths["chart"], title)
    return paths
