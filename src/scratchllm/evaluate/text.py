"""Generated text against reference text: ROUGE-L and exact match.

- `rouge_l(predictions, references)`: the mean ROUGE-L F-measure (Lin 2004): the longest common
  subsequence of words, as precision over the prediction's words and recall over the reference's,
  combined as their harmonic mean. Computed by Google's `rouge-score` package (the reference
  implementation most papers report; tokenised into lowercase alphanumeric words, no stemming),
  an optional dependency: `pip install "scratchllm[eval]"`. `rouge_available()` says whether it is
  installed; `ROUGE_MISSING` is the one line to show when it is not.
- `exact_match(predictions, references)`: the fraction of predictions equal to their reference
  once surrounding whitespace is stripped (no other normalisation: a stricter reading than SQuAD's).

Both return a float in [0, 1] (0.0 for no pairs). Not here: generating the predictions
(`generate.text`), an LLM judge (the book's Ollama scoring).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from scratchllm.errors import UserError

ROUGE_MISSING = ("ROUGE-L needs the rouge-score package, which is not installed; reporting exact match only "
                 "(pip install rouge-score, or pip install \"scratchllm[eval]\")")


def _pairs(predictions: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
    if len(predictions) != len(references):
        raise UserError(f"{len(predictions)} predictions for {len(references)} references; give one each")
    return list(zip(predictions, references))


def rouge_available() -> bool:
    """Whether the rouge-score package is installed."""
    return importlib.util.find_spec("rouge_score") is not None


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure of each prediction against its reference (see the module doc).

    >>> round(rouge_l(["the cat sat on the mat"], ["the cat was on the mat"]), 4)  # LCS 5 of 6 and 6
    0.8333
    """
    pairs = _pairs(predictions, references)
    if not rouge_available():
        raise UserError(ROUGE_MISSING)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    if not pairs:
        return 0.0
    # rouge_score's argument order is (target, prediction)
    return sum(scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in pairs) / len(pairs)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference, surrounding whitespace ignored.

    >>> exact_match(["Paris ", "Rome"], ["Paris", "rome"])
    0.5
    """
    pairs = _pairs(predictions, references)
    return sum(p.strip() == r.strip() for p, r in pairs) / len(pairs) if pairs else 0.0
