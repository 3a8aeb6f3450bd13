"""The generation engine on token ids: KV-cached prefill then decode, batched, stopping by id.

`Decoder(model, prompts, config)` is the decode loop over a batch of prompts (the thing a server's
batching drives): used as a context manager, iterating it yields each step's new token per row.
`generate(model, prompt_ids, config)` returns the new ids of one prompt and
`generate_batch(model, prompts, config)` those of several, left-padded so they end together (each
row stops on its own; finished rows stop changing, and the loop ends when every row has stopped).

How one generation runs:
1. Prompts longer than the context keep their most recent `context_length` tokens (one warning
   per call).
2. One KV cache of min(context_length, prompt + max_new_tokens) positions is allocated.
3. Prefill: one forward over the (left-padded) prompts fills the cache; only the last position's
   logits are computed. Padded batches pass an attention mask and position ids that count real
   tokens only, so each row sees exactly what it would see alone.
4. Decode: sample a token per row (`sampling.sample_next`), feed it as a single query.
5. Stop a row on its end-of-text id (not returned), when the caller says so (`Decoder.done`, as
   the text API does for stop strings), or after max_new_tokens.
With `config.prompt_lookup` (greedy, one prompt), step 4 also checks draft tokens copied from the
text in the same forward pass (`generate.speculative`): same tokens, fewer passes.

End of text: `eos_id` is an id (the row stops when it draws it), several ids (models with more than
one end-of-text token, such as Llama 3's `<|end_of_text|>` and `<|eot_id|>`) or None (no end-of-text id).
Functions that have a tokenizer (the text API, `generate.text`) also take `TOKENIZER_EOS`, the
tokenizer's `<|endoftext|>`, and default to it; `end_of_text` resolves the three, once for all.

Context overflow (the cache is full and generation goes on): the window slides. The cache is
reset and re-prefilled with each row's most recent context_length // 2 tokens, then decoding
continues; so a re-prefill happens once every context_length // 2 new tokens rather than at every
step. This is the same for learned positions and RoPE (positions restart at 0 in the new window).
The book's uncached loop instead re-reads the last context_length tokens at every step; outputs
are identical until the first slide and differ (slightly shorter memory) after it.

Speed: at batch 1 a decode step reads every weight once, so the step is memory-bandwidth bound.
The Decoder therefore runs the model's large linears through `model.fast_linear` for its duration
(a C matrix-vector kernel for one row, oneDNN's packed layout for a few), and keeps its own work
per step small: sampling, one `.tolist()`, no mask or position tensors unless the batch is padded,
logits for the last position only, `torch.inference_mode`. torch.compile of the model is not used:
on a small CPU it recompiles per layer and per cache length, and the compiled step was not faster.
`benchmarks/generate.py` measures it against HF transformers and the book's loop.

Not here: the sampling math (`generate.sampling`), speculative drafts (`generate.speculative`),
text, UTF-8 and stop strings (`generate.text`), the uncached reference loops (`generate.simple`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from typing import Literal

import torch

from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate.sampling import make_generator, sample_next
from scratchllm.generate.speculative import rows_per_step, verify_draft
from scratchllm.model.fast_linear import fast_linears
from scratchllm.runtime import eval_mode

PAD_ID = 0  # id placed in padding slots; masked out, so any valid id works

# The one end-of-text convention (`eos_id` of every generation function): an id, a sequence of ids,
# None for no end-of-text id, or TOKENIZER_EOS for the tokenizer's <|endoftext|> where a tokenizer is given.
TOKENIZER_EOS = "tokenizer"
EosId = int | Sequence[int] | None | Literal["tokenizer"]


def end_of_text(eos_id: EosId, tokenizer=None) -> frozenset[int]:
    """The ids that end a row (empty: none): `eos_id` itself (an id or several), or the tokenizer's
    `<|endoftext|>` for TOKENIZER_EOS (none when the tokenizer has none, e.g. a character vocabulary).

    >>> sorted(end_of_text(50256)), sorted(end_of_text([128001, 128009])), end_of_text(None)
    ([50256], [128001, 128009], frozenset())
    """
    if isinstance(eos_id, str) and eos_id == TOKENIZER_EOS:
        if tokenizer is None:
            raise UserError("eos_id=TOKENIZER_EOS needs a tokenizer; pass the id itself (tokenizer.eot_id) "
                            "or None for no end-of-text id")
        return frozenset() if tokenizer.eot_id is None else frozenset({tokenizer.eot_id})
    if eos_id is None:
        return frozenset()
    ids = list(eos_id) if isinstance(eos_id, (list, tuple, set, frozenset)) else [eos_id]
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise UserError(f"eos_id must be a token id (>= 0), several ids, None (no end-of-text id) or "
                            f"TOKENIZER_EOS (the tokenizer's <|endoftext|>), got {eos_id!r}")
    return frozenset(ids)


class Decoder:
    """The cached decode loop over a batch of prompts (lists of token ids).

        with Decoder(model, prompts, config, eos_id=eos) as dec:
            for step in dec:  # one list per step: each row's new token, None once the row stopped
                ...           # set dec.done[row] = True to stop a row (e.g. on a stop string)

    Within the `with`, the model is in eval mode with its large linears swapped for the fast
    few-row readers; both are put back on exit. `generator` overrides `config.seed`; `eos_id` is
    an id, several ids or None (see `end_of_text`).
    """

    def __init__(self, model, prompts: Sequence[Sequence[int]], config: SampleConfig, *,
                 eos_id: int | None = None, generator: torch.Generator | None = None) -> None:
        if not prompts:
            raise UserError("no prompts given")
        ctx = model.config.context_length
        rows = [[int(t) for t in p] for p in prompts]
        if any(len(r) == 0 for r in rows):
            raise UserError("a prompt is empty; give at least one token (e.g. the tokenizer's <|endoftext|>)")
        if any(len(r) > ctx for r in rows):
            longest = max(len(r) for r in rows)
            warnings.warn(f"a prompt of {longest} tokens is longer than the model's context of {ctx}; "
                          f"keeping its last {ctx} tokens", stacklevel=3)
            rows = [r[-ctx:] for r in rows]
        self.model, self.config, self.eos_ids = model, config, end_of_text(eos_id)
        self.device = model.lm_head.weight.device
        self.generator = generator if generator is not None else make_generator(config.seed, self.device)
        self.rows = rows  # every row's tokens so far (prompt + generated), for sliding and drafts
        self.done = [False] * len(rows)
        self.ctx = ctx
        self.keep = max(1, ctx // 2)  # tokens kept when the window slides
        self.speculate = config.prompt_lookup > 0 and len(rows) == 1
        b = len(rows)
        cache_len = min(ctx, max(len(r) for r in rows) + max(config.max_new_tokens, 1))
        self.cache = model.new_kv_cache(b, cache_len)
        # repetition penalty: (B, V) mask of tokens present in each row
        self.seen = None
        if config.repetition_penalty != 1.0:
            self.seen = torch.zeros(b, model.config.vocab_size, dtype=torch.bool, device=self.device)
            for i, r in enumerate(rows):
                self.seen[i, torch.tensor(r, device=self.device)] = True
        self.mask = None  # (B, cache_len) bool, True = real token; only for padded batches
        self.next_pos = None  # (B, 1) position of each row's next token; only for padded batches
        self._contexts: ExitStack | None = None

    def __enter__(self) -> Decoder:
        with ExitStack() as stack:
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(fast_linears(self.model, rows_per_step(len(self.rows), self.config.prompt_lookup)))
            self._contexts = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        if self._contexts is not None:
            self._contexts.close()
            self._contexts = None

    def _prefill(self, seqs: list[list[int]]) -> torch.Tensor:
        """Reset the cache and run the (left-padded) sequences through it; last logits (B, V)."""
        self.cache.reset()
        lens = [len(s) for s in seqs]
        width = max(lens)
        ids = torch.tensor([[PAD_ID] * (width - n) + s for s, n in zip(seqs, lens)], device=self.device)  # (B, T)
        if min(lens) == width:
            self.mask = self.next_pos = None
            logits = self.model(ids, kv_cache=self.cache, last_only=True)
        else:
            self.mask = torch.ones(len(seqs), self.cache.max_len, dtype=torch.bool, device=self.device)
            for i, n in enumerate(lens):
                self.mask[i, : width - n] = False
            real = self.mask[:, :width]
            position_ids = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
            self.next_pos = torch.tensor(lens, device=self.device)[:, None]  # (B, 1)
            logits = self.model(ids, kv_cache=self.cache, position_ids=position_ids, attention_mask=real,
                                last_only=True)
        return logits[:, -1]  # (B, V)

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (B,) and return the next logits (B, V)."""
        if self.cache.pos >= self.cache.max_len:  # context full: slide the window
            return self._prefill([r[-self.keep:] for r in self.rows])
        if self.mask is None:
            logits = self.model(tokens[:, None], kv_cache=self.cache, last_only=True)
        else:
            end = self.cache.pos + 1
            logits = self.model(tokens[:, None], kv_cache=self.cache, position_ids=self.next_pos,
                                attention_mask=self.mask[:, :end], last_only=True)
            self.next_pos = self.next_pos + 1
        return logits[:, -1]  # (B, V)

    def _accept(self, out: list[int | None]) -> list[int | None]:
        """Record one step's tokens (B,): the end-of-text id ends a row (None), others join the row."""
        for i, t in enumerate(out):
            if self.done[i] or t in self.eos_ids:
                self.done[i] = True
                out[i] = None
            else:
                self.rows[i].append(t)
        return out

    @torch.inference_mode()
    def __iter__(self) -> Iterator[list[int | None]]:
        c = self.config
        if c.max_new_tokens == 0:
            return
        speculate = self.speculate
        logits = self._prefill(self.rows)
        emitted = 0
        while True:
            nxt = sample_next(logits, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                              repetition_penalty=c.repetition_penalty, prev_ids=self.seen,
                              generator=self.generator)  # (B,)
            out = self._accept(nxt.tolist())
            if self.seen is not None:
                self.seen.scatter_(1, nxt[:, None], True)
            yield out
            emitted += 1
            if all(self.done) or emitted == c.max_new_tokens:
                return
            checked = None
            if speculate:
                checked = verify_draft(self.model, self.cache, self.rows[0], out[0],
                                       min(c.prompt_lookup, c.max_new_tokens - emitted), self.device)
            if checked is None:
                logits = self._decode(nxt)
                continue
            drafts, logits = checked
            for t in drafts:  # each accepted draft is a step of its own for the caller
                yield self._accept([t])
                emitted += 1
                if all(self.done) or emitted == c.max_new_tokens:
                    return


def generate_batch(model, prompts: Sequence[Sequence[int]], config: SampleConfig, *, eos_id: int | None = None,
                   generator: torch.Generator | None = None) -> list[list[int]]:
    """New token ids for each prompt (prompts may differ in length; they are left-padded).

    A row stops at `eos_id` (not included; None: no end-of-text id) or after
    `config.max_new_tokens`. `generator` overrides `config.seed`. Stop strings are text: use
    `generate.text.complete_batch` (ids and text) with a tokenizer.
    """
    if config.stop:
        raise UserError("stop strings are text and need a tokenizer: use scratchllm.generate.text.complete_batch "
                        "(or generate_text) with the tokenizer, or drop config.stop")
    out: list[list[int]] = [[] for _ in prompts]
    with Decoder(model, prompts, config, eos_id=eos_id, generator=generator) as dec:
        for step in dec:
            for i, t in enumerate(step):
                if t is not None:
                    out[i].append(t)
    return out


def generate(model, prompt_ids: Sequence[int], config: SampleConfig, *, eos_id: int | None = None,
             generator: torch.Generator | None = None) -> list[int]:
    """New token ids after `prompt_ids` (the prompt is not included); see `generate_batch`."""
    return generate_batch(model, [prompt_ids], config, eos_id=eos_id, generator=generator)[0]
