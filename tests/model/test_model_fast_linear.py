"""model.fast_linear: each reader (C kernel for one row, oneDNN packing for a few, F.linear otherwise)
gives F.linear's results exactly where it applies, and generation through them gives the same
tokens as without."""

import platform

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.config.model import ModelConfig
from scratchllm.config.sample import SampleConfig
from scratchllm.generate.engine import generate, generate_batch
from scratchllm.model import GPT, gemv
from scratchllm.model import fast_linear as P
from scratchllm.model.step_plan import StepPlan

# oneDNN's packed-linear ops are in every x86-64 torch build (there a missing op fails the test);
# other platforms' builds may lack them, and then nothing is packed
needs_ops = pytest.mark.skipif(not P._ops_available() and platform.machine().lower() not in ("x86_64", "amd64"),
                               reason="this torch build has no oneDNN linear ops")

# big enough that every linear is wrapped (smallest: 512 x 1024 = 2^19 weights), small enough to be quick
MID = dict(n_layer=2, n_head=8, n_embd=1024, context_length=64, vocab_size=600, dropout=0.0)


class Counting:
    """Wraps a kernel and counts the calls of the products it binds (an MLP's products with their activation, which
    a decode step binds on its `fc` layer, count as one: that of `fc`; a norm and the product after it as one)."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, 0

    def bind(self, weight, bias=None):
        return self._counted(self.kernel.bind(weight, bias))

    def bind_mlp(self, *args, **kwargs):
        return self._counted(self.kernel.bind_mlp(*args, **kwargs))

    def bind_normed(self, *args):  # a product whose input a norm normalizes first (in the same call)
        return self._counted(self.kernel.bind_normed(*args))

    def _counted(self, product):
        def counted(x, *args, **kwargs):
            self.calls += 1
            return product(x, *args, **kwargs)

        return counted

    def __getattr__(self, name):  # the kernel's other routines (attention) pass through uncounted
        return getattr(self.kernel, name)


def close(a, b):
    return torch.allclose(a, b, rtol=1e-5, atol=1e-5)


@needs_ops
def test_each_reader_equals_f_linear_where_it_applies(kernel):
    torch.manual_seed(0)
    lin = nn.Linear(768, 1024)
    counting = Counting(kernel)
    fast = P.FastLinear(lin, counting, pack=True)
    with torch.no_grad():
        one = torch.randn(1, 1, 768)
        assert close(fast(one), F.linear(one, lin.weight, lin.bias)) and counting.calls == 1  # the kernel
        for shape in [(2, 5, 768), (64, 768)]:  # packed
            x = torch.randn(shape)
            y = fast(x)
            assert y.shape == (*shape[:-1], 1024) and close(y, F.linear(x, lin.weight, lin.bias))
        assert counting.calls == 1
        big = torch.randn(P.MAX_ROWS + 1, 768)  # more rows: F.linear itself, bit for bit
        assert torch.equal(fast(big), F.linear(big, lin.weight, lin.bias))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # under autocast: F.linear, in bf16
            assert fast(torch.randn(1, 768)).dtype == torch.bfloat16
        assert counting.calls == 1
    x = torch.randn(1, 768, requires_grad=True)  # with autograd on: F.linear, so gradients flow
    fast(x).sum().backward()
    assert x.grad is not None and lin.weight.grad is not None and counting.calls == 1


@needs_ops
def test_without_the_kernel_one_row_is_packed_and_without_packing_f_linear():
    torch.manual_seed(0)
    lin = nn.Linear(768, 1024)
    x = torch.randn(1, 768)
    with torch.no_grad():
        packed_only = P.FastLinear(lin, None, pack=True)
        assert packed_only.packed is not None and close(packed_only(x), F.linear(x, lin.weight, lin.bias))
        neither = P.FastLinear(lin, None, pack=False)
        assert neither.packed is None and torch.equal(neither(x), F.linear(x, lin.weight, lin.bias))


def test_fast_linears_swaps_large_linears_and_puts_them_back(kernel):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MID)).eval()
    keys = list(model.state_dict())
    originals = [m for m in model.modules() if isinstance(m, nn.Linear)]
    with P.fast_linears(model, rows=1):
        inside = [m for m in model.modules() if isinstance(m, P.FastLinear)]
        assert len(inside) == len(originals)
        assert all(m.product is not None and m.packed is None for m in inside)  # one row: the kernel, no copies
        assert model.lm_head.weight is model.tok_emb.weight  # the tied head still reads as tied
    assert [m for m in model.modules() if isinstance(m, nn.Linear)] == originals
    assert list(model.state_dict()) == keys
    if P._ops_available():
        with P.fast_linears(model, rows=8):  # a batch: packed as well
            assert all(m.packed is not None for m in model.modules() if isinstance(m, P.FastLinear))
    tiny = GPT(ModelConfig.preset("tiny"))
    assert not P.worth_wrapping(tiny)  # small weights stay in cache: nothing to gain
    mid16 = GPT(ModelConfig(**MID)).bfloat16()
    assert P.worth_wrapping(mid16)  # bf16: the kernel reads it, packing does not
    with P.fast_linears(mid16, rows=8):
        assert all(m.packed is None for m in mid16.modules() if isinstance(m, P.FastLinear))


def test_forward_and_greedy_generation_match_plain(kernel, monkeypatch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MID)).eval()
    idx = torch.randint(0, MID["vocab_size"], (1, 20))
    with torch.inference_mode():
        plain_logits = model(idx)
        plain_last = model(idx[:, :1])
        with P.fast_linears(model, rows=1):
            fast_logits = model(idx)
            fast_last = model(idx[:, :1])  # one row: through the kernel
    assert torch.allclose(fast_logits, plain_logits, rtol=1e-4, atol=1e-4)
    assert torch.allclose(fast_last, plain_last, rtol=1e-4, atol=1e-4)
    prompt = idx[0].tolist()
    config = SampleConfig(temperature=0.0, max_new_tokens=30)
    counting = Counting(kernel)
    monkeypatch.setattr(gemv, "load", lambda: counting)
    with monkeypatch.context() as m:  # every step through the model, each product counted (the engine's recorded
        # step, model.step_plan, replays these calls in one C call: tests/model/test_model_step_plan.py)
        m.setattr(StepPlan, "record", classmethod(lambda cls, model, idx, cache: (
            model(idx, kv_cache=cache, last_only=True), None)))
        fast_tokens = generate(model, prompt, config)
    # one row each: the prompt's last token read as a decode step (the engine records that step), then 29 steps,
    # each 2 layers x 4 linears + the head
    assert counting.calls == 30 * (2 * 4 + 1)
    calls = counting.calls
    assert generate(model, prompt, config) == fast_tokens  # with the plan: the prompt's step recorded, then replayed
    assert counting.calls == calls + (2 * 4 + 1)
    batch = generate_batch(model, [prompt, prompt[:7]], config)  # packed rows (and padding)
    lookup = generate(model, prompt, config.replace(prompt_lookup=4))  # speculative: a few rows
    monkeypatch.setattr(P, "MIN_WEIGHTS", 2**62)  # nothing wrapped
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 2**62)
    assert generate(model, prompt, config) == fast_tokens == batch[0] == lookup
    assert generate(model, prompt[:7], config) == batch[1]


def test_bf16_model_decodes_through_the_kernel(kernel):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MID)).eval().bfloat16()
    idx = torch.randint(0, MID["vocab_size"], (1, 1))
    with torch.inference_mode():
        plain = model(idx).float()
        with P.fast_linears(model, rows=1):
            fast = model(idx).float()
    assert (fast - plain).abs().max().item() <= 0.05 * plain.abs().max().item()  # bf16 roundings apart


def test_without_the_kernel_generation_packs_or_runs_plain(monkeypatch):
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MID)).eval()
    prompt = torch.randint(0, MID["vocab_size"], (12,)).tolist()
    config = SampleConfig(temperature=0.0, max_new_tokens=20)
    monkeypatch.setattr(gemv, "load", lambda: None)  # no compiler here, say
    with P.fast_linears(model, rows=1):
        wrapped = [m for m in model.modules() if isinstance(m, P.FastLinear)]
        assert all(m.product is None and (m.packed is not None) == P._ops_available() for m in wrapped)
    without_kernel = generate(model, prompt, config)
    monkeypatch.setattr(P, "MIN_WEIGHTS", 2**62)  # nothing wrapped
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 2**62)
    assert generate(model, prompt, config) == without_kernel


def test_unmerged_lora_layers_are_left_alone():
    """A LoRA layer computes more than its weight's product: the fast readers must not take it over."""
    from scratchllm.model.lora import LoRALinear, add_lora

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, context_length=16, n_layer=1, n_head=4, n_embd=512, bias=False))
    add_lora(model, "r=4,targets=mlp")
    for m in model.modules():
        if isinstance(m, LoRALinear):
            nn.init.normal_(m.lora_B)  # a trained adapter: not zero
    model.eval()
    x = torch.randint(0, 64, (1, 1))
    with torch.no_grad():
        want = model(x)
        with P.fast_linears(model, rows=1):
            assert not any(isinstance(m, P.FastLinear) for m in model.modules() if isinstance(m, LoRALinear))
            got = model(x)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_stored_in_out_decode_through_the_kernel_in_place(kernel, monkeypatch, dtype):
    """A model whose linear weights are transposed views of (in, out) matrices (GPT-2's Conv1D layout, as
    interop.hf loads it without copying) decodes every one-row product through the kernel, reading those
    matrices where they lie, with the tokens of the same model stored (out, in)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**MID)).eval().to(dtype)
    stored = GPT(ModelConfig(**MID)).eval().to(dtype)
    stored.load_state_dict(model.state_dict())
    views = {}
    for name, m in stored.named_modules():
        if isinstance(m, nn.Linear) and m.weight is not stored.tok_emb.weight:
            m.weight = nn.Parameter(m.weight.detach().t().contiguous().t())  # (in, out) memory, (out, in) view
            views[name] = m.weight.data_ptr()
    assert views and all(not m.weight.is_contiguous() for n, m in stored.named_modules() if n in views)
    prompt = torch.randint(0, MID["vocab_size"], (9,)).tolist()
    config = SampleConfig(temperature=0.0, max_new_tokens=12)
    normed = []  # layouts of the weights bound with a norm before them (qkv's, fc's): (in, out) ones too

    class Recording(Counting):
        def bind_normed(self, weight, *args):
            normed.append("out, in" if weight.is_contiguous() else "in, out")
            return super().bind_normed(weight, *args)

    counting = Recording(kernel)
    monkeypatch.setattr(gemv, "load", lambda: counting)
    with P.fast_linears(stored, rows=1):
        wrapped = {n: m for n, m in stored.named_modules() if isinstance(m, P.FastLinear)}
        assert all(wrapped[n].product is not None for n in views)  # bound, not left to F.linear
        assert all(wrapped[n].weight.data_ptr() == ptr for n, ptr in views.items())  # no copy
    tokens = generate(stored, prompt, config)
    assert counting.calls == 12 * (2 * 4 + 1)  # the prompt's last token read as a decode step, then 11 steps
    # each block's norm1 + qkv and norm2 + fc, then the final norm + the (tied, so (out, in)) head, bound once
    assert normed == ["in, out"] * 2 * MID["n_layer"] + ["out, in"]
    if dtype == torch.float32:
        assert tokens == generate(model, prompt, config)
    else:  # bf16 sums in another order may round a near-tie the other way: compare a step's logits
        idx = torch.tensor([prompt[:1]])
        with torch.inference_mode(), P.fast_linears(stored, rows=1), P.fast_linears(model, rows=1):
            a, b = stored(idx).float(), model(idx).float()
        assert (a - b).abs().max().item() <= 0.05 * b.abs().max().item()
