"""A batch-1 decode step recorded once and replayed in one C call: CUDA graphs' idea, for the CPU kernel.

A small model's decode step is bound by its calls, not by the bytes it reads. The demo model's weights (17 MB
fp32, 4 MB int8) sit in the caches, and its ~25 kernel calls a step each pay a few microseconds of Python:
the module's checks, ctypes, an output from torch's allocator. That is a third of an fp32 step and most of an
int8 one (benchmarks/quantize.py's split). So a step's calls are recorded once and made again from C.

`StepPlan.record(model, idx, kv_cache)` runs one decode step as usual (the model's forward with a KV cache, whose
layers take their short road through the kernel's calls: `layers.Block.decode_one`) while `gemv.record` writes
down each C call with its arguments and a torch dispatch mode watches every torch op the step makes. If every
op was bookkeeping (an allocation, a view, reading the token), the kernel's calls are the whole step: the plan is
those calls on the same buffers (the plan holds every tensor the step allocated, so nothing else reuses them),
and `plan(token)` makes them again in one C call (gemv.c's `scratchllm_run_plan`) for the cache's next position;
`plan.greedy(token)` also picks the greedy token, the argmax of the logits, in that call (so a greedy decode step
is one C call and no torch op).
Only the position, the token and the addresses of the position's rows (RoPE's or learned positions' tables) move
between steps (`gemv.Recording`). Where the step did anything else (a layer the kernel does not run, a hook, a
dtype it does not take), there is no plan, and the caller goes on calling the model.

What a plan takes as given, checked at each step: the same KV cache (its buffers where they were when recorded,
room for one more position) and the model's parameters where they were (it reads them live: changed values are
read, replaced tensors are not). A plan is made for one generation (`generate.engine.Decoder` records it as the
prompt's last token is read) and dropped with its cache. Its logits equal the model's bit for bit: the same calls
on the same numbers (tested for GPT-2, Llama and Qwen3 styles, fp32, bf16, int8 and int4).

Numbers (benchmarks/quantize.py, the demo model, 2 threads; benchmarks/RESULTS.md): a step whose calls Python made
took 351 us in fp32, 257 in int8 and 316 in int4 (measured before plans existed); replayed, greedy token picked,
it takes 113, 43 and 27 us, and 109, 45 and 30 with the engine's own work around it (the medians of one run: a
process's speed varies by up to ~10%).

Not here: the calls themselves (model.gemv), when the engine uses a plan (generate.engine).
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scratchllm.errors import UserError
from scratchllm.model import gemv
from scratchllm.model.layers import bound_calls

# torch ops a recorded step may make besides the kernel's calls: allocations, views, and reading the token
BOOKKEEPING = frozenset({"empty", "empty_like", "empty_strided", "slice", "select", "view", "_unsafe_view",
                         "as_strided", "alias", "detach", "t", "transpose", "unsqueeze", "squeeze", "expand",
                         "_local_scalar_dense", "item"})
# ops that are bookkeeping when they give back their input unchanged (a bias already fp32 made `.float()`)
SAME_IF_NOTHING_TO_DO = frozenset({"to", "contiguous"})


class _Watch(TorchDispatchMode):
    """Every torch op made inside: what is not bookkeeping is named in `other`; every output is held in `made`."""

    def __init__(self) -> None:
        super().__init__()
        self.other: list[str] = []
        self.made: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in BOOKKEEPING and not (name in SAME_IF_NOTHING_TO_DO and args and out is args[0]):
            self.other.append(name)
        self.made.append(out)
        return out


class StepPlan:
    """A recorded batch-1 decode step of `model` on `kv_cache` (`record`); `plan(token)` runs the next one."""

    def __init__(self, model, kv_cache, ops, logits: torch.Tensor, held: list) -> None:
        self.model, self.kv_cache, self.ops, self.logits, self._held = model, kv_cache, ops, logits, held
        self.last = logits[:, -1]  # (1, vocab): the logits as a decode loop reads them, a view made once
        self._buffers = (kv_cache.k.data_ptr(), kv_cache.v.data_ptr())
        self._vocab, self._context = model.config.vocab_size, model.config.context_length
        kernel, threads = gemv.load(), torch.get_num_threads()  # the team: the threads the calls were recorded with
        self._step = kernel.plan_runner(ops, threads)
        self.can_pick = logits.dtype is torch.float32  # (`greedy`: the kernel's argmax reads fp32)
        self._pick = kernel.plan_runner(ops, threads, logits) if self.can_pick else None

    @classmethod
    def record(cls, model, idx: torch.Tensor, kv_cache) -> tuple[torch.Tensor, StepPlan | None]:
        """Run the decode step `model(idx, kv_cache=kv_cache, last_only=True)` for one token idx (1, 1), recording
        it: (its logits (1, 1, vocab), the plan, or None where the step was not the kernel's calls alone). The row
        is the cache's row 0 (of a cache for more rows too: an open batch's last row). Call it without autograd,
        with the model as it will decode (eval, its linears as the decode loop wraps them)."""
        pos, token = kv_cache.pos, int(idx)
        if gemv.load() is None or torch.is_grad_enabled() or idx.numel() != 1:  # (the one row: the cache's row 0)
            return model(idx, kv_cache=kv_cache, last_only=True), None
        watch = _Watch()
        with gemv.record() as rec, watch:
            logits = model(idx, kv_cache=kv_cache, last_only=True)
        calls = rec.calls
        if (watch.other or not calls or calls[0][0] not in ("scratchllm_embed", "scratchllm_embed_q")
                or any(name not in gemv.PLAN_FNS for name, *_ in calls)  # (e.g. a layer bound in this step)
                or logits.data_ptr() not in calls[-1][2] or not logits.is_contiguous()):
            return logits, None
        ops = gemv.load().plan(rec, pos, token)
        # what the calls' addresses point into: the step's own tensors, the modules and their bound calls (scratch
        # rows, norms' rows, quantized layers' arguments), held as long as the plan lives
        return logits, cls(model, kv_cache, ops, logits, watch.made + bound_calls(model))

    def fits(self, kv_cache) -> bool:
        """Whether the plan runs the next step on `kv_cache`: its own, with its buffers where they were and room for
        one more position."""
        pos = kv_cache.pos
        return (kv_cache is self.kv_cache and pos < kv_cache.max_len and pos < self._context
                and (kv_cache.k.data_ptr(), kv_cache.v.data_ptr()) == self._buffers)

    def __call__(self, token: int) -> torch.Tensor:
        """The next decode step for `token` at the cache's position, advancing the cache: the logits (1, 1, vocab),
        in the plan's own buffer (read or copy them before the next step)."""
        self._run(token, self._step)
        return self.logits

    def greedy(self, token: int) -> int:
        """The next decode step for `token`, as `plan(token)`, and its greedy token: the argmax of its logits (the
        first largest, a NaN largest: sampling.greedy's), picked in the same C call. For fp32 logits (`can_pick`)."""
        if self._pick is None:
            raise ValueError(f"a plan picks from fp32 logits; this one's are {self.logits.dtype}")
        return self._run(token, self._pick)

    def _run(self, token: int, run) -> int:
        cache = self.kv_cache
        if not 0 <= token < self._vocab:
            raise UserError(f"token id {token} is outside the model's vocabulary of {self._vocab}")
        if not self.fits(cache):
            raise RuntimeError("a decode step's plan ran past its KV cache, or the cache moved: record a new one")
        picked = run(cache.pos, token)
        cache.advance(1)
        return picked
