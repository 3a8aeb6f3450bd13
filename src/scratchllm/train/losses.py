"""The losses the training loop minimises: `loss_fn(model, batch) -> scalar tensor`.

- `lm_loss`: next-token cross-entropy of a GPT on an (inputs, targets) batch, the pretraining loss
  (the book's `calc_loss_batch`, chapter 5).
- `chunked_lm_loss`: the same number without ever holding all the logits, for large vocabularies.
- `loss_for(model_config)`: which of the two a pretraining run uses.

Targets equal to -100 are ignored (torch's ignore index: a batch marks padding or prompt tokens so).
Not here: the loop that calls them (`train.loop`), the evaluation that averages them
(`train.loop.batch_eval_fn`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def lm_loss(model: Any, batch: Any) -> Any:
    """Next-token cross-entropy of a GPT on an (inputs, targets) batch: the pretraining loss."""
    x, y = batch
    _, loss = model(x, y)
    return loss


def _head_loss_sum(model: Any, h: Any, y: Any) -> Any:
    """Summed cross-entropy of the LM head on hidden states h (N, C) against targets y (N,)."""
    import torch.nn.functional as F

    logits = model.lm_head(h)  # (N, vocab)
    return F.cross_entropy(logits.float(), y, ignore_index=-100, reduction="sum")


def chunked_lm_loss(model: Any, batch: Any, chunk_tokens: int = 1024) -> Any:
    """`lm_loss` without ever holding all the logits: the head and the loss run on `chunk_tokens`
    positions at a time under activation checkpointing, so only one chunk's (N, vocab) logits exist
    at once, in the forward and in the backward pass (the head is recomputed per chunk).

    With GPT-2's 50,257-token vocabulary the logits, their log-softmax and their gradient are three
    (B*T, vocab) fp32 tensors: 4.9 GB at batch 8 x 1,024; this keeps them to a few hundred MB. Equal
    to `lm_loss` up to float rounding (tested). Needs a model with `features` and `lm_head` (GPT).
    """
    from torch.utils.checkpoint import checkpoint

    x, y = batch
    h = model.features(x).flatten(0, 1)  # (B*T, n_embd)
    y = y.flatten()  # (B*T,)
    total = None
    for i in range(0, h.shape[0], chunk_tokens):
        part = checkpoint(_head_loss_sum, model, h[i:i + chunk_tokens], y[i:i + chunk_tokens], use_reentrant=False)
        total = part if total is None else total + part
    return total / (y != -100).sum().clamp(min=1)


def loss_for(model_config: Any) -> Callable[[Any, Any], Any]:
    """The pretraining loss for a model config: chunked when memory matters (gradient checkpointing on)."""
    return chunked_lm_loss if getattr(model_config, "gradient_checkpointing", False) else lm_loss
