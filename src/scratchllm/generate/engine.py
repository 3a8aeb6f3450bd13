"""The generation engine: KV-cached prefill then decode, batched, with stops and streaming.

`generate(model, prompt_ids, config)` returns the new token ids of one prompt;
`generate_batch(model, prompts, config)` does several prompts at once, left-padded so they end
together (each row stops on its own; finished rows stop changing, and the loop ends when every
row has stopped); `stream(model, tokenizer, prompt, config)` yields text as it is produced and
`generate_text(...)` returns it whole. The engine works on token ids and knows text only through
the tokenizer passed in (for stop strings and streaming).

How one generation runs:
1. Prompts longer than the context keep their most recent `context_length` tokens (one warning
   per call).
2. One KV cache of min(context_length, prompt + max_new_tokens) positions is allocated.
3. Prefill: one forward over the (left-padded) prompts fills the cache; only the last position's
   logits are computed. Padded batches pass an attention mask and position ids that count real
   tokens only, so each row sees exactly what it would see alone.
4. Decode: sample a token per row (`sampling.sample_next`), feed it as a single query.
5. Stop a row on EOS (not returned), on a stop string (`text.TextTracker`; not returned), or after
   max_new_tokens.

Speculative decoding by prompt lookup (`config.prompt_lookup`, greedy, one prompt): after each
token, `lookup_draft` copies the tokens that followed the latest earlier occurrence of the text's
last 1-3 tokens; one forward pass over the drafts gives greedy's choice at every draft position,
the drafts that agree are kept (plus greedy's next token after them, for free), and the cache is
rolled back past the others. The tokens are the ones plain greedy decoding gives (up to float
rounding between a one-token and a many-token forward pass, which can only matter for exact ties);
a step reads the weights once, so every accepted draft saves a whole weight read.

Context overflow (the cache is full and generation goes on): the window slides. The cache is
reset and re-prefilled with each row's most recent context_length // 2 tokens, then decoding
continues; so a re-prefill happens once every context_length // 2 new tokens rather than at every
step. This is the same for learned positions and RoPE (positions restart at 0 in the new window).
The book's uncached loop instead re-reads the last context_length tokens at every step; outputs
are identical until the first slide and differ (slightly shorter memory) after it.

Speed (benchmarks/generate.py): at batch 1 a decode step reads every weight once (GPT-2 124M in
fp32 is ~500 MB), so the step is memory-bandwidth bound. Generation runs the model's large fp32
linears through `model.fast_linear`: one row through scratchllm's C matrix-vector kernel, a few
rows through oneDNN's packed layout, both reading weights far faster than `F.linear` (124M greedy
decode at batch 1: 26 tok/s with F.linear, 56-77 here). The engine's own work per step (sampling,
one `.tolist()`, no mask or position tensors unless the batch is padded, logits for the last
position only, `torch.inference_mode`) is a few percent of it. torch.compile of the model was
measured and not adopted: on the 2-core CPU it compiled for minutes (recompiling per layer and
per cache length) and the compiled step was slower than eager.

Not here: the sampling math (`generate.sampling`), UTF-8/stop-string text handling
(`generate.text`), the uncached reference loop (`generate.simple`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch

from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate.sampling import make_generator, sample_next
from scratchllm.generate.text import TextTracker
from scratchllm.model.fast_linear import fast_linears

PAD_ID = 0  # id placed in padding slots; masked out, so any valid id works


class _Decoder:
    """The cached decode loop over a batch; iterating yields each step's tokens (None for rows that
    already stopped). Callers may set `done[row] = True` between steps (e.g. on a stop string)."""

    def __init__(self, model, prompts: Sequence[Sequence[int]], config: SampleConfig, *, eos_id: int | None,
                 generator: torch.Generator | None) -> None:
        if not prompts:
            raise UserError("no prompts given")
        ctx = model.config.context_length
        rows = [[int(t) for t in p] for p in prompts]
        if any(len(r) == 0 for r in rows):
            raise UserError("a prompt is empty; give at least one token (e.g. the tokenizer's <|endoftext|>)")
        if any(len(r) > ctx for r in rows):
            longest = max(len(r) for r in rows)
            warnings.warn(f"a prompt of {longest} tokens is longer than the model's context of {ctx}; "
                          f"keeping its last {ctx} tokens", stacklevel=4)
            rows = [r[-ctx:] for r in rows]
        self.model, self.config, self.eos_id = model, config, eos_id
        self.device = model.lm_head.weight.device
        self.generator = generator if generator is not None else make_generator(config.seed, self.device)
        self.rows = rows  # every row's tokens so far (prompt + generated), for sliding
        self.done = [False] * len(rows)
        self.ctx = ctx
        self.keep = max(1, ctx // 2)  # tokens kept when the window slides
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
        """Record one step's tokens (B,): EOS ends a row (None), others join the row's text."""
        for i, t in enumerate(out):
            if self.done[i] or t == self.eos_id:
                self.done[i] = True
                out[i] = None
            else:
                self.rows[i].append(t)
        return out

    def _speculate(self, last: int, room: int) -> tuple[list[int], torch.Tensor] | None:
        """Prompt-lookup speculation for one row: draft tokens, checked in one forward pass.

        Feeds [last, d1 .. dn] after the cache, keeps the drafts greedy decoding would also have
        chosen (d_i == argmax after d_(i-1)), rolls the cache back past the rest, and returns the
        accepted drafts and the logits (1, V) that follow them. None when there is no draft.
        """
        free = self.cache.max_len - self.cache.pos - 1  # cache slots left after `last`
        draft = lookup_draft(self.rows[0], min(self.config.prompt_lookup, room, free))
        if not draft:
            return None
        start = self.cache.pos
        ids = torch.tensor([[last] + draft], device=self.device)  # (1, 1 + n)
        logits = self.model(ids, kv_cache=self.cache)[0]  # (1 + n, V)
        best = logits.argmax(dim=-1).tolist()
        n_ok = 0
        while n_ok < len(draft) and draft[n_ok] == best[n_ok]:
            n_ok += 1
        self.cache.truncate(start + 1 + n_ok)
        return draft[:n_ok], logits[n_ok: n_ok + 1]

    @torch.inference_mode()
    def __iter__(self) -> Iterator[list[int | None]]:
        c = self.config
        if c.max_new_tokens == 0:
            return
        speculate = c.prompt_lookup > 0 and len(self.rows) == 1
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
            checked = self._speculate(out[0], c.max_new_tokens - emitted) if speculate else None
            if checked is None:
                logits = self._decode(nxt)
                continue
            drafts, logits = checked
            for t in drafts:  # each accepted draft is a step of its own for the caller
                yield self._accept([t])
                emitted += 1
                if all(self.done) or emitted == c.max_new_tokens:
                    return


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


class _eval_mode:
    """Put the model in eval mode for the duration, then restore its previous mode."""

    def __init__(self, model) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


def _decode_rows(batch: int, config: SampleConfig) -> int:
    """The most rows one decode step passes through the model: the batch, or 1 + drafts when speculating."""
    return 1 + config.prompt_lookup if batch == 1 and config.prompt_lookup > 0 else batch


def generate_batch(model, prompts: Sequence[Sequence[int]], config: SampleConfig, *, eos_id: int | None = None,
                   generator: torch.Generator | None = None, tokenizer=None) -> list[list[int]]:
    """New token ids for each prompt (prompts may differ in length; they are left-padded).

    A row stops at `eos_id` (not included), at a stop string of `config.stop` (needs `tokenizer`;
    the tokens from the one where the stop string starts on are dropped), or after
    `config.max_new_tokens`. `generator` overrides `config.seed`.
    """
    if config.stop and tokenizer is None:
        raise UserError("stop strings need a tokenizer: pass tokenizer=... (or drop config.stop)")
    out: list[list[int]] = [[] for _ in prompts]
    trackers = [TextTracker(tokenizer, config.stop) for _ in prompts] if config.stop else None
    with _eval_mode(model), fast_linears(model, _decode_rows(len(prompts), config)):
        dec = _Decoder(model, prompts, config, eos_id=eos_id, generator=generator)
        for step in dec:
            for i, t in enumerate(step):
                if t is None:
                    continue
                out[i].append(t)
                if trackers is not None:
                    trackers[i].push(t)
                    if trackers[i].stopped:
                        dec.done[i] = True
    if trackers is not None:
        out = [ids[: tr.keep_tokens] for ids, tr in zip(out, trackers)]
    return out


def generate(model, prompt_ids: Sequence[int], config: SampleConfig, *, eos_id: int | None = None,
             generator: torch.Generator | None = None, tokenizer=None) -> list[int]:
    """New token ids after `prompt_ids` (the prompt is not included); see `generate_batch`."""
    return generate_batch(model, [prompt_ids], config, eos_id=eos_id, generator=generator, tokenizer=tokenizer)[0]


def stream(model, tokenizer, prompt: str | Sequence[int], config: SampleConfig, *, eos_id: int | None = -1,
           generator: torch.Generator | None = None) -> Iterator[str]:
    """Yield the generated text piece by piece as it is produced.

    Never yields half a UTF-8 character; holds back text that may be the start of a stop string;
    the stop string and anything after it are never yielded. `prompt` is text (encoded with
    `tokenizer`, special tokens allowed) or ids; an empty prompt starts from `<|endoftext|>` (or
    id 0 when the tokenizer has none). `eos_id` defaults to the tokenizer's `<|endoftext|>` (pass
    None for no EOS).
    """
    ids = tokenizer.encode(prompt, allowed_special="all") if isinstance(prompt, str) else list(prompt)
    if not ids:  # start from a document boundary, else from id 0 (a char vocabulary's "\n", as nanoGPT)
        ids = [tokenizer.eot_id if tokenizer.eot_id is not None else 0]
    eos = tokenizer.eot_id if eos_id == -1 else eos_id
    tracker = TextTracker(tokenizer, config.stop)
    with _eval_mode(model), fast_linears(model, _decode_rows(1, config)):
        dec = _Decoder(model, [ids], config, eos_id=eos, generator=generator)
        for (t,) in dec:
            if t is None:
                break
            piece = tracker.push(t)
            if piece:
                yield piece
            if tracker.stopped:
                dec.done[0] = True
                break
    rest = tracker.finish()
    if rest:
        yield rest


def generate_text(model, tokenizer, prompt: str | Sequence[int], config: SampleConfig, *, eos_id: int | None = -1,
                  generator: torch.Generator | None = None) -> str:
    """The generated text (without the prompt, cut before any stop string); see `stream`."""
    return "".join(stream(model, tokenizer, prompt, config, eos_id=eos_id, generator=generator))
