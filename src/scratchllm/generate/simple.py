"""The book's uncached generation loops: the reference the KV-cached engine is tested against.

`generate_text_simple` is chapter 4's greedy loop and `generate_simple` chapter 5's loop with
temperature and top-k (Raschka 2024, listings 4.8 and 5.4; the book calls the latter `generate`):
at every step the model re-reads the last `context_size` tokens from scratch, with no cache. Slow
(each new token costs a full forward over the window) but obviously right. Additions to the book:
an explicit `torch.Generator` for reproducible sampling, and the EOS check works per batch of one
as in the book. These are the package's one copy of the book's loops: the teaching models of
`steps` are tested with them.

Not for real use: see `generate.engine` (cache, batching, stops) and `generate.text` (streaming).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def generate_text_simple(model, idx: torch.Tensor, max_new_tokens: int, context_size: int) -> torch.Tensor:
    """Greedy: append the argmax token `max_new_tokens` times. idx (B, T) -> (B, T + max_new_tokens)."""
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # (B, <= context_size)
        logits = model(idx_cond)[:, -1, :]  # (B, vocab)
        idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
        idx = torch.cat((idx, idx_next), dim=1)  # (B, T + 1)
    return idx


@torch.no_grad()
def generate_simple(model, idx: torch.Tensor, max_new_tokens: int, context_size: int, temperature: float = 0.0,
             top_k: int | None = None, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """The book's sampling loop: top-k filter, temperature, multinomial draw (argmax at temperature 0).

    Stops early when a batch of one draws `eos_id` (which is not appended). idx (B, T) -> (B, T + n).
    """
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]  # (B, <= context_size)
        logits = model(idx_cond)[:, -1, :]  # (B, vocab)
        if top_k is not None:
            top_logits, _ = torch.topk(logits, top_k)  # (B, top_k)
            logits = torch.where(logits < top_logits[:, -1:], torch.tensor(float("-inf"), device=logits.device),
                                 logits)
        if temperature > 0.0:
            probs = torch.softmax(logits / temperature, dim=-1)  # (B, vocab)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
        if eos_id is not None and idx.shape[0] == 1 and idx_next.item() == eos_id:
            break
        idx = torch.cat((idx, idx_next), dim=1)  # (B, T + 1)
    return idx
