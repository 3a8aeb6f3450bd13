"""The generation engine on token ids: KV-cached prefill then decode, batched, stopping by id.

`Decoder(model, prompts, config)` is the decode loop over a batch of prompts: used as a context
manager, iterating it yields each step's new token per row. `Decoder(model, max_batch=N)` is an
open batch for continuous batching (what `serve.scheduler` drives): rows join with `add` (each with
its own sampling settings and generator) and leave when done, between steps of `step()`.
`generate(model, prompt_ids, config)` returns the new ids of one prompt and
`generate_batch(model, prompts, config)` those of several, left-padded so they end together (each
row stops on its own; finished rows stop changing, and the loop ends when every row has stopped).

How one generation runs:
1. Prompts longer than the context keep their most recent `context_length` tokens (one warning
   per call).
2. One KV cache of min(context_length, prompt + max_new_tokens) positions is allocated (an open
   batch's grows as rows join, up to the context).
3. Prefill: one forward over the (left-padded) prompts fills the cache; only the last position's
   logits are computed. Padded batches pass an attention mask and position ids that count real
   tokens only, so each row sees exactly what it would see alone. One prompt alone (with the C kernel
   built) has its last token read as a decode step instead, recorded (`model.step_plan`), so that
   every decode step after it is one C call. An open batch's steps are recorded too whenever it is down
   to one row (the positions before that row are dropped first, so its steps need no mask).
4. Decode: sample a token per row (`sampling.sample_next`), feed it as a single query.
5. Stop a row on its end-of-text id (not returned), when the caller says so (`Decoder.done`, as
   the text API does for stop strings), or after max_new_tokens.
Rows joining a running batch are prefilled together in a cache of their own and copied into the
batch's cache so that every row's positions end at the same place; a row that starts later has
unused positions before it, hidden by its attention mask (`Decoder`'s doc).
With `config.prompt_lookup` (greedy, one prompt), step 4 also checks draft tokens copied from the
text in the same forward pass (`generate.speculative`): same tokens, fewer passes.

End of text: `eos_id` is an id (the row stops when it draws it), several ids (models with more than
one end-of-text token, such as Llama 3's `<|end_of_text|>` and `<|eot_id|>`) or None (no end-of-text id).
Functions that have a tokenizer (the text API, `generate.text`) also take `TOKENIZER_EOS`, the
tokenizer's `<|endoftext|>`, and default to it; `end_of_text` resolves the three, once for all.

Context overflow (a row has filled the context and generation goes on): its window slides. The
row's most recent context_length // 2 tokens are prefilled again in place of its old ones, then
decoding continues; so a re-prefill happens once every context_length // 2 new tokens rather than
at every step, and only for the rows that filled the context (each row slides as it would alone).
This is the same for learned positions and RoPE (positions restart at 0 in the new window).
The book's uncached loop instead re-reads the last context_length tokens at every step; outputs
are identical until the first slide and differ (slightly shorter memory) after it.

Speed: at batch 1 a decode step reads every weight once, so the step is memory-bandwidth bound.
The Decoder therefore runs the model's large linears through `model.fast_linear` for its duration
(a C matrix-vector kernel for one row, oneDNN's packed layout for a few; at batch 1 the model's
blocks then also attend over the cache in C: `model.layers.Block.decode_one`; and that step, recorded as the
prompt's last token is read, is replayed in one C call a token: `model.step_plan`), and keeps its own work
per step small: sampling (greedy through numpy's argmax, `sampling.greedy`), one `.tolist()`, no mask
or position tensors unless the batch is padded, logits for the last position only,
`torch.inference_mode`. A greedy row alone with a plan (no repetition penalty, no log-probabilities) is the
smallest case: its step is the plan's one C call, which also picks the token (`StepPlan.greedy`), and about
a microsecond of Python around it, outside inference mode (`_greedy_step`, `_one_row`).
torch.compile of the model is not used: on a small CPU it recompiles per
layer and per cache length, and the compiled step was not faster.
`benchmarks/generate.py` measures it against HF transformers and the book's loop.

Not here: the sampling math (`generate.sampling`), speculative drafts (`generate.speculative`),
text, UTF-8 and stop strings (`generate.text`), the uncached reference loops (`generate.simple`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Literal

import torch

from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate.sampling import make_generator, sample_next
from scratchllm.generate.speculative import rows_per_step, verify_draft
from scratchllm.model import gemv
from scratchllm.model.fast_linear import fast_linears
from scratchllm.model.gpt import GPT
from scratchllm.model.step_plan import StepPlan
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


@dataclass(eq=False)
class Row:
    """One sequence in a decoder's batch: its tokens, its own sampling settings and its progress.

    A fixed batch (prompts given to `Decoder`) shares one config and one generator; rows added to an
    open batch (`Decoder.add`) each bring theirs, so a seeded row draws the same tokens alone or batched.
    """

    tokens: list[int]  # prompt + generated so far (a sliding window reads the most recent ones)
    config: SampleConfig  # sampling settings; max_new_tokens ends the row
    generator: torch.Generator | None  # draws for temperature > 0 (None: a fresh one from OS entropy)
    eos_ids: frozenset[int]
    logprobs: int | None = None  # also report the drawn token's log-probability and the top N (None: off)
    emitted: int = 0  # tokens drawn (the end-of-text id included)
    done: bool = False  # ended (end of text, max_new_tokens) or stopped by the caller; leaves an open batch
    seen: torch.Tensor | None = None  # (V,) bool, tokens present: for the repetition penalty
    # after each step with logprobs: the drawn token's log-probability and the top N (id, log-probability)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


class Decoder:
    """The cached decode loop over a batch of rows (prompts as lists of token ids).

    A fixed batch, the prompts given up front:

        with Decoder(model, prompts, config, eos_id=eos) as dec:
            for step in dec:  # one list per step: each row's new token, None once the row stopped
                ...           # set dec.done[row] = True to stop a row (e.g. on a stop string)

    An open batch (continuous batching: what a server drives), rows joining and leaving as it runs:

        with Decoder(model, max_batch=16) as dec:
            row = dec.add(prompt_ids, config, generator=g, eos_id=eos)  # joins at the next step
            for row, token in dec.step():  # token None: the row drew its end-of-text id
                ...                        # row.done = True stops a row; done rows leave the batch

    Each step feeds every row's last token in one forward pass, prefills the rows that joined since
    (one left-padded forward of their own, copied into the batch's cache), then draws one token per
    row. Rows of a batch share one cache whose filled positions end together; a row that joined later
    starts later and its mask hides the positions before it (position ids count its own tokens), so
    each row sees exactly what it would see alone. When the cache is full it grows (up to the context),
    else drops positions no row uses any more, else slides the window (module doc). A fixed batch
    keeps finished rows in place (row i stays row i) until every row is done; an open batch drops
    them, the last row taking the leaving row's place.

    Within the `with`, the model is in eval mode with its large linears swapped for the fast
    few-row readers; both are put back on exit. `generator` overrides `config.seed`; `eos_id` is
    an id, several ids or None (see `end_of_text`).
    """

    def __init__(self, model, prompts: Sequence[Sequence[int]] = (), config: SampleConfig | None = None, *,
                 eos_id: EosId = None, generator: torch.Generator | None = None,
                 max_batch: int | None = None) -> None:
        if not prompts and max_batch is None:
            raise UserError("no prompts given")
        if max_batch is not None and max_batch < 1:
            raise UserError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.config = model, config if config is not None else SampleConfig()
        self.ctx = model.config.context_length
        self.keep = max(1, self.ctx // 2)  # tokens kept when the window slides
        self.device = model.lm_head.weight.device
        self.open = max_batch is not None
        self.max_batch = max_batch if self.open else len(prompts)
        self.slots: list[Row] = []  # the rows in the batch, in cache row order
        self.starts: list[int] = []  # cache position where each slot's tokens start
        self.pending: list[Row] = []  # rows added, prefilled at the next step
        self.cache = None  # allocated at the first prefill
        self._last: list[int] = []  # each slot's token drawn at the last step, fed at the next
        self._logits: torch.Tensor | None = None  # (len(slots), V): the next logits, when already computed
        self._contexts: ExitStack | None = None
        # batch-1 steps: the recorded step (model.step_plan), for which cache buffers, steps seen on them
        self._plan: StepPlan | None = None
        self._plan_key: tuple | None = None
        self._plan_steps = 0
        # the fixed batch: rows in the caller's order, one shared config and generator
        self.rows: list[list[int]] = []
        self.done: list[bool] = []
        self._fixed: list[Row] = []
        if prompts:
            ctx, rows = self.ctx, [[int(t) for t in p] for p in prompts]
            if any(len(r) == 0 for r in rows):
                raise UserError("a prompt is empty; give at least one token (e.g. the tokenizer's <|endoftext|>)")
            if any(len(r) > ctx for r in rows):
                longest = max(len(r) for r in rows)
                warnings.warn(f"a prompt of {longest} tokens is longer than the model's context of {ctx}; "
                              f"keeping its last {ctx} tokens", stacklevel=2)
                rows = [r[-ctx:] for r in rows]
            shared = generator if generator is not None else make_generator(self.config.seed, self.device)
            eos = end_of_text(eos_id)
            self._fixed = [self._new_row(r, self.config, shared, eos, None) for r in rows]
            self.pending = list(self._fixed)
            self.rows = [r.tokens for r in self._fixed]  # every row's tokens so far
            self.done = [False] * len(rows)
        self.speculate = self.config.prompt_lookup > 0 and len(prompts) == 1 and not self.open

    def __enter__(self) -> Decoder:
        rows = rows_per_step(self.max_batch, self.config.prompt_lookup if not self.open else 0)
        with ExitStack() as stack:
            stack.enter_context(eval_mode(self.model))
            stack.enter_context(fast_linears(self.model, rows))
            self._contexts = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        self._plan, self._plan_key = None, None  # (its calls read the layers the contexts put back)
        if self._contexts is not None:
            self._contexts.close()
            self._contexts = None

    # --- rows joining --------------------------------------------------------------------------------
    def _new_row(self, tokens: list[int], config: SampleConfig, generator, eos_ids: frozenset[int],
                 logprobs: int | None) -> Row:
        row = Row(tokens, config, generator, eos_ids, logprobs)
        if config.repetition_penalty != 1.0:
            row.seen = torch.zeros(self.model.config.vocab_size, dtype=torch.bool, device=self.device)
            row.seen[torch.tensor(tokens, device=self.device)] = True
        return row

    def add(self, prompt: Sequence[int], config: SampleConfig, *, generator: torch.Generator | None = None,
            eos_id: EosId = None, logprobs: int | None = None) -> Row:
        """Add a row to an open batch: it is prefilled and draws its first token at the next step.

        `generator` overrides `config.seed`; `logprobs` N reports each drawn token's log-probability
        and the N most likely tokens' (`Row.logprob`, `Row.top_logprobs`)."""
        if not self.open:
            raise UserError("rows join an open batch only: create the Decoder with max_batch")
        tokens = [int(t) for t in prompt]
        if not tokens:
            raise UserError("a prompt is empty; give at least one token (e.g. the tokenizer's <|endoftext|>)")
        if len(tokens) > self.ctx:
            warnings.warn(f"a prompt of {len(tokens)} tokens is longer than the model's context of {self.ctx}; "
                          f"keeping its last {self.ctx} tokens", stacklevel=2)
            tokens = tokens[-self.ctx:]
        if config.prompt_lookup:
            raise UserError("prompt_lookup speculates for one prompt alone; an open batch decodes without it")
        gen = generator if generator is not None else make_generator(config.seed, self.device)
        row = self._new_row(tokens, config, gen, end_of_text(eos_id), logprobs)
        if config.max_new_tokens == 0:
            row.done = True
        else:
            self.pending.append(row)
        return row

    @property
    def active(self) -> int:
        """Rows in the batch or waiting to join it (finished rows of an open batch not counted)."""
        return sum(not r.done for r in self.slots) + len(self.pending)

    def _prefill(self, seqs: list[list[int]], head: bool = True):
        """Run the (left-padded) sequences through a cache of their own; (that cache, last logits (B, V), or None
        without the `head`)."""
        lens = [len(s) for s in seqs]
        width = max(lens)
        cache = self.model.new_kv_cache(len(seqs), width)
        ids = torch.tensor([[PAD_ID] * (width - n) + s for s, n in zip(seqs, lens)], device=self.device)  # (B, T)
        if not head:  # (one row, unpadded: `_join`'s prompt read up to its last token)
            self.model.features(ids, kv_cache=cache)
            return cache, None
        if min(lens) == width:
            logits = self.model(ids, kv_cache=cache, last_only=True)
        else:
            real = torch.arange(width, device=self.device)[None, :] >= torch.tensor(
                [width - n for n in lens], device=self.device)[:, None]  # (B, T), True = real token
            position_ids = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
            logits = self.model(ids, kv_cache=cache, position_ids=position_ids, attention_mask=real,
                                last_only=True)
        return cache, logits[:, -1]  # (B, V)

    def _join(self, rows: list[Row], seqs: list[list[int]]) -> torch.Tensor:
        """Prefill `rows` (whose tokens to read are `seqs`) and add them at the end of the batch; their logits.

        One prompt alone (a fixed batch of one, scratchllm's GPT, the kernel built): its last token is read as a
        decode step, recorded (`_decode_one`), so that the step's plan is made while the prompt is read and every
        decode step after it is a replay."""
        last = None
        if (not self.open and self.max_batch == 1 and self.cache is None and isinstance(self.model, GPT)
                and gemv.load() is not None):
            last, seqs = seqs[0][-1], [seqs[0][:-1]]
        small, logits = self._prefill(seqs, head=last is None) if seqs[0] else (None, None)
        width, n = 0 if small is None else small.pos, len(self.slots)
        if self.cache is None:
            room = max(r.config.max_new_tokens for r in rows)
            self.cache = self.model.new_kv_cache(max(len(rows), 1 if self.open else self.max_batch),
                                                 min(self.ctx, width + (last is not None) + max(room, 1)))
        cache = self.cache
        if n + len(rows) > cache.batch_size or width > cache.max_len:
            rows_needed = n + len(rows)
            if self.open:  # grow by doubling, within the batch's limit, so that growing is rare
                rows_needed = max(rows_needed, min(self.max_batch, 2 * cache.batch_size))
            cache.grow(rows_needed, max(width, cache.max_len))
        if width > cache.pos:  # the newcomers are longer than the batch so far: make room before every row
            gap = width - cache.pos
            cache.shift(gap, rows=n)
            self.starts = [s + gap for s in self.starts]
        if small is not None:
            cache.place(small, list(range(n, n + len(rows))))
        self.slots.extend(rows)
        self.starts.extend(cache.pos - len(s) for s in seqs)
        if last is not None:
            logits = self._decode_one(last, cache)  # (1, V)
        return logits

    # --- one step ------------------------------------------------------------------------------------
    def _decode(self) -> torch.Tensor | None:
        """Feed each slot's last drawn token (B,) and return the next logits (B, V)."""
        if not self.slots:
            return None
        cache = self.cache
        if cache.pos >= cache.max_len:
            self._make_room()
        if len(self._last) == 1 and self.starts[0] == 0:  # one row (the cache's row 0, of however many it holds)
            return self._decode_one(self._last[0], cache)  # (1, V)
        tokens = torch.tensor(self._last, device=self.device)[:, None]  # (B, 1)
        if max(self.starts) == 0:
            logits = self.model(tokens, kv_cache=cache, last_only=True)
        else:
            starts = torch.tensor(self.starts, device=self.device)[:, None]  # (B, 1)
            mask = torch.arange(cache.pos + 1, device=self.device)[None, :] >= starts  # (B, pos + 1)
            logits = self.model(tokens, kv_cache=cache, position_ids=cache.pos - starts, attention_mask=mask,
                                last_only=True)
        return logits[:, -1]  # (B, V)

    def _decode_one(self, token: int, cache) -> torch.Tensor:
        """A batch-1 step's logits (1, V): the recorded step replayed in one C call (model.step_plan) where there
        is a plan for this cache, else the model. The plan is recorded at the cache's first batch-1 step, or its
        second where the first had more to do than the kernel's calls (binding a layer's calls may copy a bias),
        once per cache buffers (a grown cache gets a new one)."""
        plan = self._plan
        if plan is not None and plan.fits(cache):
            plan(token)
            return plan.last  # (a view of its logits made once)
        key = (id(cache), cache.k.data_ptr(), cache.v.data_ptr())
        if key != self._plan_key:
            self._plan, self._plan_key, self._plan_steps = None, key, 0
        self._plan_steps += 1
        tokens = torch.tensor([[token]], device=self.device)  # (1, 1)
        if self._plan_steps <= 2:
            logits, self._plan = StepPlan.record(self.model, tokens, cache)
            return logits[:, -1]
        return self.model(tokens, kv_cache=cache, last_only=True)[:, -1]

    def _make_room(self) -> None:
        """The cache is full: grow it (up to the context), else drop positions no row uses, else slide."""
        cache = self.cache
        if cache.max_len < self.ctx:
            cache.grow(cache.batch_size, min(self.ctx, 2 * cache.max_len))
            return
        lowest = min(self.starts)
        if lowest > 0:
            cache.shift(-lowest, rows=len(self.slots))
            self.starts = [s - lowest for s in self.starts]
            return
        # rows that fill the context slide: each restarts from its most recent `keep` tokens, all but the
        # last prefilled here (in place of its old positions), the last fed with the other rows' tokens
        full = [i for i, s in enumerate(self.starts) if s == 0]
        windows = [self.slots[i].tokens[-self.keep:][:-1] for i in full]
        filled = [(i, w) for i, w in zip(full, windows) if w]
        if filled:
            small, _ = self._prefill([w for _, w in filled])
            cache.place(small, [i for i, _ in filled])
        for i, w in zip(full, windows):
            self.starts[i] = cache.pos - len(w)
        lowest = min(self.starts)
        cache.shift(-lowest, rows=len(self.slots))
        self.starts = [s - lowest for s in self.starts]

    def _drop_finished(self) -> None:
        """Finished rows leave an open batch; the last row takes each leaving row's place."""
        i = 0
        while i < len(self.slots):
            if not self.slots[i].done:
                i += 1
                continue
            last = len(self.slots) - 1
            if i != last:
                self.cache.move_row(last, i)
                self.slots[i], self.starts[i], self._last[i] = self.slots[last], self.starts[last], self._last[last]
            self.slots.pop()
            self.starts.pop()
            self._last.pop()
        if not self.slots and self.cache is not None:
            self.cache.reset()
        elif len(self.slots) == 1 and self.starts[0] > 0:  # one row left: drop the positions before it, so that
            self.cache.shift(-self.starts[0], rows=1)  # its steps need no mask (and may be replayed: `_decode_one`)
            self.starts = [0]

    def _sample(self, logits: torch.Tensor) -> list[int]:
        """One token per slot: rows with the same settings (and generator, when sampling) drawn together."""
        if len(self.slots) == 1:  # one row: no groups to make (a batch-1 step's Python counts)
            row = self.slots[0]
            c = row.config
            return sample_next(logits, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                               repetition_penalty=c.repetition_penalty,
                               prev_ids=None if row.seen is None else row.seen[None], generator=row.generator).tolist()
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(self.slots):
            c = r.config
            key = (c.temperature, c.top_k, c.top_p, c.repetition_penalty, id(r.generator) if c.temperature else None)
            groups.setdefault(key, []).append(i)
        out = [0] * len(self.slots)
        for idx in groups.values():
            first = self.slots[idx[0]]
            c = first.config
            sub = logits if len(idx) == len(self.slots) else logits[torch.tensor(idx, device=self.device)]
            seen = None
            if c.repetition_penalty != 1.0:
                seen = torch.stack([self.slots[i].seen for i in idx])  # (B, V)
            nxt = sample_next(sub, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                              repetition_penalty=c.repetition_penalty, prev_ids=seen, generator=first.generator)
            for i, t in zip(idx, nxt.tolist()):
                out[i] = t
        return out

    def _record(self, row: Row, token: int) -> int | None:
        """Count one drawn token for `row`: the end-of-text id ends it (None), others join its tokens."""
        row.emitted += 1
        if token in row.eos_ids:
            row.done = True
            return None
        row.tokens.append(token)
        if row.seen is not None:
            row.seen[token] = True
        if row.emitted >= row.config.max_new_tokens:
            row.done = True
        return token

    def step(self) -> list[tuple[Row, int | None]]:
        """One decoding step: (row, its new token) for every row that was running (None: the row drew its
        end-of-text id). Rows finished before the step are not in it; in an open batch they have left."""
        picked = self._greedy_step()
        return picked if picked is not None else self._step()

    def _greedy_step(self) -> list[tuple[Row, int | None]] | None:
        """The step as one C call, where it is one: one running row, greedy with nothing else to compute (no
        repetition penalty, no log-probabilities), nobody joining, and a plan for its cache (`_decode_one`) with
        room for the step. The plan replays the step and picks its token, the argmax of the logits
        (StepPlan.greedy: sampling.greedy's token). Else None. It makes no torch op, so it runs outside inference
        mode, whose entering and leaving cost ~1 us: a tenth of the demo model's int4 decode step."""
        plan = self._plan
        if plan is None or len(self.slots) != 1 or self.pending or self._logits is not None or not plan.can_pick:
            return None
        row, cache = self.slots[0], self.cache
        c = row.config
        if (row.done or c.temperature != 0 or c.repetition_penalty != 1.0 or row.logprobs is not None
                or self.starts[0] != 0 or not plan.fits(cache)):
            return None
        token = plan.greedy(self._last[0])
        self._last = [token]
        return [(row, self._record(row, token))]

    @torch.inference_mode()
    def _step(self) -> list[tuple[Row, int | None]]:
        if self.open:
            self._drop_finished()
        logits = self._logits
        self._logits = None
        if logits is None and self._last:
            logits = self._decode()
        if self.pending:
            joining, self.pending = self.pending, []
            fresh = self._join(joining, [r.tokens for r in joining])
            logits = fresh if logits is None else torch.cat([logits, fresh])
        if logits is None:
            return []
        drawn = self._sample(logits)
        self._last = drawn
        out = []
        for i, (row, t) in enumerate(zip(self.slots, drawn)):
            if row.done:  # a fixed batch keeps its finished rows; nothing to report
                continue
            if row.logprobs is not None:
                lp = torch.log_softmax(logits[i].float(), dim=-1)  # (V,)
                row.logprob = lp[t].item()
                top = torch.topk(lp, min(row.logprobs, lp.shape[-1])) if row.logprobs else None
                row.top_logprobs = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
            out.append((row, self._record(row, t)))
        return out

    def __iter__(self) -> Iterator[list[int | None]]:  # (its tensor work is in `step` and `_speculate`)
        if self.open:
            raise UserError("an open batch is driven by step(), not iterated")
        if self.config.max_new_tokens == 0:
            return
        if len(self._fixed) == 1:
            yield from self._one_row()
            return
        index = {id(r): i for i, r in enumerate(self._fixed)}
        while True:
            for r, stopped in zip(self._fixed, self.done):
                r.done = r.done or stopped  # the caller's stops
            if all(r.done for r in self._fixed):
                return
            out: list[int | None] = [None] * len(self._fixed)
            for row, t in self.step():
                out[index[id(row)]] = t
            for i, r in enumerate(self._fixed):
                self.done[i] = self.done[i] or (r.done and out[i] is None)
            yield out
            if self.speculate and not self._fixed[0].done and out[0] is not None:
                yield from self._speculate(out[0])

    def _one_row(self) -> Iterator[list[int | None]]:
        """`__iter__` for one row: the same steps, without the bookkeeping for many (a batch-1 step's Python
        counts: the demo model's int4 step is ~30 us)."""
        row, done = self._fixed[0], self.done
        while True:
            if done[0]:
                row.done = True  # the caller's stop
            if row.done:
                return
            stepped = self.step()
            t = stepped[0][1] if stepped else None
            if t is None and row.done:
                done[0] = True
            yield [t]
            if self.speculate and t is not None and not row.done:
                yield from self._speculate(t)

    @torch.inference_mode()
    def _speculate(self, last: int) -> Iterator[list[int | None]]:
        """Prompt lookup for the one row: check drafts after `last` in one pass; each accepted draft is a
        step of its own for the caller."""
        row, c = self._fixed[0], self.config
        if self.cache.pos >= self.cache.max_len:
            return
        checked = verify_draft(self.model, self.cache, row.tokens, last,
                               min(c.prompt_lookup, c.max_new_tokens - row.emitted), self.device)
        if checked is None:
            return
        drafts, logits = checked
        self._logits = logits  # the row's last token is in the cache: the next step samples from these
        for t in drafts:
            self._record(row, t)
            yield [t]
            if row.done or self.done[0]:
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
