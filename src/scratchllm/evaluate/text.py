"""Generated text against reference text: BLEU, chrF, ROUGE-1/2/L and exact match (the one place for each).

- `bleu(predictions, references)`: corpus BLEU (Papineni et al. 2002) as sacrebleu computes it
  (Post 2018, "A Call for Clarity in Reporting BLEU Scores": its 13a tokenisation, exponential
  smoothing, one reference per prediction), on sacrebleu's 0-100 scale. Corpus-level, not a mean of
  sentence scores: n-gram counts are summed over all pairs first, as papers report it.
- `chrf(predictions, references)`: corpus chrF (Popović 2015; character 6-grams, beta 2), sacrebleu's, 0-100.
- `rouge(predictions, references)`: the mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (Lin 2004) of
  the pairs, by Google's `rouge-score` package (the reference implementation; lowercase alphanumeric
  words, no stemming), 0-1. `rouge_l` is the ROUGE-L one alone (what finetuning reports): the longest
  common subsequence of words, as precision over the prediction's words and recall over the
  reference's, combined as their harmonic mean.
- `exact_match(predictions, references)`: the fraction of predictions equal to their reference once
  surrounding whitespace is stripped (no other normalisation: a stricter reading than SQuAD's), 0-1.
- `text_metrics(predictions, references)`: all of them in one dict, with sacrebleu's signatures so a
  reader can reproduce the numbers.

sacrebleu and rouge-score are optional dependencies: `pip install "scratchllm[eval]"`.
`rouge_available()` / `sacrebleu_available()` say whether each is installed; `ROUGE_MISSING` is the one
line to show when rouge-score is not. Every function returns 0.0 for no pairs.
Not here: generating the predictions (`generate.text`), reading response files (`evaluate.generation`),
an LLM judge (`evaluate.judge`).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from scratchllm.errors import UserError

ROUGE_MISSING = ("ROUGE-L needs the rouge-score package, which is not installed; reporting exact match only "
                 "(pip install rouge-score, or pip install \"scratchllm[eval]\")")
SACREBLEU_MISSING = ("BLEU and chrF need the sacrebleu package, which is not installed: pip install sacrebleu, or "
                     "pip install \"scratchllm[eval]\"")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _pairs(predictions: Sequence[str], references: Sequence[str]) -> list[tuple[str, str]]:
    if len(predictions) != len(references):
        raise UserError(f"{len(predictions)} predictions for {len(references)} references; give one each")
    return list(zip(predictions, references))


def rouge_available() -> bool:
    """Whether the rouge-score package is installed."""
    return importlib.util.find_spec("rouge_score") is not None


def sacrebleu_available() -> bool:
    """Whether the sacrebleu package is installed."""
    return importlib.util.find_spec("sacrebleu") is not None


def rouge(predictions: Sequence[str], references: Sequence[str],
          types: Sequence[str] = ROUGE_TYPES) -> dict[str, float]:
    """Mean F-measure of each ROUGE type in `types` over the pairs (see the module doc).

    >>> {k: round(v, 4) for k, v in rouge(["the cat sat on the mat"], ["the cat was on the mat"]).items()}
    {'rouge1': 0.8333, 'rouge2': 0.6, 'rougeL': 0.8333}
    """
    pairs = _pairs(predictions, references)
    if not rouge_available():
        raise UserError(ROUGE_MISSING)
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=False)
    if not pairs:
        return {t: 0.0 for t in types}
    # rouge_score's argument order is (target, prediction)
    scores = [scorer.score(ref, pred) for pred, ref in pairs]
    return {t: sum(s[t].fmeasure for s in scores) / len(scores) for t in types}


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure of each prediction against its reference (see the module doc).

    >>> round(rouge_l(["the cat sat on the mat"], ["the cat was on the mat"]), 4)  # LCS 5 of 6 and 6
    0.8333
    """
    return rouge(predictions, references, ("rougeL",))["rougeL"]


def _sacrebleu(metric: str) -> Any:
    if not sacrebleu_available():
        raise UserError(SACREBLEU_MISSING)
    from sacrebleu.metrics import BLEU, CHRF

    return BLEU() if metric == "bleu" else CHRF()


def corpus_score(metric: str, predictions: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """(score, sacrebleu's signature) of "bleu" or "chrf" over the pairs; 0.0 for none."""
    pairs = _pairs(predictions, references)
    scorer = _sacrebleu(metric)
    if not pairs:
        return 0.0, ""
    score = scorer.corpus_score([p for p, _ in pairs], [[r for _, r in pairs]]).score
    return float(score), str(scorer.get_signature())


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU, 0-100 (sacrebleu's defaults; see the module doc).

    >>> round(bleu(["the cat sat on the mat"], ["the cat sat on the mat"]), 6)
    100.0
    """
    return corpus_score("bleu", predictions, references)[0]


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF, 0-100 (sacrebleu's defaults: character 6-grams, beta 2)."""
    return corpus_score("chrf", predictions, references)[0]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference, surrounding whitespace ignored.

    >>> exact_match(["Paris ", "Rome"], ["Paris", "rome"])
    0.5
    """
    pairs = _pairs(predictions, references)
    return sum(p.strip() == r.strip() for p, r in pairs) / len(pairs) if pairs else 0.0


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """{"n", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match", "signatures"}: every metric here.
    A missing optional package is an error naming it (`pip install "scratchllm[eval]"`)."""
    pairs = _pairs(predictions, references)
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    (b, b_sig), (c, c_sig) = corpus_score("bleu", preds, refs), corpus_score("chrf", preds, refs)
    out: dict[str, Any] = {"n": len(pairs), "bleu": b, "chrf": c, **rouge(preds, refs),
                           "exact_match": exact_match(preds, refs)}
    out["signatures"] = {"bleu": b_sig, "chrf": c_sig, "rouge": "rouge-score F-measure, no stemming, mean of pairs"}
    return out
