"""ROUGE-L and exact match (evaluate.text) against values computed by hand from the longest common
subsequence of words: F = 2PR / (P + R), P = LCS / prediction words, R = LCS / reference words."""

import pytest

from scratchllm.errors import UserError
from scratchllm.evaluate import text as metrics
from scratchllm.evaluate.text import exact_match, rouge_l
from scratchllm.finetune.instruct import score


@pytest.mark.parametrize("prediction,reference,f", [
    ("the cat sat on the mat", "the cat was on the mat", 5 / 6),  # LCS "the cat on the mat": 5 of 6 and 6
    ("a b c d", "a c e", 4 / 7),  # LCS "a c": P 2/4, R 2/3, F = 2 * 1/3 / (7/6)
    ("Hello, World!", "hello world", 1.0),  # lowercase words, punctuation dropped
    ("d c b a", "a b c d", 2 / 8),  # LCS 1 of 4 and 4: order matters, unlike word overlap (which is 1.0)
    ("nothing shared", "at all", 0.0),
])
def test_rouge_l_equals_the_hand_computed_lcs_f_measure(prediction, reference, f):
    assert rouge_l([prediction], [reference]) == pytest.approx(f)


def test_rouge_l_is_the_mean_and_exact_match_strips_whitespace():
    assert rouge_l(["a b c d", "the cat sat on the mat"], ["a c e", "the cat was on the mat"]) == \
        pytest.approx((4 / 7 + 5 / 6) / 2)
    assert exact_match([" 4\n", "Paris", "paris"], ["4", "Paris.", "Paris"]) == pytest.approx(1 / 3)
    assert rouge_l([], []) == exact_match([], []) == 0.0
    with pytest.raises(UserError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])


def test_without_rouge_score_the_report_has_exact_match_only(monkeypatch):
    monkeypatch.setattr(metrics, "rouge_available", lambda: False)
    assert score(["a"], ["a"]) == {"exact_match": 1.0, "n": 1}
    with pytest.raises(UserError, match="pip install rouge-score"):
        rouge_l(["a"], ["a"])
    monkeypatch.undo()
    assert score(["a b"], ["a c"]) == {"rougeL": pytest.approx(0.5), "exact_match": 0.0, "n": 1}
