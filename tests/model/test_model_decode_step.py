"""A batch-1 decode step's C paths (model.layers `Block.decode_one`, `Attention.attend_one`; model.gemv's
residual products and `attend`) give the general path's numbers: step-by-step decoding through them equals
the full forward pass, for GPT-2-, Llama- and Qwen3-style models, in fp32 and bf16."""

import collections

import pytest
import torch
import torch.nn.functional as F

from scratchllm.compress.quantize import quantize_model
from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT, gemv
from scratchllm.model import fast_linear as P
from scratchllm.model import functional as ops
from scratchllm.model.quant_linear import QuantScheme

CONFIGS = {
    "gpt2": dict(n_layer=2, n_head=4, n_embd=64, context_length=64, vocab_size=100),
    "llama": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, context_length=64, vocab_size=100, norm="rmsnorm",
                  position="rope", mlp="swiglu", bias=False, tie_weights=False, rope_scaling="llama3",
                  rope_original_context=16),
    "qwen3": dict(n_layer=2, n_head=4, n_kv_head=1, n_embd=64, head_size=32, context_length=64, vocab_size=100,
                  norm="rmsnorm", position="rope", mlp="swiglu", bias=False, qk_norm=True),
    # heads of 20 values (not whole vectors) and more keys than one chunk of gemv.c's online softmax (128)
    "odd": dict(n_layer=2, n_head=3, n_embd=60, context_length=300, vocab_size=100),
    # exact GELU, LayerNorm without bias
    "gelu_exact": dict(n_layer=2, n_head=2, n_embd=48, context_length=40, vocab_size=100, mlp="gelu_exact", bias=False),
}


class Counting:
    """The kernel, counting a decode step's C calls: attention (and those with QK-norm, RoPE), norms, MLPs."""

    def __init__(self, kernel):
        self.kernel, self.calls = kernel, collections.Counter()

    def attend(self, *args, **kwargs):
        self.calls["attend"] += 1
        self.calls["qk_norm"] += kwargs.get("q_norm") is not None
        self.calls["rope"] += kwargs.get("cos") is not None
        return self.kernel.attend(*args, **kwargs)

    def norm(self, *args):
        self.calls["norm"] += 1
        return self.kernel.norm(*args)

    def bind_mlp(self, *args, norm=None):
        return self._counted(self.kernel.bind_mlp(*args, norm=norm), "mlp" if norm is None else "norm+mlp")

    def bind_normed(self, *args):
        return self._counted(self.kernel.bind_normed(*args), "norm+product")

    def _counted(self, call, name):
        def counted(x):
            self.calls[name] += 1
            return call(x)

        return counted

    # quantized layers' calls (model.quant_linear): products (with a residual: "+add", a norm inside: "norm+"), MLPs
    def bind_q8(self, *args, norm=None, **kwargs):
        return self._counted_q(self.kernel.bind_q8(*args, norm=norm, **kwargs), norm)

    def bind_q4(self, *args, norm=None, **kwargs):
        return self._counted_q(self.kernel.bind_q4(*args, norm=norm, **kwargs), norm)

    def _counted_q(self, product, norm):
        def counted(x, add=None, out=None):
            name = "q:" + ("norm+" if norm is not None else "") + "product" + ("+add" if add is not None else "")
            self.calls[name] += x.numel() == x.shape[-1]  # one-row calls (a decode step's), not the prompt's
            return product(x, add=add, out=out)

        counted.weights = product.weights
        return counted

    def bind_mlp_quantized(self, fc, act, gate=None, norm=None):
        return self._counted(self.kernel.bind_mlp_quantized(fc, act, gate, norm=norm),
                             "q:mlp" if norm is None else "q:norm+mlp")

    def __getattr__(self, name):
        return getattr(self.kernel, name)


def decode_step_by_step(model, ids, monkeypatch, kernel):
    """The full forward's logits (the general path) and those of decoding ids[5:] one by one after a prompt of 5,
    every linear a FastLinear; and the C calls the steps made."""
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)  # every linear through the kernel, so decode_one runs whole
    counting = Counting(kernel)
    monkeypatch.setattr(gemv, "load", lambda: counting)
    n = ids.shape[1]
    with torch.inference_mode():
        full = model(ids).float()  # (1, n, V): the general path (no cache)
        with P.fast_linears(model, rows=1):
            cache = model.new_kv_cache(1)
            model(ids[:, :5], kv_cache=cache)  # the prompt: the general path
            counting.calls.clear()
            steps = torch.cat([model(ids[:, i:i + 1], kv_cache=cache).float() for i in range(5, n)], dim=1)
    return full[:, 5:], steps, counting.calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decoding_step_by_step_equals_the_full_forward(kernel, monkeypatch, name, dtype):
    torch.manual_seed(0)
    config = ModelConfig(**CONFIGS[name])
    model = GPT(config).eval().to(dtype)
    n = min(config.context_length, 200)
    ids = torch.randint(0, config.vocab_size, (1, n))
    full, steps, calls = decode_step_by_step(model, ids, monkeypatch, kernel)
    # every step's attention (its norm in the qkv product's call), MLP (its norm in the call) and final norm (in the
    # head's product's call) were the C calls
    layers = (n - 5) * config.n_layer
    assert calls == {"attend": layers, "norm+product": layers + n - 5, "norm+mlp": layers,
                     "rope": layers * (config.position == "rope"), "qk_norm": layers * config.qk_norm}
    # fp32: float rounding apart; bf16: a few bf16 roundings of activations of size ~1
    tol = 1e-5 if dtype == torch.float32 else 0.03
    assert (steps - full).abs().max().item() <= tol * max(1.0, full.abs().max().item())


@pytest.mark.parametrize("scheme", [QuantScheme(8), QuantScheme(4, 32), QuantScheme(4, 32, symmetric=False)],
                         ids=lambda s: s.name)
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_a_quantized_models_decode_step_makes_the_fused_calls(kernel, monkeypatch, name, scheme):
    """A quantized model (compress.quantize: every linear a QuantLinear) decodes step by step through the fused
    quantized calls (norm inside qkv's product, residuals inside the projections, the MLP's norm, products and
    activation one call), with the numbers of the general forward."""
    torch.manual_seed(0)
    config = ModelConfig(**CONFIGS[name])
    model = GPT(config).eval()
    quantize_model(model, scheme)
    n = 24  # the full forward's rows stay within the quantized kernel's (KERNEL_ROWS): the same input rounding
    ids = torch.randint(0, config.vocab_size, (1, n))
    full, steps, calls = decode_step_by_step(model, ids, monkeypatch, kernel)
    layers = (n - 5) * config.n_layer
    assert calls == {"attend": layers, "rope": layers * (config.position == "rope"), "qk_norm": 0,
                     "q:norm+product": layers + n - 5, "q:product+add": 2 * layers, "q:norm+mlp": layers}
    # (the final norm inside the head's product)
    # float rounding apart (an input moved across a rounding boundary of its int8 block by it would cost more; none
    # is, with these numbers)
    assert (steps - full).abs().max().item() <= 1e-4 * max(1.0, full.abs().max().item())


def test_bf16_model_with_fp32_rope_tables(kernel, monkeypatch):
    """A bf16 model whose RoPE tables were computed after the conversion (fp32, as a model built on the meta device
    gets them): the step rounds RoPE once, as the general path's fp32 arithmetic does."""
    torch.manual_seed(0)
    config = ModelConfig(**CONFIGS["qwen3"])
    model = GPT(config).eval().to(torch.bfloat16)
    model.init_rope()
    assert model.rope_cos.dtype == torch.float32
    ids = torch.randint(0, config.vocab_size, (1, 40))
    full, steps, calls = decode_step_by_step(model, ids, monkeypatch, kernel)
    assert calls["rope"] == 35 * config.n_layer
    assert (steps - full).abs().max().item() <= 0.03 * max(1.0, full.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim,pos", [(12, 12, 64, 0), (12, 12, 64, 159), (4, 2, 20, 37),
                                                         (8, 1, 128, 300), (3, 3, 17, 5)])
def test_attend_equals_sdpa_over_the_cache(kernel, dtype, heads, kv_heads, head_dim, pos):
    g = torch.Generator().manual_seed(heads * 1000 + pos)
    max_len = pos + 3
    k_cache = torch.randn(kv_heads, max_len, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(kv_heads, max_len, head_dim, generator=g).to(dtype)
    q, k, v = (torch.randn(h * head_dim, generator=g).to(dtype) for h in (heads, kv_heads, kv_heads))
    keys, values = k_cache.clone(), v_cache.clone()
    keys[:, pos], values[:, pos] = k.view(kv_heads, head_dim), v.view(kv_heads, head_dim)
    rep = heads // kv_heads
    want = F.scaled_dot_product_attention(  # (1, heads, 1, head_dim), in fp32 over the same numbers
        q.float().view(1, heads, 1, head_dim), keys[:, :pos + 1].float().repeat_interleave(rep, 0)[None],
        values[:, :pos + 1].float().repeat_interleave(rep, 0)[None]).flatten()
    y = torch.empty(heads * head_dim, dtype=dtype)
    kernel.attend(q.data_ptr(), k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), y.data_ptr(),
                  heads, kv_heads, head_dim, pos, max_len * head_dim, dtype == torch.bfloat16)
    assert torch.equal(k_cache, keys) and torch.equal(v_cache, values)  # the new position written, nothing else
    if dtype == torch.float32:
        assert torch.allclose(y, want, rtol=1e-5, atol=1e-6)
    else:
        assert torch.equal(y, want.bfloat16()) or (y.float() - want).abs().max().item() <= 0.01  # one rounding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_product_with_a_residual_rounds_as_torch_adds(kernel, dtype):
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(300, 200, generator=g).to(dtype), torch.randn(300, generator=g).to(dtype)
    x, r = torch.randn(1, 1, 200, generator=g).to(dtype), torch.randn(1, 1, 300, generator=g).to(dtype)
    product = kernel.bind(w, b)
    plain = product(x)
    # torch's two steps: the product in x's dtype (here the kernel's, whose sums are tested elsewhere), then + r
    want = plain + r
    got = product(x, add=r)
    assert got.dtype == dtype and got.shape == (1, 1, 300) and got.data_ptr() != r.data_ptr()
    assert torch.allclose(got.float(), want.float(), rtol=1e-6, atol=1e-6)
    in_place = r.clone()
    assert product(x, add=in_place, out=in_place) is in_place and torch.equal(in_place, got)
    with pytest.raises(ValueError, match="residual"):
        product(x, add=torch.randn(1, 1, 299).to(dtype))


def test_hooks_on_attention_see_the_general_path(kernel):
    """A forward hook on a block's attention (the attention-map pictures use one) still runs when decoding."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CONFIGS["gpt2"])).eval()
    seen = []
    handle = model.blocks[0].attn.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    try:
        with torch.inference_mode(), P.fast_linears(model, rows=1):
            cache = model.new_kv_cache(1)
            model(torch.tensor([[1, 2, 3]]), kv_cache=cache)
            model(torch.tensor([[4]]), kv_cache=cache)
    finally:
        handle.remove()
    assert seen == [(1, 3, 64), (1, 1, 64)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [64, 60, 768])
@pytest.mark.parametrize("kind", ["rmsnorm", "layernorm", "layernorm_nobias"])
def test_the_c_norm_equals_torchs(kernel, kind, n, dtype):
    g = torch.Generator().manual_seed(n)
    x = (torch.randn(1, 1, n, generator=g) * 3 + 0.5).to(dtype)
    w, b = (torch.rand(n, generator=g) * 2).to(dtype), torch.randn(n, generator=g).to(dtype)
    if kind == "rmsnorm":
        want, got = F.rms_norm(x, (n,), w, 1e-5), kernel.norm(x, w, None, 1e-5, True)
    else:
        b = b if kind == "layernorm" else None
        want, got = F.layer_norm(x, (n,), w, b, 1e-5), kernel.norm(x, w, b, 1e-5, False)
    assert got.shape == x.shape and got.dtype == dtype
    if dtype == torch.float32:
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    else:  # computed in fp32 and rounded once, as torch: equal but for a rare last-bit tie
        assert (got != want).float().mean().item() <= 0.02
        assert torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    with pytest.raises(ValueError, match="norm takes"):
        kernel.norm(x, w[:-1], None, 1e-5, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("act", ["swiglu", "gelu_tanh", "gelu"])
@pytest.mark.parametrize("out,n_in,bias", [(300, 200, True), (37, 64, False), (2048, 256, True)])
def test_the_mlp_call_equals_torchs_steps(kernel, act, dtype, out, n_in, bias):
    """Products and activation in one call equal the products (the kernel's, whose sums are tested elsewhere),
    then torch's activation in the model's dtype."""
    g = torch.Generator().manual_seed(out)
    x = (torch.randn(1, 1, n_in, generator=g) * 2).to(dtype)
    wf, wg = (torch.randn(out, n_in, generator=g).to(dtype) / n_in ** 0.5 * 3 for _ in range(2))
    bf, bg = (torch.randn(out, generator=g).to(dtype) if bias else None for _ in range(2))
    f = kernel.bind(wf, bf)(x)
    if act == "swiglu":
        want = F.silu(kernel.bind(wg, bg)(x)) * f
        got = kernel.bind_mlp(wf, bf, act, wg, bg)(x)
    else:
        want = F.gelu(f, approximate="tanh" if act == "gelu_tanh" else "none")
        got = kernel.bind_mlp(wf, bf, act)(x)
    assert got.shape == (1, 1, out) and got.dtype == dtype
    if dtype == torch.float32:
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    else:  # the same roundings: equal but where the activation's last fp32 bits fall on a bf16 tie, and in exact
        # GELU's far negative tail (|y| < 1e-4), where torch's erf is the less precise (it flushes -3e-14 to 0)
        tail = want.abs() < 1e-4
        assert (got != want)[~tail].float().mean().item() <= 0.02
        assert torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-5)
    with pytest.raises(ValueError, match="gate exactly for swiglu"):
        kernel.bind_mlp(wf, bf, "swiglu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,head_dim,pos", [(4, 2, 64, 9), (3, 1, 20, 0), (8, 8, 128, 130)])
def test_attend_with_qk_norm_and_rope_equals_the_general_steps(kernel, dtype, heads, kv_heads, head_dim, pos):
    g = torch.Generator().manual_seed(pos + head_dim)
    max_len = pos + 2
    k_cache = torch.randn(kv_heads, max_len, head_dim, generator=g).to(dtype)
    v_cache = torch.randn(kv_heads, max_len, head_dim, generator=g).to(dtype)
    q, k, v = (torch.randn(h * head_dim, generator=g).to(dtype) for h in (heads, kv_heads, kv_heads))
    q_w, k_w = (torch.rand(head_dim, generator=g).to(dtype) + 0.5 for _ in range(2))
    cos, sin = ops.rope_tables(head_dim, max_len)
    cos, sin = cos[pos:pos + 1].to(dtype), sin[pos:pos + 1].to(dtype)  # the position's rows, as the model has them
    # the general path's steps: QK-norm (RMSNorm), then RoPE, in the model's dtype
    q4, k4 = q.view(1, heads, 1, head_dim), k.view(1, kv_heads, 1, head_dim)
    q4, k4 = F.rms_norm(q4, (head_dim,), q_w, 1e-6), F.rms_norm(k4, (head_dim,), k_w, 1e-6)
    q4, k4 = ops.apply_rope(q4, cos, sin), ops.apply_rope(k4, cos, sin)
    keys, values = k_cache.clone(), v_cache.clone()
    keys[:, pos], values[:, pos] = k4.view(kv_heads, head_dim), v.view(kv_heads, head_dim)
    rep = heads // kv_heads
    want = F.scaled_dot_product_attention(
        q4.float(), keys[:, :pos + 1].float().repeat_interleave(rep, 0)[None],
        values[:, :pos + 1].float().repeat_interleave(rep, 0)[None]).flatten()
    y = torch.empty(heads * head_dim, dtype=dtype)
    kernel.attend(q.data_ptr(), k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), y.data_ptr(),
                  heads, kv_heads, head_dim, pos, max_len * head_dim, dtype == torch.bfloat16, q_norm=q_w.data_ptr(),
                  k_norm=k_w.data_ptr(), eps=1e-6, cos=cos.data_ptr(), sin=sin.data_ptr(),
                  table_bf16=dtype == torch.bfloat16)
    if dtype == torch.float32:
        assert torch.allclose(k_cache, keys, rtol=1e-5, atol=1e-5) and torch.equal(v_cache, values)
        assert torch.allclose(y, want, rtol=1e-4, atol=1e-5)
    else:  # the key stored as the general path rounds it (but for a rare last-bit tie)
        assert (k_cache != keys).float().mean().item() <= 0.02 and torch.equal(v_cache, values)
        assert (y.float() - want).abs().max().item() <= 0.02


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rms", [True, False])
def test_a_norm_inside_the_product_equals_the_norm_then_the_product(kernel, dtype, rms):
    g = torch.Generator().manual_seed(7)
    n_in, out = 200, 300
    x = (torch.randn(1, 1, n_in, generator=g) * 2 + 0.3).to(dtype)
    nw, nb = (torch.rand(n_in, generator=g) + 0.5).to(dtype), torch.randn(n_in, generator=g).to(dtype)
    nb = None if rms else nb
    w, b = torch.randn(out, n_in, generator=g).to(dtype), torch.randn(out, generator=g).to(dtype)
    norm = gemv.RowNorm(nw, nb, 1e-5, rms)
    want = kernel.bind(w, b)(kernel.norm(x, nw, nb, 1e-5, rms))  # the two calls, each tested against torch
    assert torch.equal(kernel.bind_normed(w, b, norm)(x), want)
    wg = torch.randn(out, n_in, generator=g).to(dtype)
    want = kernel.bind_mlp(w, b, "swiglu", wg)(kernel.norm(x, nw, nb, 1e-5, rms))
    assert torch.equal(kernel.bind_mlp(w, b, "swiglu", wg, norm=norm)(x), want)
    with pytest.raises(ValueError, match="a norm of rows of 200"):
        kernel.bind_normed(w, b, gemv.RowNorm(nw[:-1], None, 1e-5, True))


def test_hooks_on_a_norm_see_the_decode_step(kernel, monkeypatch):
    """A hook on a block's norm (or the final one) still runs when decoding: the step leaves that norm to its module,
    with the same numbers."""
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)
    torch.manual_seed(0)
    model = GPT(ModelConfig(**CONFIGS["llama"])).eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode():
        want = model(ids)[:, -1]
    seen = []
    handles = [m.register_forward_hook(lambda module, args, out: seen.append(out.shape))
               for m in (model.blocks[0].norm1, model.blocks[1].norm2, model.norm_f)]
    try:
        with torch.inference_mode(), P.fast_linears(model, rows=1):
            cache = model.new_kv_cache(1)
            model(ids[:, :3], kv_cache=cache)
            seen.clear()
            got = model(ids[:, 3:], kv_cache=cache)[:, -1]
    finally:
        for h in handles:
            h.remove()
    assert seen == [(1, 1, 64)] * 3
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
