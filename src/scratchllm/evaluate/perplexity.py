"""Perplexity and bits per byte of a language model on a text, with a sliding window.

A text longer than the model's context is scored in windows of `context` tokens that start `stride`
tokens apart; each token is scored once, in the first window that reaches it, so it sees as much
context as the stride allows (at least `context - stride` tokens once the first window is past).
This is Hugging Face's "perplexity of fixed-length models" method; `stride == context` is the
plain split into non-overlapping windows (each window's first tokens see little context), a smaller
stride costs `context / stride` times the compute and gives each token more.

    perplexity      exp(total nats / tokens scored)       depends on the tokenizer
    bits per byte   total nats / (ln 2 * UTF-8 bytes)     does not: models with different
                                                          tokenizers compare (nanochat's way)

Documents are scored as training sees them (`data.shards`): each one follows the tokenizer's
`<|endoftext|>`, which is context only, never a target, so the first token of every document is
scored and the separators add nats to neither sum (nanochat leaves special tokens out of bits per
byte the same way). A tokenizer without one scores the documents joined by a blank line as one
text, whose first token has no context and is not scored (its bytes still count).

Not here: reading datasets (`data.sources`), the command (`cli/eval.py`), multiple choice
(`evaluate.multiple_choice`). References: huggingface.co/docs/transformers/perplexity;
Karpathy's nanochat `loss_eval.evaluate_bpb`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scratchllm.errors import UserError

# Windows scored together. Each costs one (context x vocabulary) float32 logits tensor: for GPT-2
# (1024 x 50,257) that is about 200 MB, so a few at once suit a laptop.
DEFAULT_BATCH_SIZE = 4
# Joins the documents of a tokenizer without <|endoftext|> into one text.
DOCUMENT_JOIN = "\n\n"


@dataclass(frozen=True)
class Perplexity:
    """What scoring a text gives: the sums, and the measures made of them."""

    nats: float  # total negative log-likelihood of the scored tokens (natural log)
    tokens: int  # tokens scored
    bytes: int  # UTF-8 bytes of the text (the documents)
    windows: int  # model calls (rows) it took
    context: int
    stride: int

    @property
    def loss(self) -> float:
        """Mean cross-entropy per token (nats): what training reports as the loss."""
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nats / (math.log(2) * self.bytes)

    def to_dict(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte, "loss": self.loss,
                **asdict(self)}


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """The windows that score a stream of `n` ids: (begin, end, new) with inputs ids[begin:end],
    targets ids[begin + 1:end + 1], of which the last `new` are scored (the others were scored before).

    Every target position 1 .. n-1 is scored exactly once:

    >>> windows(10, 4, 2)
    [(0, 4, 4), (2, 6, 2), (4, 8, 2), (6, 9, 1)]
    >>> windows(10, 4, 4)
    [(0, 4, 4), (4, 8, 4), (8, 9, 1)]
    """
    if context < 1:
        raise UserError(f"the context must be >= 1 token, got {context}")
    if not 1 <= stride <= context:
        raise UserError(f"--stride must be between 1 and the model's context ({context}), got {stride}")
    out, scored_to = [], 0  # predictions are scored up to input position scored_to (exclusive)
    for begin in range(0, max(1, n - 1), stride):
        end = min(begin + context, n - 1)
        out.append((begin, end, end - scored_to))
        scored_to = end
        if end == n - 1:
            break
    return [w for w in out if w[2] > 0]


def stream(tokenizer: Any, documents: Sequence[str]) -> tuple[list[int], list[bool], int]:
    """(ids, scored, bytes): the documents as one stream of ids, which of them are targets, and the
    UTF-8 bytes of the text they stand for (see the module docstring for the separators)."""
    docs = [d for d in documents if d]
    if not docs:
        raise UserError("the text to score is empty")
    eot = tokenizer.eot_id
    if eot is None:
        text = DOCUMENT_JOIN.join(docs)
        ids = tokenizer.encode(text)
        return ids, [False] + [True] * (len(ids) - 1), len(text.encode("utf-8"))
    ids, scored = [], []
    for d in docs:
        doc = tokenizer.encode(d)
        ids += [eot] + doc
        scored += [False] + [True] * len(doc)
    return ids, scored, sum(len(d.encode("utf-8")) for d in docs)


def score_ids(model: Any, ids: Sequence[int], n_bytes: int, *, scored: Sequence[bool] | None = None,
              stride: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True) -> Perplexity:
    """Perplexity of `model` on the id stream `ids` (`scored[i]`: whether id i is a target; default all
    but the first), `n_bytes` the UTF-8 bytes of its text. `stride` defaults to half the context."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from scratchllm.runtime import eval_mode

    context = model.config.context_length
    # half a context: every token after the first window sees at least half a context, for twice the work
    stride = max(1, context // 2) if stride is None else stride
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    scored = [False] + [True] * (len(ids) - 1) if scored is None else list(scored)
    if len(ids) < 2 or not any(scored[1:]):
        raise UserError("the text is too short to score: it needs at least two tokens")
    if n_bytes < 1:
        raise UserError("the text to score is empty")
    plan = windows(len(ids), context, stride)
    device = next(model.parameters()).device
    data = torch.tensor(list(ids), dtype=torch.long)
    mask = torch.tensor(scored, dtype=torch.bool)
    nats, tokens = 0.0, 0
    with eval_mode(model), torch.no_grad(), tqdm(total=len(plan), unit="window", desc="scoring",
                                                 disable=not progress, leave=False) as bar:
        for start in range(0, len(plan), batch_size):
            chunk = plan[start: start + batch_size]
            width = max(end - begin for begin, end, _ in chunk)
            x = torch.zeros(len(chunk), width, dtype=torch.long)  # (B, T): right-padded, causal: padding is unseen
            y = torch.full((len(chunk), width), -100, dtype=torch.long)  # (B, T): -100 is not scored
            for row, (begin, end, new) in enumerate(chunk):
                n = end - begin
                x[row, :n] = data[begin:end]
                targets = data[begin + 1: end + 1].clone()
                targets[: n - new] = -100  # scored in an earlier window
                targets[~mask[begin + 1: end + 1]] = -100  # separators are context only
                y[row, :n] = targets
            logits = model(x.to(device)).float()  # (B, T, vocab)
            losses = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), ignore_index=-100,
                                     reduction="none")  # (B*T,)
            nats += float(losses.double().sum())
            tokens += int((y != -100).sum())
            bar.update(len(chunk))
    return Perplexity(nats=nats, tokens=tokens, bytes=n_bytes, windows=len(plan), context=context, stride=stride)


def perplexity(model: Any, tokenizer: Any, text: str | Sequence[str], *, stride: int | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = True) -> Perplexity:
    """Perplexity and bits per byte of `model` on `text` (a string, or a list of documents)."""
    documents = [text] if isinstance(text, str) else list(text)
    ids, scored, n_bytes = stream(tokenizer, documents)
    return score_ids(model, ids, n_bytes, scored=scored, stride=stride, batch_size=batch_size, progress=progress)
