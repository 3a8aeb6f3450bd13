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

Context overflow (the cache is full and generation goes on): the window slides. The cache is
reset and re-prefilled with each row's most recent context_length // 2 tokens, then decoding
continues; so a re-prefill happens once every context_length // 2 new tokens rather than at every
step. This is the same for learned positions and RoPE (positions restart at 0 in the new window).
The book's uncached loop instead re-reads the last context_length tokens at every step; outputs
are identical until the first slide and differ (slightly shorter memory) after it.

Speed (benchmarks/generate.py): at batch 1 a decode step reads every weight once (GPT-2 124M in
fp32 is ~500 MB), so the step is memory-bandwidth bound; the engine's own work per step (sampling,
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

    @torch.inference_mode()
    def __iter__(self) -> Iterator[list[int | None]]:
        c = self.config
        if c.max_new_tokens == 0:
            return
        logits = self._prefill(self.rows)
        for step in range(c.max_new_tokens):
            nxt = sample_next(logits, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                              repetition_penalty=c.repetition_penalty, prev_ids=self.seen,
                              generator=self.generator)  # (B,)
            out: list[int | None] = nxt.tolist()
            for i, t in enumerate(out):
                if self.done[i] or t == self.eos_id:
                    self.done[i] = True
                    out[i] = None
                else:
                    self.rows[i].append(t)
            if self.seen is not None:
                self.seen.scatter_(1, nxt[:, None], True)
            yield out
            if all(self.done) or step == c.max_new_tokens - 1:
                return
            logits = self._decode(nxt)


class _eval_mode:
    """Put the model in eval mode for the duration, then restore its previous mode."""

    def __init__(self, model) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


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
    with _eval_mode(model):
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
    with _eval_mode(model):
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
