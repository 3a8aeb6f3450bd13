"""A recorded decode step replayed in one C call (model.step_plan) gives the model's own step, bit for bit: for GPT-2-,
Llama- and Qwen3-style models in fp32 and bf16 and for quantized ones; the generation engine decodes through it; a
step that is not the kernel's calls alone gets no plan; a plan keeps what it reads alive and checks what it is
given; the team of threads that replays it computes what the calls one after the other compute."""

import gc
import threading

import pytest
import torch
import torch.nn.functional as F
from test_model_decode_step import CONFIGS
from torch import nn

from scratchllm.compress.quantize import quantize_model
from scratchllm.config.model import ModelConfig
from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate.engine import Decoder, generate
from scratchllm.generate.sampling import greedy
from scratchllm.model import GPT, gemv
from scratchllm.model import fast_linear as P
from scratchllm.model.layers import embed_row
from scratchllm.model.quant_linear import QuantEmbedding, QuantScheme
from scratchllm.model.step_plan import StepPlan

SCHEMES = [QuantScheme(8), QuantScheme(4, 32), QuantScheme(4, 32, symmetric=False)]


def model_of(name: str, dtype=torch.float32, scheme: QuantScheme | None = None) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CONFIGS[name])).eval().to(dtype)
    if scheme is not None:
        quantize_model(model, scheme)
    return model


def heads_rows_expected(model: GPT, threads: int) -> int:
    """How many of a plan's products a team of `threads` makes as the heads' rows (gemv.c): one a layer where the
    query, key and value product is shared by the team (fp32 and bf16 weights of PARALLEL_MIN values or more) and
    the threads divide the kv heads (int4: the heads' rows in whole blocks of 16)."""
    cfg, qkv = model.config, model.blocks[0].attn.qkv
    scheme = getattr(qkv, "scheme", None)
    shared = scheme is not None or qkv.weight.numel() >= gemv.PARALLEL_MIN
    if (threads < 2 or not shared or cfg.kv_heads % threads
            or (scheme is not None and scheme.bits == 4 and cfg.head_dim % gemv.QROWS)):
        return 0
    return cfg.n_layer


def model_and_plan_steps(model: GPT, n: int, threads: int | None = None, plans: list | None = None):
    """Logits of decoding n random tokens one by one after a prompt of 5, through the model (one cache) and through
    a plan recorded at the first of them (a twin cache): (the model's, the plan's), each (n, vocab). The plan is
    appended to `plans` when given."""
    plans = [] if plans is None else plans
    n = min(n, model.config.context_length - 5)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, 5 + n), generator=g)
    ours, theirs = [], []
    with torch.inference_mode(), P.fast_linears(model, rows=1):
        a, b = model.new_kv_cache(1), model.new_kv_cache(1)
        model(ids[:, :5], kv_cache=a)
        model(ids[:, :5], kv_cache=b)
        plan = None
        for i in range(5, 5 + n):
            tok = ids[:, i:i + 1]
            theirs.append(model(tok, kv_cache=a, last_only=True).clone())
            if plan is None:
                logits, plan = StepPlan.record(model, tok, b)
                assert plan is not None, "the step was not the kernel's calls alone"
                plans.append(plan)
            else:
                logits = plan(int(tok))
            ours.append(logits.clone())
            assert a.pos == b.pos
    return torch.cat(theirs), torch.cat(ours)


@pytest.mark.parametrize("shared", [False, True], ids=["small", "shared"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_replayed_step_equals_the_models_step(kernel, monkeypatch, name, dtype, shared):
    """Also with every product shared by the team (the toy models' are small enough to run on one thread), where
    the team computes the query, key and value rows by heads, unlike the model's own calls (gemv.c's heads' rows)."""
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)  # every linear through the kernel (the toy models' are small)
    if shared:
        monkeypatch.setattr(gemv, "PARALLEL_MIN", 0)
    model = model_of(name, dtype)
    plans = []
    theirs, ours = model_and_plan_steps(model, 40, plans=plans)
    assert torch.equal(ours, theirs)  # the same calls on the same numbers
    threads = torch.get_num_threads()  # (the team's rows differ from the model's calls' where heads' rows apply)
    assert gemv.load().heads_rows(plans[0].ops, threads) == heads_rows_expected(model, threads)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen3"])
def test_a_quantized_models_replayed_step_equals_its_step(kernel, monkeypatch, name, scheme):
    """Quantized layers and the quantized embedding (tied: the head's table; untied: its own) replay too."""
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)
    model = model_of(name, scheme=scheme)
    assert isinstance(model.tok_emb, QuantEmbedding)
    plans = []
    theirs, ours = model_and_plan_steps(model, 30, plans=plans)
    assert torch.equal(ours, theirs)
    threads = torch.get_num_threads()
    assert gemv.load().heads_rows(plans[0].ops, threads) == heads_rows_expected(model, threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_team_computes_what_the_calls_one_after_another_compute(kernel, monkeypatch, threads):
    """gemv.c's team (every call's share on one team of threads, a barrier between calls) against the same calls made
    one after the other, each with its own threads, at the same position (the second run rewrites the same keys and
    values); with torch on 1 thread there is no team."""
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)
    model = model_of("llama")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode(), P.fast_linears(model, rows=1):
            cache = model.new_kv_cache(1)
            model(torch.arange(6)[None], kv_cache=cache)
            _, plan = StepPlan.record(model, torch.tensor([[7]]), cache)
            for token in (3, 9, 11):
                pos = cache.pos
                team = plan(token).clone()
                keys = cache.k[:, :, :, :pos + 1].clone()
                kernel.run_plan(plan.ops, pos, token, threads=1)  # one call after another
                assert torch.equal(team, plan.logits)
                assert torch.equal(keys, cache.k[:, :, :, :pos + 1])
    finally:
        torch.set_num_threads(old)


def test_the_transposed_product_replays_as_a_team(kernel):
    """The product of weights stored (in, out) (gemv_t: partial rows summed after a barrier) inside a team: the one
    call no model's plan makes yet (an imported GPT-2's GELU runs in torch), recorded and replayed directly."""
    torch.manual_seed(0)
    w = torch.randn(96, 200).t()  # (out 200, in 96) as a transposed view of an (in, out) matrix
    product = kernel.bind(w, torch.randn(200))
    x, add = torch.randn(1, 1, 96), torch.randn(1, 1, 200)
    with gemv.record() as rec:
        y = product(x, add=add)
    ops = kernel.plan(rec, 0, 0)
    y.zero_()
    kernel.run_plan(ops, 0, 0, threads=2)
    assert torch.allclose(y, F.linear(x, w.contiguous(), product.keep_alive[1]) + add, atol=1e-5)


def test_a_recording_holds_its_own_threads_calls(kernel):
    """Two generations in two threads record apart: a recording holds the calls of the thread that made it."""
    product = kernel.bind(torch.randn(64, 64))
    x = torch.randn(1, 64)
    with gemv.record() as rec:
        other = threading.Thread(target=product, args=(x,))
        other.start()
        other.join()
        assert rec.calls == []
        product(x)
    assert [name for name, *_ in rec.calls] == ["scratchllm_gemv"]


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 4096, 50257])
def test_the_kernels_argmax_is_torchs(kernel, n):
    """The kernel's argmax (a greedy step's pick) is torch.argmax's: the first of equal largest, a NaN largest, for
    rows the vectors cover whole and rows with a tail."""
    g = torch.Generator().manual_seed(n)
    rows = [torch.randn(n, generator=g), torch.full((n,), -float("inf")), torch.zeros(n), -torch.rand(n, generator=g)]
    tied = torch.randint(-3, 3, (n,), generator=g).float()  # many equal largest
    rows.append(tied)
    for at in {0, n // 2, n - 1}:
        for value in (float("nan"), float("inf")):
            row = torch.randn(n, generator=g)
            row[at] = value
            if n > 1:
                row[(at + 1) % n] = value  # a second one, after it (or first, at the end)
            rows.append(row)
    signed = torch.zeros(n)
    signed[: n // 2] = -0.0  # -0.0 == 0.0: the first
    rows.append(signed)
    for row in rows:
        assert kernel.argmax(row) == int(torch.argmax(row)) == int(greedy(row[None])), row
    with pytest.raises(ValueError, match="one contiguous fp32 row"):
        kernel.argmax(torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("scheme", [None, QuantScheme(4, 32)], ids=["fp32", "int4-g32"])
def test_a_plans_greedy_step_picks_its_logits_argmax(kernel, monkeypatch, scheme):
    """plan.greedy(token) is plan(token) and the argmax of its logits, in one call; bf16 logits are not picked."""
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)
    model = model_of("llama", scheme=scheme)
    tokens = [5, 17, 2, 40, 40, 9, 63, 0]
    with torch.inference_mode(), P.fast_linears(model, rows=1):
        a, b = model.new_kv_cache(1), model.new_kv_cache(1)
        for cache in (a, b):
            model(torch.arange(5)[None], kv_cache=cache)
            model(torch.tensor([[1]]), kv_cache=cache, last_only=True)  # (binds the quantized layers' calls)
        _, pa = StepPlan.record(model, torch.tensor([[1]]), a)
        _, pb = StepPlan.record(model, torch.tensor([[1]]), b)
        logits = [pa(t).clone() for t in tokens]
        picks = [pb.greedy(t) for t in tokens]
        assert a.pos == b.pos
        assert picks == [int(torch.argmax(x)) for x in logits]
        assert torch.equal(pb.logits, logits[-1])
    model = model_of("llama", torch.bfloat16)
    with torch.inference_mode(), P.fast_linears(model, rows=1):
        cache = model.new_kv_cache(1)
        model(torch.arange(5)[None], kv_cache=cache)
        model(torch.tensor([[1]]), kv_cache=cache, last_only=True)  # (binds the layers' calls)
        _, plan = StepPlan.record(model, torch.tensor([[1]]), cache)
        assert plan is not None and not plan.can_pick
        with pytest.raises(ValueError, match="fp32 logits"):
            plan.greedy(3)


def test_the_engine_decodes_through_a_plan(kernel, monkeypatch):
    """At batch 1 the engine records the first step and replays the rest, with the tokens and logits of the model's
    own steps: also past the context, where the window slides (the same cache, new positions), and when sampling."""
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)
    model = model_of("llama")
    replays, picks = [], []
    run, pick = StepPlan._run, StepPlan.greedy
    monkeypatch.setattr(StepPlan, "_run", lambda self, token, at: replays.append(token) or run(self, token, at))
    monkeypatch.setattr(StepPlan, "greedy", lambda self, token: picks.append(token) or pick(self, token))
    prompt = list(range(20))
    greedy = SampleConfig(temperature=0.0, max_new_tokens=100)  # context 64: the window slides twice
    sampled = SampleConfig(temperature=0.8, top_k=20, max_new_tokens=30, seed=3)
    penalized = SampleConfig(temperature=0.0, repetition_penalty=1.3, max_new_tokens=30)
    with_plan = [generate(model, prompt, c) for c in (greedy, sampled, penalized)]
    assert len(replays) == 99 + 29 + 29  # every step: the prompt's last token was the recorded one
    # greedy steps pick their token in the plan's call, but where the window slides (its step is the model's)
    assert 90 <= len(picks) < 99
    with monkeypatch.context() as m:
        m.setattr(StepPlan, "record", classmethod(lambda cls, model, idx, cache: (
            model(idx, kv_cache=cache, last_only=True), None)))
        without = [generate(model, prompt, c) for c in (greedy, sampled, penalized)]
    assert with_plan == without
    with torch.inference_mode(), Decoder(model, [prompt], greedy.replace(max_new_tokens=5)) as dec:
        next(iter(dec))  # the prompt: its last token read as the recorded step
        assert dec._plan is not None and dec._plan.kv_cache is dec.cache


def test_an_open_batchs_lone_greedy_row_picks_through_its_plan(kernel, monkeypatch):
    """An open batch (the server's) whose one row decodes greedily steps by the plan's pick once its first decode
    step is recorded; while a second row (with a longer prompt: positions before the first row's) decodes too, the
    steps are the model's; once it has left, the first row's steps are recorded and replayed again, in the cache
    now made for two rows (its row 0); each row gets the tokens it gets alone."""
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)
    model = model_of("llama")
    picks = []
    pick = StepPlan.greedy
    monkeypatch.setattr(StepPlan, "greedy", lambda self, token: picks.append(token) or pick(self, token))
    first, second = SampleConfig(temperature=0.0, max_new_tokens=30), SampleConfig(temperature=0.0, max_new_tokens=6)
    longer = list(range(30, 50))  # more tokens than the first row has when it joins
    alone = [generate(model, list(range(9)), first), generate(model, longer, second)]
    picks.clear()
    got: dict[int, list[int]] = {0: [], 1: []}
    with torch.inference_mode(), Decoder(model, max_batch=2) as dec:
        rows = [dec.add(list(range(9)), first)]
        for i in range(30):
            if i == 10:
                rows.append(dec.add(longer, second))
                assert len(picks) == 8  # steps 2 to 9: step 0 read the prompt, step 1 was recorded
            if i == 16:
                assert len(picks) == 8 and dec.cache.batch_size == 2  # two rows: the model's steps
            for row, t in dec.step():
                if t is not None:
                    got[rows.index(row)].append(t)
        assert dec.cache.batch_size == 2 and dec.starts == [0]
    assert [got[0], got[1]] == alone
    assert len(picks) >= 8 + 10  # after the second row left: recorded once, then picked again


def test_a_quantized_model_generates_through_a_plan(kernel, monkeypatch):
    """The first generation of a quantized model lays its head out for the kernel during the prompt's step (a copy:
    no plan then), so its first decode step is recorded; later generations record the prompt's step."""
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)
    model = model_of("llama", scheme=QuantScheme(4, 32))
    replays = []
    run = StepPlan._run
    monkeypatch.setattr(StepPlan, "_run", lambda self, token, at: replays.append(token) or run(self, token, at))
    config = SampleConfig(temperature=0.0, max_new_tokens=40)
    twice = [generate(model, list(range(9)), config) for _ in range(2)]
    assert len(replays) == (40 - 2) + (40 - 1)
    monkeypatch.setattr(StepPlan, "record", classmethod(lambda cls, model, idx, cache: (
        model(idx, kv_cache=cache, last_only=True), None)))
    assert twice == [generate(model, list(range(9)), config)] * 2


def test_a_step_that_is_not_the_kernels_calls_alone_gets_no_plan(kernel, monkeypatch):
    model = model_of("llama")
    idx = torch.tensor([[4]])

    def record():
        with torch.inference_mode(), P.fast_linears(model, rows=1):
            cache = model.new_kv_cache(1)
            model(torch.arange(5)[None], kv_cache=cache)
            logits, plan = StepPlan.record(model, idx, cache)
            assert torch.equal(logits, model_step(cache))
            return plan

    def model_step(cache):  # the same step again, through the model: what the recorded step returned
        cache.truncate(cache.pos - 1)
        return model(idx, kv_cache=cache, last_only=True)

    assert record() is None  # the toy model's small linears stay nn.Linear: torch's products
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)
    assert record() is not None
    handle = model.blocks[1].mlp.register_forward_hook(lambda *a: None)  # a hook sees the general path
    assert record() is None
    handle.remove()
    monkeypatch.setattr(gemv, "load", lambda: None)  # no kernel
    assert record() is None


def test_a_plan_keeps_what_it_reads_alive(kernel, monkeypatch):
    """The layers' bound calls (their scratch rows and arguments) and the step's own tensors live as long as the plan,
    even once the decode loop's layers are put back: replayed after, with the memory churned, the same logits."""
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)
    model = model_of("qwen3", scheme=QuantScheme(4, 32))
    tokens = [5, 17, 2, 40, 40, 9]
    with torch.inference_mode():
        with P.fast_linears(model, rows=1):
            a, b = model.new_kv_cache(1), model.new_kv_cache(1)
            model(torch.arange(5)[None], kv_cache=a)
            model(torch.arange(5)[None], kv_cache=b)
            model(torch.tensor([[1]]), kv_cache=a, last_only=True)  # (binds the quantized layers' calls)
            _, plan = StepPlan.record(model, torch.tensor([[1]]), b)
            theirs = [model(torch.tensor([[t]]), kv_cache=a, last_only=True).clone() for t in tokens]
        gc.collect()
        junk = [torch.full((1000 + i,), float(i)) for i in range(200)]  # reuses any freed memory
        ours = [plan(t).clone() for t in tokens]
    del junk
    assert all(torch.equal(x, y) for x, y in zip(ours, theirs))


def test_a_plan_checks_its_token_and_its_cache(kernel, monkeypatch):
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)
    model = model_of("gpt2")
    with torch.inference_mode(), P.fast_linears(model, rows=1):
        cache = model.new_kv_cache(1, max_len=8)
        model(torch.arange(5)[None], kv_cache=cache)
        _, plan = StepPlan.record(model, torch.tensor([[1]]), cache)
        with pytest.raises(UserError, match="outside the model's vocabulary of 100"):
            plan(100)
        with pytest.raises(UserError, match="outside"):
            plan(-1)
        plan(3), plan(4)
        assert cache.pos == 8 and not plan.fits(cache)  # full
        with pytest.raises(RuntimeError, match="past its KV cache"):
            plan(3)
        cache.truncate(6)
        assert plan.fits(cache)
        cache.grow(1, 16)  # new buffers
        assert not plan.fits(cache)
        assert not plan.fits(model.new_kv_cache(1))  # another cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("learned", [False, True])
def test_the_embedding_row_equals_the_modules(kernel, dtype, learned):
    torch.manual_seed(0)
    emb, pos = nn.Embedding(50, 24).to(dtype), nn.Embedding(10, 24).to(dtype) if learned else None
    with torch.no_grad():
        for token, p in ((0, 0), (49, 9), (17, 4)):
            want = emb(torch.tensor([[token]])) + (pos.weight[p] if learned else 0)
            assert torch.equal(embed_row(emb, pos, torch.tensor([[token]]), p), want)
        assert embed_row(emb, pos, torch.tensor([[50]]), 0) is None  # out of the table: the module says so
        if learned:
            assert embed_row(emb, pos, torch.tensor([[1]]), 10) is None  # a position past the table


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_the_quantized_embedding_row_equals_the_modules(kernel, name, scheme):
    """A quantized table's row, dequantized in C from the kernel's buffers (int4: in its layout; a vocabulary that
    is not a multiple of its 16-row blocks), equals QuantEmbedding's; with learned positions added."""
    config = dict(CONFIGS[name], vocab_size=100)
    torch.manual_seed(0)
    model = GPT(ModelConfig(**config)).eval()
    quantize_model(model, scheme)
    emb = model.tok_emb
    assert emb.source._product() is not None  # bound: int4 buffers in the kernel's layout
    with torch.no_grad():
        for token in (0, 15, 16, 97, 99):
            idx = torch.tensor([[token]])
            want = emb(idx) + (model.pos_emb.weight[3] if model.pos_emb is not None else 0)
            assert torch.equal(embed_row(emb, model.pos_emb, idx, 3), want)
