"""Multiple-choice scoring the way lm-evaluation-harness does it (HellaSwag, ARC, PIQA, ...).

For each item the model reads the context once per choice and sums the log-probabilities of the
choice's tokens (the continuation); nothing is generated.

    acc        the choice with the largest sum is the label
    acc_norm   the largest sum divided by the choice's length in characters (the harness's
               length normalisation for HellaSwag and ARC: long answers are not punished
               for having more tokens)

Tokenisation follows the harness (`_encode_pair`): the continuation is `delimiter + choice` (the
harness's `target_delimiter`, a space); spaces at the end of the context move to the front of the
continuation; the continuation's ids are those of encode(context + continuation) after the ids of
encode(context), so a token that spans the boundary belongs to the continuation. An empty context
becomes the tokenizer's `<|endoftext|>`. Inputs longer than the model's context lose their start.

Files are JSONL, one item a line, in the common style of the harness's converted datasets:

    {"context": "The cat sat on the", "choices": ["mat", "moon"], "label": 0}

`query` may stand for `context`, and `gold` or `answer` for `label` (a whole number: the index of
the right choice in `choices`). An item without them is one error naming the file and line.

Not here: perplexity (`evaluate.perplexity`), the command (`cli/eval.py`). Reference: EleutherAI's
lm-evaluation-harness (`lm_eval/api/task.py` process_results, `lm_eval/models/huggingface.py`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError

CONTEXT_KEYS = ("context", "query")
LABEL_KEYS = ("label", "gold", "answer")
# The harness's target_delimiter: what goes between the context and each choice.
DELIMITER = " "
# Continuations scored together in one model call (right-padded to the longest).
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class Item:
    context: str
    choices: tuple[str, ...]
    label: int
    line: int = 0  # the line of the file it came from (0: not from a file)


@dataclass
class ChoiceResult:
    """Accuracy over the items, and each item's sums (`scores[i][j]`: choice j of item i)."""

    acc: float
    acc_norm: float
    items: int
    scores: list[list[float]] = field(default_factory=list)
    predictions: list[int] = field(default_factory=list)
    predictions_norm: list[int] = field(default_factory=list)

    @property
    def acc_stderr(self) -> float:
        """Standard error of the mean accuracy (the harness's sample standard error)."""
        return stderr(self.acc, self.items)

    @property
    def acc_norm_stderr(self) -> float:
        return stderr(self.acc_norm, self.items)

    def to_dict(self, per_item: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"acc": self.acc, "acc_stderr": self.acc_stderr, "acc_norm": self.acc_norm,
                             "acc_norm_stderr": self.acc_norm_stderr, "items": self.items}
        if per_item:
            d.update(scores=self.scores, predictions=self.predictions, predictions_norm=self.predictions_norm)
        return d


def stderr(p: float, n: int) -> float:
    """sqrt(p (1 - p) / (n - 1)): the standard error of a mean of n zeros and ones (0 for one item)."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


# --- reading ------------------------------------------------------------------------------------------
def parse_item(record: Any, where: str, line: int = 0) -> Item:
    """An Item from one JSON record (line `line` of a file); `where` ("file:line") starts each error."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with context, choices and label, got a "
                        f"{type(record).__name__}")
    key = next((k for k in CONTEXT_KEYS if k in record), None)
    if key is None:
        raise UserError(f"{where}: no \"context\" (or \"query\") field; each line needs context, choices and label")
    context = record[key]
    if not isinstance(context, str):
        raise UserError(f"{where}: \"{key}\" must be a string, got {json.dumps(context)[:40]}")
    choices = record.get("choices")
    if choices is None:
        raise UserError(f"{where}: no \"choices\" field; give the answers as a list of strings")
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        raise UserError(f"{where}: \"choices\" must be a list of two or more non-empty strings")
    lkey = next((k for k in LABEL_KEYS if k in record), None)
    if lkey is None:
        raise UserError(f"{where}: no \"label\" (or \"gold\", \"answer\") field: the index of the right choice")
    label = record[lkey]
    if not (isinstance(label, int) and not isinstance(label, bool)):
        raise UserError(f"{where}: \"{lkey}\" must be a whole number (the index of the right choice), got "
                        f"{json.dumps(label)[:40]}")
    if not 0 <= label < len(choices):
        raise UserError(f"{where}: \"{lkey}\" {label} is out of range for {len(choices)} choices (0 to "
                        f"{len(choices) - 1})")
    return Item(context, tuple(choices), label, line)


def read_items(path: str | os.PathLike) -> list[Item]:
    """The items of a JSONL file (blank lines skipped); a bad line is one error naming file and line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} not found; give a JSONL file of {{\"context\", \"choices\", \"label\"}} items"
                        if not p.exists() else f"{p} is a folder; give a JSONL file of items")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p} is not valid UTF-8 (byte {e.start}); save it as UTF-8") from None
    items = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}:{n}: not valid JSON ({e.msg}); each line must be one JSON object") from None
        items.append(parse_item(record, f"{p}:{n}", n))
    if not items:
        raise UserError(f"{p} holds no items; give one JSON object a line with context, choices and label")
    return items


# --- scoring ------------------------------------------------------------------------------------------
def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the harness splits them (see the module docstring)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    if not context:
        if tokenizer.eot_id is None:
            raise UserError("an item has an empty context and the tokenizer has no <|endoftext|> to start from; "
                            "give each item a context")
        return [tokenizer.eot_id], whole
    ctx = tokenizer.encode(context)
    return ctx, whole[len(ctx):]


def loglikelihoods(model: Any, requests: Sequence[tuple[list[int], list[int]]], *,
                   batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True) -> list[float]:
    """The summed log-probability of each request's continuation ids after its context ids."""
    import torch
    from tqdm.auto import tqdm

    from scratchllm.runtime import eval_mode

    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    context = model.config.context_length
    device = next(model.parameters()).device
    rows = []
    for ctx, cont in requests:
        if not cont:
            raise UserError("a choice encodes to no tokens; every choice needs some text")
        full = (ctx + cont)[-(context + 1):]  # the harness keeps the end: all of the continuation it can
        rows.append((full, min(len(cont), len(full) - 1)))
    # longest first, so each batch holds rows of similar length (less padding)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    out = [0.0] * len(rows)
    with eval_mode(model), torch.no_grad(), tqdm(total=len(rows), unit="choice", desc="scoring",
                                                 disable=not progress, leave=False) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            width = len(rows[chunk[0]][0]) - 1
            x = torch.zeros(len(chunk), width, dtype=torch.long)  # (B, T), right-padded
            for r, i in enumerate(chunk):
                full = rows[i][0]
                x[r, : len(full) - 1] = torch.tensor(full[:-1])  # inputs; the targets are full[1:]
            logp = torch.log_softmax(model(x.to(device)).float(), dim=-1)  # (B, T, vocab)
            for r, i in enumerate(chunk):
                full, n = rows[i]
                inputs = len(full) - 1
                pos = torch.arange(inputs - n, inputs, device=logp.device)  # the positions predicting the continuation
                targets = torch.tensor(full[inputs - n + 1:], device=logp.device)
                out[i] = float(logp[r, pos, targets].double().sum())
            bar.update(len(chunk))
    return out


def score_items(model: Any, tokenizer: Any, items: Sequence[Item], *, delimiter: str = DELIMITER,
                batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True) -> ChoiceResult:
    """acc and acc_norm of `model` on `items` (see the module docstring)."""
    if not items:
        raise UserError("no items to score")
    requests, owners = [], []
    for n, item in enumerate(items):
        for choice in item.choices:
            requests.append(encode_pair(tokenizer, item.context, delimiter + choice))
            owners.append(n)
    sums = loglikelihoods(model, requests, batch_size=batch_size, progress=progress)
    scores: list[list[float]] = [[] for _ in items]
    for n, s in zip(owners, sums):
        scores[n].append(s)
    # the first of equal scores wins, as numpy's argmax in the harness
    pred = [max(range(len(s)), key=s.__getitem__) for s in scores]
    # the harness divides by the choice's own length in characters (without the delimiter)
    normed = [[v / len(c) for v, c in zip(s, it.choices)] for s, it in zip(scores, items)]
    pred_norm = [max(range(len(s)), key=s.__getitem__) for s in normed]
    acc = sum(p == it.label for p, it in zip(pred, items)) / len(items)
    acc_norm = sum(p == it.label for p, it in zip(pred_norm, items)) / len(items)
    return ChoiceResult(acc, acc_norm, len(items), scores, pred, pred_norm)
