"""Classification metrics: accuracy, precision, recall, F1, the confusion matrix, uncertainty, plots.

Pure functions of true and predicted class ids (numpy arrays or lists of ints in 0..K-1) and of
predicted probabilities; nothing here knows about models or data. The definitions are
scikit-learn's (`sklearn.metrics`): the confusion matrix has a row per true class and a column per
predicted class; a class's precision is TP / (TP + FP), its recall TP / (TP + FN), its F1 their
harmonic mean, each 0 where its denominator is 0 (scikit-learn's zero_division=0); "macro" is the
unweighted mean over classes (every class counts the same, whatever its size).

Uncertainty (for active learning, Settles 2009, "Active Learning Literature Survey", section 3.1):
the margin between the two most probable classes (small: unsure) and the entropy of the predicted
distribution (large: unsure), both as scores where larger means more uncertain.

Plots (matplotlib's Agg backend, written atomically): the confusion matrix, and loss and accuracy
curves from a run's metrics records (the book's `plot_values`, chapter 6).

Not here: running a model (`finetune.classify`), the data (`finetune.classify_data`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

UNCERTAINTY = ("margin", "entropy")


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """(K, K) counts: entry [i, j] is the number of examples of true class i predicted as class j."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} entries, y_pred {p.size}")
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (t, p), 1)
    return out


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """{"accuracy", "precision", "recall", "f1" (macro), "per_class": {label: {precision, recall, f1,
    support}}, "confusion": [[...]], "n"}: plain JSON types, for report.json."""
    k = len(labels)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)  # true examples per class
    predicted = cm.sum(axis=0)  # predictions per class
    precision = _ratio(tp, predicted.astype(np.float64))
    recall = _ratio(tp, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    n = int(cm.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "f1": float(f1.mean()),
        "per_class": {str(label): {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                                   "support": int(support[i])} for i, label in enumerate(labels)},
        "confusion": cm.tolist(),
        "n": n,
    }


def format_table(metrics: dict[str, Any], title: str = "") -> str:
    """A printable table: per-class precision, recall, F1 and support, the macro means, accuracy and
    the confusion matrix (rows: true class, columns: predicted)."""
    labels = list(metrics["per_class"])
    width = max(12, *(len(label) + 2 for label in labels))
    lines = [title] if title else []
    lines.append(f"{'':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for label, m in metrics["per_class"].items():
        lines.append(f"{label:<{width}}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>10}")
    lines.append(f"{'macro':<{width}}{metrics['precision']:>10.4f}{metrics['recall']:>10.4f}{metrics['f1']:>10.4f}"
                 f"{metrics['n']:>10}")
    lines.append(f"{'accuracy':<{width}}{metrics['accuracy']:>10.4f}")
    cell = max(8, *(len(label) + 2 for label in labels))
    corner = "true \\ pred"
    lines.append(f"{corner:<{width}}" + "".join(f"{label:>{cell}}" for label in labels))
    for label, row in zip(labels, metrics["confusion"], strict=True):
        lines.append(f"{label:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)


def uncertainty(probs: np.ndarray, by: str = "margin") -> np.ndarray:
    """(N,) scores from (N, K) probabilities, larger = less sure: "margin" is 1 - (p1 - p2), the gap
    between the two most probable classes taken from one; "entropy" is -sum p log p (nats)."""
    p = np.asarray(probs, dtype=np.float64)
    if by == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]  # (N, 2): second and first
        return 1.0 - (top2[:, 1] - top2[:, 0])
    if by == "entropy":
        return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
    raise ValueError(f"uncertainty by {by!r}: choose one of {', '.join(UNCERTAINTY)}")


# --- plots -------------------------------------------------------------------------------------------
def _save(fig: Any, path: str | os.PathLike) -> Path:
    from scratchllm.files import save_figure

    fig.tight_layout()
    return save_figure(fig, path)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str], path: str | os.PathLike,
                   title: str = "") -> Path:
    """The confusion matrix as a heat map with the counts written in (rows true, columns predicted)."""
    plt = _pyplot()
    cm = np.asarray(confusion)
    k = len(labels)
    size = 2.5 + 0.6 * k
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(k), labels=list(labels), rotation=45 if k > 4 else 0)
    ax.set_yticks(range(k), labels=list(labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = (cm.max() + cm.min()) / 2 if cm.size else 0  # dark cells get white text
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > threshold else "black")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_curves(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Loss (left) and accuracy (right) of the evaluations in `records` (a run's metrics.jsonl),
    train and validation, against steps. None if no record has an accuracy."""
    evals = [r for r in records if isinstance(r.get("train_accuracy"), (int, float))]
    if not evals:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in evals]
    for ax, what in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-"), ("val", "-.")):
            values = [r.get(f"{split}_{what}") for r in evals]
            if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                name = "training" if split == "train" else "validation"
                ax.plot(steps, values, style, marker="o", ms=3, label=f"{name} {what}")
        ax.set_xlabel("step")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)
