"""Classification metrics against scikit-learn, uncertainty scores, the printed table and the plots."""

import numpy as np
import pytest
from sklearn import metrics as sk

from scratchllm.evaluate.classification import (
    classification_metrics,
    confusion_matrix,
    format_table,
    plot_confusion,
    plot_curves,
    uncertainty,
)


@pytest.mark.parametrize("seed,k", [(0, 2), (1, 3), (2, 5)])
def test_metrics_equal_sklearn(seed, k):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, size=200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, k, size=200))
    if k == 5:
        y_pred[y_pred == 4] = 0  # a class never predicted: its precision is 0 (zero_division=0)
    labels = [f"c{i}" for i in range(k)]
    m = classification_metrics(y_true, y_pred, labels)
    ids = list(range(k))
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
    for ours, avg in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert m[ours] == pytest.approx(avg(y_true, y_pred, labels=ids, average="macro", zero_division=0))
        per = avg(y_true, y_pred, labels=ids, average=None, zero_division=0)
        assert [m["per_class"][c][ours] for c in labels] == pytest.approx(per.tolist())
    assert m["confusion"] == sk.confusion_matrix(y_true, y_pred, labels=ids).tolist()
    assert [m["per_class"][c]["support"] for c in labels] == np.bincount(y_true, minlength=k).tolist()
    assert m["n"] == 200


def test_confusion_matrix_rows_are_true_classes():
    assert confusion_matrix([0, 0, 1, 2], [0, 1, 1, 0], 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    m = classification_metrics([1, 1], [1, 1], ["a", "b"])
    assert m["accuracy"] == 1.0 and m["per_class"]["a"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_uncertainty_ranks_the_unsure_first():
    p = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    margin = uncertainty(p, "margin")
    assert margin == pytest.approx([1 - 0.85, 1 - 0.05, 1.0, 1.0])
    entropy = uncertainty(p, "entropy")
    expected = [-(row[row > 0] * np.log(row[row > 0])).sum() for row in p]
    assert entropy == pytest.approx(expected)
    assert np.argmax(entropy) == 3 and np.argmin(entropy) == 0
    with pytest.raises(ValueError, match="margin, entropy"):
        uncertainty(p, "other")


def test_table_and_plots(tmp_path):
    m = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], ["ham", "spam"])
    table = format_table(m, title="test")
    lines = table.splitlines()
    assert lines[0] == "test"
    assert lines[2].split() == ["ham", "0.6667", "1.0000", "0.8000", "2"]
    assert lines[5].split() == ["accuracy", "0.7500"]
    assert lines[-2].split() == ["ham", "2", "0"] and lines[-1].split() == ["spam", "1", "1"]
    png = plot_confusion(m["confusion"], ["ham", "spam"], tmp_path / "c.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [{"step": 1, "loss": 0.7}, {"step": 0, "train_loss": 0.7, "val_loss": 0.69, "train_accuracy": 0.5,
                                         "val_accuracy": 0.5},
               {"step": 5, "train_loss": 0.5, "val_loss": 0.6, "train_accuracy": 0.8, "val_accuracy": 0.7}]
    assert plot_curves(records, tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_curves(records[:1], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "curves.png"]  # no temporary files left
