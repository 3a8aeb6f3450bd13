"""A batch-1 decode step's C paths (model.layers `Block.decode_one`, `Attention.attend_one`; model.gemv's
residual products and `attend`) give the general path's numbers: step-by-step decoding through them equals
the full forward pass, for GPT-2-, Llama- and Qwen3-style models, in fp32 and bf16."""

import pytest
import torch
import torch.nn.functional as F

from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT, gemv
from scratchllm.model import fast_linear as P

CONFIGS = {
    "gpt2": dict(n_layer=2, n_head=4, n_embd=64, context_length=64, vocab_size=100),
    "llama": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, context_length=64, vocab_size=100, norm="rmsnorm",
                  position="rope", mlp="swiglu", bias=False, tie_weights=False),
    "qwen3": dict(n_layer=2, n_head=4, n_kv_head=1, n_embd=64, head_size=32, context_length=64, vocab_size=100,
                  norm="rmsnorm", position="rope", mlp="swiglu", bias=False, qk_norm=True),
    # heads of 20 values (not whole vectors) and more keys than one chunk of gemv.c's online softmax (128)
    "odd": dict(n_layer=2, n_head=3, n_embd=60, context_length=300, vocab_size=100),
}


class CountingAttend:
    """The kernel, counting its `attend` calls."""

    def __init__(self, kernel):
        self.kernel, self.attends = kernel, 0

    def attend(self, *args):
        self.attends += 1
        return self.kernel.attend(*args)

    def __getattr__(self, name):
        return getattr(self.kernel, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decoding_step_by_step_equals_the_full_forward(kernel, monkeypatch, name, dtype):
    monkeypatch.setattr(P, "KERNEL_MIN_WEIGHTS", 0)  # every linear through the kernel, so decode_one runs whole
    counting = CountingAttend(kernel)
    monkeypatch.setattr(gemv, "load", lambda: counting)
    torch.manual_seed(0)
    config = ModelConfig(**CONFIGS[name])
    model = GPT(config).eval().to(dtype)
    n = min(config.context_length, 200)
    ids = torch.randint(0, config.vocab_size, (1, n))
    with torch.inference_mode():
        full = model(ids).float()  # (1, n, V): the general path (no cache)
        with P.fast_linears(model, rows=1):
            cache = model.new_kv_cache(1)
            model(ids[:, :5], kv_cache=cache)  # the prompt: the general path
            steps = torch.cat([model(ids[:, i:i + 1], kv_cache=cache).float() for i in range(5, n)], dim=1)
    assert counting.attends == (n - 5) * config.n_layer  # every step's attention was the C call
    # fp32: float rounding apart; bf16: a few bf16 roundings of activations of size ~1
    tol = 1e-5 if dtype == torch.float32 else 0.03
    assert (steps - full[:, 5:]).abs().max().item() <= tol * max(1.0, full.abs().max().item())


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
