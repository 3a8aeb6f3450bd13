"""What a run leaves to read and look at: JSONL metrics, the loss plot, TensorBoard, the model card.

- `MetricsLog`: one JSON object per line in `metrics.jsonl` (`{"step":..., "loss":..., ...}`);
  on resume, lines after the checkpoint's step are dropped so the file reads as one unbroken run.
- `plot_losses`: train and validation loss against steps with tokens seen on a second x axis, as
  the book's chapter 5 draws it (matplotlib, Agg backend, written atomically).
- `write_model_card`: a training run's Markdown card (Mitchell et al. 2019, "Model Cards for Model
  Reporting"): data provenance and the cleaning report, tokenizer, training compute (tokens, FLOPs,
  hours, energy), final losses, intended use and known limitations, config; its shared sections
  come from `evaluate.card`, which also appends `scratchllm eval`'s results.

Not here: checkpoints (`train.checkpoint`), the loop (`train.loop`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from scratchllm.files import save_figure, write_atomic

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
CARD_FILE = "MODEL_CARD.md"


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the file stays valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLog:
    """Append-only JSONL metrics (flushed per line, so a killed run keeps what it logged)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._f = None

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
        self._f.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def truncate_after(self, step: int) -> None:
        """Keep only records with `step <= step` (and drop a half-written last line)."""
        self.close()
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        if self.path.exists():
            write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a metrics.jsonl (a truncated last line is skipped)."""
    p = Path(path)
    if not p.is_file():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_losses(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Train (per step, and evaluated) and validation loss against steps; tokens seen on top.

    Returns the PNG path, or None if there is nothing to plot yet.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if "loss" in r and isinstance(r["loss"], (int, float))]
    evals = [r for r in records if "val_loss" in r and isinstance(r["val_loss"], (int, float))]
    if not steps and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.5, label="train (batch)")
    tr = [r for r in evals if isinstance(r.get("train_loss"), (int, float))]
    if tr:
        ax.plot([r["step"] for r in tr], [r["train_loss"] for r in tr], marker="o", ms=3, label="train (eval)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], marker="o", ms=3, ls="--",
                label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    # tokens seen as a second x axis (linear in steps when every step sees the same number of tokens)
    pairs = [(r["step"], r["tokens"]) for r in records if r.get("tokens") and r.get("step")]
    if pairs:
        s_last, t_last = pairs[-1]
        per_step = t_last / s_last
        ax2 = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda t: t / per_step))
        ax2.set_xlabel("tokens seen")
    fig.tight_layout()
    return save_figure(fig, path)


class TensorBoard:
    """Scalars to TensorBoard event files (needs the `tensorboard` package)."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from scratchllm.errors import UserError

            raise UserError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step", 0)
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def _bullets(d: dict[str, Any], depth: int = 0) -> list[str]:
    """A nested dict as an indented Markdown list (lists stay JSON on one line).

    >>> _bullets({"test": {"accuracy": 0.95, "confusion": [[1, 0], [0, 1]]}})
    ['- test:', '  - accuracy: 0.9500', '  - confusion: [[1, 0], [0, 1]]']
    """
    out = []
    for k, v in d.items():
        pad = "  " * depth
        if isinstance(v, dict) and depth < 3:
            out.append(f"{pad}- {k}:")
            out += _bullets(v, depth + 1)
        else:
            out.append(f"{pad}- {k}: {_fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v)}")
    return out


def model_card(info: dict[str, Any]) -> str:
    """Markdown model card from `info`. Keys (all optional): name, summary (the opening line), kind
    ("pretrained" or "finetuned"), method (a finetune's), source (the model a finetuned one started from:
    path, format, licence), data (`evaluate.card.data_provenance` and the data's statistics), clean_report
    (clean_report.json), tokenizer, hardware, precision, train_seconds, steps, tokens, parameters,
    checkpoint, compute (`evaluate.card.training_compute`), final (losses), results (a task's test
    metrics), config. The sections every card has (data provenance, training compute, intended use,
    known limitations) come from `evaluate.card`.

    >>> "# model card: demo" in model_card({"name": "demo"})
    True
    """
    from scratchllm.evaluate.card import clean_lines, compute_lines, source_lines, use_lines

    kind = info.get("kind", "pretrained")
    lines = [f"# model card: {info.get('name', 'run')}", ""]
    lines += [info.get("summary", "A small GPT-style language model trained from scratch with scratchllm."), ""]
    if info.get("source"):
        lines += ["## Source model", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in info["source"].items()] + [""]
    lines += ["## Data provenance", ""]
    data = info.get("data") or {}
    for k, v in data.items():
        lines.append(f"- {k}: {_fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v)}")
    if info.get("clean_report"):
        lines += ["", "Cleaning and deduplication (clean_report.json):", "", *clean_lines(info["clean_report"])]
    lines += ["", "## Tokenizer", ""]
    for k, v in (info.get("tokenizer") or {}).items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Training compute", ""]
    for key, label in (("hardware", "hardware"), ("precision", "precision"), ("train_seconds", "training time (s)"),
                       ("steps", "steps"), ("tokens", "tokens seen"), ("parameters", "parameters"),
                       ("checkpoint", "checkpoint")):
        if key in info and not (key in ("tokens", "train_seconds") and info.get("compute")):  # shown below
            lines.append(f"- {label}: {_fmt(info[key])}")
    lines += compute_lines(info.get("compute"))
    final = info.get("final") or {}
    if final:
        lines += ["", "## Final losses", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in final.items()]
    results = info.get("results") or {}
    if results:
        lines += ["", "## Results", ""]
        lines += _bullets(results)
    source = (info.get("source") or {}).get("path")
    lines += ["", *use_lines(kind, data.get("dataset") or data.get("name"), data.get("description"),
                             info.get("method"), source)]
    if kind == "finetuned" and source:
        lines += ["", *source_lines(source)]
        while lines[-1] == "":
            lines.pop()
    if info.get("config"):
        lines += ["", "## Configuration", "", "```json", json.dumps(info["config"], indent=1), "```"]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_model_card(folder: str | os.PathLike, info: dict[str, Any]) -> Path:
    p = Path(folder) / CARD_FILE
    text = model_card(info)
    if p.is_file():  # a resumed run's new card keeps the results `scratchllm eval` appended to the old one
        from scratchllm.evaluate.card import keep_evaluations

        text = keep_evaluations(p.read_text(encoding="utf-8", errors="replace"), text)
    write_atomic(p, text)
    return p
