"""Speculative decoding by prompt lookup: draft tokens copied from the text, verified in one pass.

Greedy decoding often repeats what is already in the text (quoting the prompt, code edits,
summaries, loops). After each token, `lookup_draft` copies the tokens that followed the latest
earlier occurrence of the text's last 1-3 tokens (prompt lookup, Saxena 2023); `verify_draft`
feeds the last token and the drafts through the model in one forward pass, which gives greedy's
choice at every draft position. The drafts that agree are kept, plus greedy's next token after
them (for free), and the KV cache is rolled back past the others. The tokens are the ones plain
greedy decoding gives (up to float rounding between a one-token and a many-token forward pass,
which can only matter for exact ties); a step reads the weights once, so every accepted draft
saves a whole weight read. `benchmarks/generate.py` measures it.

The engine (`generate.engine`) calls `verify_draft` between decode steps when
`SampleConfig.prompt_lookup` is on (greedy, one prompt). Not here: the decode loop itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def lookup_draft(ids: Sequence[int], k: int, max_ngram: int = 3) -> list[int]:
    """Up to `k` tokens that followed the latest earlier occurrence of the last n tokens of `ids`,
    trying n = max_ngram down to 1 (prompt lookup, Saxena 2023); [] when none occurred before.

    The copy may run on into the tokens it is producing, as an LZ77 back-reference does, so a loop
    of period p yields k tokens, not just the p that follow its latest occurrence.

    >>> lookup_draft([5, 1, 2, 3, 9, 7, 1, 2], k=2)  # [1, 2] occurred at 1: then came 3, 9
    [3, 9]
    >>> lookup_draft([8, 4, 6, 4, 6], k=5), lookup_draft([1, 2, 3], k=5)  # [4, 6] two back: repeat it
    ([4, 6, 4, 6, 4], [])
    """
    if k <= 0:
        return []
    end = len(ids)
    for n in range(min(max_ngram, end - 1), 0, -1):
        tail = list(ids[end - n:])
        for start in range(end - n - 1, -1, -1):  # latest occurrence first, not the tail itself
            if ids[start] == tail[0] and list(ids[start: start + n]) == tail:
                src = start + n
                out = list(ids[src: src + k])
                while len(out) < k:  # the copy overlaps its own output: continue the period
                    out.append(out[len(out) - (end - src)])
                return out
    return []


def verify_draft(model, cache, ids: Sequence[int], last: int, k: int,
                 device: torch.device) -> tuple[list[int], torch.Tensor] | None:
    """Draft up to `k` tokens after `ids` (whose last token `last` is not yet in `cache`) and check
    them in one forward pass.

    Feeds [last, d1 .. dn] after the cache, keeps the drafts greedy decoding would also have chosen
    (d_i == argmax after d_(i-1)), rolls the cache back past the rest, and returns the accepted
    drafts and the logits (1, V) that follow them. None when there is no draft (the caller then
    decodes `last` as usual).
    """
    k = min(k, cache.max_len - cache.pos - 1)  # cache slots left after `last`
    draft = lookup_draft(ids, k)
    if not draft:
        return None
    start = cache.pos
    x = torch.tensor([[last] + draft], device=device)  # (1, 1 + n)
    logits = model(x, kv_cache=cache)[0]  # (1 + n, V)
    best = logits.argmax(dim=-1).tolist()
    n_ok = 0
    while n_ok < len(draft) and draft[n_ok] == best[n_ok]:
        n_ok += 1
    cache.truncate(start + 1 + n_ok)
    return draft[:n_ok], logits[n_ok: n_ok + 1]


def rows_per_step(batch: int, prompt_lookup: int) -> int:
    """The most rows one decode step passes through the model: the batch, or 1 + drafts when speculating."""
    return 1 + prompt_lookup if batch == 1 and prompt_lookup > 0 else batch
