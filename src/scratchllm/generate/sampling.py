"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty.

Each step is a small pure function on a (B, V) tensor of logits; `sample_next` chains them in the
usual order (repetition penalty, temperature, top-k, top-p, then a draw) with an explicit
`torch.Generator`, so the same seed gives the same tokens. Temperature 0 means greedy (argmax),
which ignores top-k/top-p.

Not here: the model, the KV cache, stop conditions (`generate.engine`, `generate.text`).

References: Raschka 2024 ch. 5.3 (temperature, top-k); Holtzman et al. 2019 (nucleus / top-p);
Keskar et al. 2019 (CTRL's repetition penalty).
"""

from __future__ import annotations

import torch


def apply_repetition_penalty(logits: torch.Tensor, prev_ids: torch.Tensor | None, penalty: float) -> torch.Tensor:
    """CTRL's penalty: for tokens already present, divide positive logits and multiply negative ones.

    logits: (B, V). prev_ids: (B, N) ids (negative entries are padding and ignored) or a (B, V)
    bool mask of tokens present. Returns a new tensor; `penalty` 1.0 returns `logits` unchanged.

    >>> apply_repetition_penalty(torch.tensor([[2.0, -2.0, 1.0]]), torch.tensor([[0, 1]]), 2.0).tolist()
    [[1.0, -4.0, 1.0]]
    """
    if penalty == 1.0 or prev_ids is None:
        return logits
    if prev_ids.dtype == torch.bool:
        present = prev_ids
    else:
        b, v = logits.shape
        ids = prev_ids.long()
        ids = torch.where(ids < 0, v, ids)  # padding goes to an extra column, dropped below
        present = torch.zeros(b, v + 1, dtype=torch.bool, device=logits.device)
        present.scatter_(1, ids, True)
        present = present[:, :v]  # (B, V)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present, penalised, logits)


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k largest logits per row (ties with the k-th are kept), set the rest to -inf.

    >>> top_k_filter(torch.tensor([[1.0, 3.0, 2.0]]), 2).tolist()
    [[-inf, 3.0, 2.0]]
    """
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p.

    The most likely token is always kept, so p -> 0 is greedy; p = 1 keeps every token.

    >>> top_p_filter(torch.log(torch.tensor([[0.5, 0.3, 0.2]])), 0.6).isinf().tolist()
    [[False, False, True]]
    >>> top_p_filter(torch.log(torch.tensor([[0.5, 0.3, 0.2]])), 0.01).isinf().tolist()
    [[False, True, True]]
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above each one
    drop_sorted = mass_before >= p  # (B, V); the first token has mass_before 0 < p and stays
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The argmax of each row: (B, V) logits -> (B,) int64 ids, the first of equal largest logits (NaN counts as
    largest), as torch.argmax. On the CPU through numpy's argmax, which reads a GPT-2 vocabulary's logits
    several times faster than torch's (bf16 logits widened first: exact, so the same ids); a decode step
    makes one such call.

    >>> greedy(torch.tensor([[0.1, 2.0, 2.0], [3.0, 0.0, 1.0]])).tolist()
    [1, 0]
    """
    if logits.device.type != "cpu" or logits.requires_grad:
        return torch.argmax(logits, dim=-1)
    rows = logits if logits.dtype is torch.float32 else logits.float()  # (no call for fp32 logits: one less op)
    ids = rows.numpy().argmax(-1)
    return torch.from_numpy(ids.astype("int64", copy=False)) if ids.ndim else torch.tensor(int(ids))


def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0,
                repetition_penalty: float = 1.0, prev_ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The next token for each row: (B, V) logits -> (B,) int64 ids.

    temperature 0 is greedy: argmax after the repetition penalty (top-k/top-p change nothing then).

    >>> sample_next(torch.tensor([[0.1, 2.0, 0.3]]), temperature=0).tolist()
    [1]
    >>> g = torch.Generator().manual_seed(0)
    >>> sample_next(torch.tensor([[0.0, 5.0, 0.0]]), temperature=1.0, top_k=1, generator=g).tolist()
    [1]
    """
    logits = apply_repetition_penalty(logits, prev_ids, repetition_penalty)
    if temperature == 0:
        return greedy(logits)
    logits = logits.float() / temperature
    logits = top_k_filter(logits, top_k)
    logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator seeded with `seed` (reproducible), or from fresh OS entropy when None."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g
