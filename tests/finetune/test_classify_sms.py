"""The book's chapter 6 task end to end on the real SMS spam data: balanced, split 70/10/20, a few
epochs from the tiny random base. The model is tiny and was never pretrained, so the test asks only
that it beats always answering the test split's most frequent label."""

import json
import warnings

import pytest

from scratchllm.cli import main


@pytest.mark.slow
def test_sms_spam_beats_the_majority_class(base_model, tmp_path, capsys):
    argv = ["finetune", "classify", "--init-from", str(base_model), "--runs-dir", str(tmp_path), "--name", "sms",
            "--epochs", "3", "--trainable", "all", "--lr", "1e-3", "--eval_interval", "100", "--threads", "1",
            "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(argv) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "sms" / "report.json").read_text())
    assert report["examples"] == {"train": 1045, "val": 149, "test": 300}  # the book's 747 spam + 747 ham
    test = report["test"]
    majority = max(c["support"] for c in test["per_class"].values()) / sum(c["support"]
                                                                           for c in test["per_class"].values())
    assert test["accuracy"] > majority
    assert test["f1"] > 0.5
