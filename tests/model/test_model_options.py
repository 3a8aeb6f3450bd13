"""The options beyond GPT-2, each a config switch: RoPE, RMSNorm, SwiGLU, grouped-query attention,
bias-free linears, untied head, gradient checkpointing, and the fused vs explicit attention."""

import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT
from scratchllm.model import functional as ops
from scratchllm.model.layers import MLP, RMSNorm
from scratchllm.model.weights import config_from_hf_llama, from_hf_llama, hf_llama_config, to_hf_llama

LLAMA = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, context_length=32, vocab_size=101, norm="rmsnorm",
             mlp="swiglu", position="rope", bias=False, qkv_bias=False, tie_weights=False)


def hf_llama(config: ModelConfig):
    transformers = importlib.import_module("transformers")
    hf_config = transformers.LlamaConfig(**hf_llama_config(config), bos_token_id=None, eos_token_id=None,
                                         pad_token_id=None)
    return transformers.LlamaForCausalLM(hf_config).eval()


@pytest.mark.parametrize("changes", [{}, {"n_kv_head": None, "norm_eps": 1e-6, "rope_base": 500000.0},
                                     {"n_kv_head": 1, "tie_weights": True, "bias": True, "qkv_bias": True}])
def test_llama_logits_equal_transformers(changes):
    config = ModelConfig(**{**LLAMA, **changes})
    torch.manual_seed(0)
    ref = hf_llama(config)
    assert ref.config.rope_parameters["rope_theta"] == config.rope_base
    assert config_from_hf_llama(ref.config.to_dict()) == config.replace(mlp_hidden=config.hidden_dim)
    model = GPT(config).eval()
    model.load_state_dict(from_hf_llama(ref.state_dict()))
    idx = torch.randint(0, config.vocab_size, (2, config.context_length))
    with torch.no_grad():
        diff = (model(idx) - ref(idx).logits).abs().max().item()
    assert diff <= 1e-4
    back = to_hf_llama(model.state_dict())
    hf_sd = ref.state_dict()
    assert set(back) == set(hf_sd)
    assert all(torch.equal(back[k], hf_sd[k]) for k in hf_sd)


def test_llama_config_refusals():
    from scratchllm.errors import UserError

    good = hf_llama_config(ModelConfig(**LLAMA))
    # RoPE scalings other than Llama 3's are refused, naming both it and the supported ones
    with pytest.raises(UserError, match="'yarn' is not supported.*llama3"):
        config_from_hf_llama({**good, "rope_parameters": {"rope_type": "yarn", "rope_theta": 5e5}})
    # llama3 scaling without its factors: the missing key is named
    with pytest.raises(UserError, match="'factor'"):
        config_from_hf_llama({**good, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}})
    with pytest.raises(UserError, match="'gelu' is not supported"):
        config_from_hf_llama({**good, "hidden_act": "gelu"})
    with pytest.raises(UserError, match="model.qkv_bias"):
        hf_llama_config(ModelConfig(**{**LLAMA, "qkv_bias": True}))
    with pytest.raises(UserError, match="qk_norm"):
        hf_llama_config(ModelConfig(**{**LLAMA, "qk_norm": True}))
    # mlp_bias apart from attention_bias: the MLP's biases are `bias`, attention's output `attn_proj_bias`
    mixed = config_from_hf_llama({**good, "mlp_bias": True})
    assert (mixed.bias, mixed.qkv_bias, mixed.attn_out_bias) == (True, False, False)
    assert hf_llama_config(mixed)["mlp_bias"] and not hf_llama_config(mixed)["attention_bias"]


def test_llama_kv_cache_matches_transformers_step_by_step():
    """Prefill then one token at a time, our cache vs a full HF forward over the whole sequence."""
    config = ModelConfig(**LLAMA)
    torch.manual_seed(1)
    ref = hf_llama(config)
    model = GPT(config).eval()
    model.load_state_dict(from_hf_llama(ref.state_dict()))
    idx = torch.randint(0, config.vocab_size, (1, 12))
    cache = model.new_kv_cache(1)
    with torch.no_grad():
        full = ref(idx).logits
        steps = [model(idx[:, :8], kv_cache=cache)] + [model(idx[:, i:i + 1], kv_cache=cache) for i in range(8, 12)]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------------------------------
def _copy(src: GPT, dst: GPT) -> None:
    dst.load_state_dict(src.state_dict())


def test_gqa_with_all_kv_heads_is_mha():
    torch.manual_seed(0)
    mha = GPT(ModelConfig.preset("tiny", n_kv_head=None)).eval()
    gqa = GPT(ModelConfig.preset("tiny", n_kv_head=2)).eval()  # tiny has 2 heads
    _copy(mha, gqa)
    idx = torch.randint(0, 256, (2, 16))
    assert torch.equal(mha(idx), gqa(idx))


def test_gqa_equals_mha_with_shared_kv_heads():
    """GQA with n_kv_head=2 of 4 heads == MHA whose heads 0,1 share keys/values, and 2,3 too."""
    base = dict(n_layer=1, n_head=4, n_embd=32, context_length=16, vocab_size=50)
    torch.manual_seed(0)
    gqa = GPT(ModelConfig(**base, n_kv_head=2)).double().eval()
    mha = GPT(ModelConfig(**base)).double().eval()
    sd = gqa.state_dict()
    hd = 8
    for kind in ("weight", "bias"):
        qkv = sd[f"blocks.0.attn.qkv.{kind}"]
        q, k, v = qkv.split([32, 16, 16])
        rep = lambda t: t.unflatten(0, (2, hd)).repeat_interleave(2, dim=0).flatten(0, 1)  # noqa: E731
        sd[f"blocks.0.attn.qkv.{kind}"] = torch.cat([q, rep(k), rep(v)])
    mha.load_state_dict(sd)
    idx = torch.randint(0, 50, (2, 16))
    assert torch.allclose(gqa(idx), mha(idx), atol=1e-12)
    assert gqa.num_params() == mha.num_params() - 2 * 16 * (32 + 1)  # two kv heads fewer in k and v


@settings(max_examples=30, deadline=None)
@given(m=st.integers(0, 40), n=st.integers(0, 40), shift=st.integers(0, 60), seed=st.integers(0, 1000))
def test_rope_scores_depend_only_on_relative_position(m, n, shift, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 1, 1, 1, 16, generator=gen, dtype=torch.float64)
    cos, sin = ops.rope_tables(16, 128, base=10000.0)
    cos, sin = cos.double(), sin.double()

    def score(i, j):
        return (ops.apply_rope(q, cos[i:i + 1], sin[i:i + 1]) * ops.apply_rope(k, cos[j:j + 1], sin[j:j + 1])).sum()

    # the tables hold float32 angles, so equality holds to float32 precision (scores are ~|q||k| ~ 16)
    assert torch.allclose(score(m, n), score(m + shift, n + shift), atol=1e-5)
    # a rotation keeps lengths
    assert torch.allclose(ops.apply_rope(q, cos[m:m + 1], sin[m:m + 1]).norm(), q.norm())


def test_rope_model_ignores_absolute_offset():
    """With RoPE the only position signal is relative: shifting every position changes nothing."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**LLAMA)).double().eval()
    idx = torch.randint(0, 101, (2, 10))
    shifted = torch.arange(7, 17)[None].expand(2, 10)
    assert torch.allclose(model(idx), model(idx, position_ids=shifted), atol=1e-5)  # float32 rope tables
    learned = GPT(ModelConfig.preset("tiny")).eval()
    idx = torch.randint(0, 256, (2, 10))
    assert not torch.allclose(learned(idx), learned(idx, position_ids=shifted))


def test_rope_tables_follow_su_et_al():
    cos, sin = ops.rope_tables(8, 5, base=100.0)
    # position 3, frequency pair i=1: angle 3 * 100^(-2/8), shared by dims 1 and 1 + 4 (rotate-half layout)
    angle = 3 * 100.0 ** (-2 / 8)
    assert math.isclose(cos[3, 1].item(), math.cos(angle), rel_tol=1e-6)
    assert math.isclose(sin[3, 5].item(), math.sin(angle), rel_tol=1e-6)


def test_rmsnorm_formula():
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 16, dtype=torch.float64)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_swiglu_mlp():
    config = ModelConfig.preset("tiny", mlp="swiglu", n_embd=96, n_head=2)
    assert config.hidden_dim == 256  # 2/3 * 4 * 96 = 256, already a multiple of 64
    assert ModelConfig.preset("tiny", mlp="swiglu").hidden_dim == 128  # 85.3 rounded up to 64s
    assert ModelConfig.preset("tiny", mlp="swiglu", mlp_hidden=40).hidden_dim == 40
    torch.manual_seed(0)
    mlp = MLP(config).double()
    x = torch.randn(2, 3, 96, dtype=torch.float64)
    gate, up = mlp.gate(x), mlp.fc(x)
    expected = mlp.proj(gate * torch.sigmoid(gate) * up)
    assert torch.allclose(mlp(x), expected, atol=1e-12)


def test_bias_free():
    model = GPT(ModelConfig.preset("tiny", bias=False, qkv_bias=False))
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    only_qkv = GPT(ModelConfig.preset("tiny", bias=False, qkv_bias=True))
    assert sorted({n.split(".", 2)[-1] for n, _ in only_qkv.named_parameters() if n.endswith("bias")}) == [
        "attn.qkv.bias"]


def test_untied_head():
    tied = GPT(ModelConfig.preset("tiny"))
    untied = GPT(ModelConfig.preset("tiny", tie_weights=False))
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == 256 * 32


@pytest.mark.parametrize("preset_changes", [{}, LLAMA])
def test_gradient_checkpointing_same_loss_and_grads(preset_changes):
    config = ModelConfig.preset("tiny", **preset_changes)
    torch.manual_seed(0)
    plain = GPT(config).train()
    ckpt = GPT(config.replace(gradient_checkpointing=True)).train()
    _copy(plain, ckpt)
    idx = torch.randint(0, config.vocab_size, (2, 16))
    targets = torch.randint(0, config.vocab_size, (2, 16))
    losses = []
    for model in (plain, ckpt):
        _, loss = model(idx, targets)
        loss.backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


# ---------------------------------------------------------------------------------------------
# fused scaled_dot_product_attention vs the explicit reference
@pytest.mark.parametrize("changes", [{}, LLAMA])
def test_sdpa_equals_explicit(changes):
    torch.manual_seed(0)
    fused = GPT(ModelConfig.preset("tiny", **changes, attention="sdpa")).double().eval()
    explicit = GPT(ModelConfig.preset("tiny", **changes, attention="explicit")).double().eval()
    _copy(fused, explicit)
    idx = torch.randint(0, fused.config.vocab_size, (3, 20))
    targets = torch.randint(0, fused.config.vocab_size, (3, 20))
    assert torch.allclose(fused(idx), explicit(idx), atol=1e-10)
    # training mode (dropout 0): same loss and gradients
    for m in (fused, explicit):
        m.train()
        m(idx, targets)[1].backward()
    for (name, a), (_, b) in zip(fused.named_parameters(), explicit.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-10), name


def test_auto_attention_takes_explicit_math_only_for_cpu_bf16_training(monkeypatch):
    """attention="auto": the explicit path when training under bf16 autocast on the CPU (where it is
    faster), torch's fused kernel in fp32 and for inference; same results as choosing by hand."""
    fused_calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: fused_calls.append(1) or sdpa(*a, **k))
    torch.manual_seed(0)
    auto = GPT(ModelConfig.preset("tiny"))
    assert auto.config.attention == "auto"
    explicit = GPT(ModelConfig.preset("tiny", attention="explicit"))
    _copy(auto, explicit)
    idx = torch.randint(0, auto.config.vocab_size, (2, 16))
    n_layer = auto.config.n_layer

    def loss_and_grads(model):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx, idx)[1]
        loss.backward()
        return loss, [p.grad.clone() for p in model.parameters()]

    loss_a, grads_a = loss_and_grads(auto)
    assert fused_calls == []  # bf16 training on the CPU: the explicit math
    loss_e, grads_e = loss_and_grads(explicit)
    assert torch.equal(loss_a, loss_e) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_e))
    auto(idx, idx)[1].backward()  # fp32 training: fused
    assert len(fused_calls) == n_layer
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        auto(idx)  # bf16 inference: fused
    assert len(fused_calls) == 2 * n_layer
    long = GPT(ModelConfig.preset("tiny", context_length=600))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        long(torch.zeros(1, 600, dtype=torch.long))  # more than 512 keys: fused, to keep memory linear
    assert len(fused_calls) == 3 * n_layer


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
@pytest.mark.parametrize("changes", [{}, LLAMA])
def test_kv_cache_equals_full_forward(attention, changes):
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("tiny", **changes, attention=attention)).double().eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 14))
    full = model(idx)
    cache = model.new_kv_cache(2)
    parts = [model(idx[:, :5], kv_cache=cache), model(idx[:, 5:9], kv_cache=cache)]  # prefill, a chunk
    parts += [model(idx[:, i:i + 1], kv_cache=cache) for i in range(9, 14)]  # one token at a time
    assert cache.pos == 14
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-10)


@pytest.mark.parametrize("changes", [{}, LLAMA])
def test_sdpa_equals_explicit_with_padding_and_cache(changes):
    """Left-padded batch with an attention mask, through the cache, both attention paths agree,
    and the real tokens' logits equal an unpadded run."""
    torch.manual_seed(0)
    fused = GPT(ModelConfig.preset("tiny", **changes, attention="sdpa")).double().eval()
    explicit = GPT(ModelConfig.preset("tiny", **changes, attention="explicit")).double().eval()
    _copy(fused, explicit)
    seq = torch.randint(0, fused.config.vocab_size, (1, 8))
    pad = 3
    idx = torch.cat([torch.zeros(1, pad, dtype=torch.long), seq], dim=1)  # (1, 11)
    mask = torch.cat([torch.zeros(1, pad), torch.ones(1, 8)], dim=1).bool()
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    outs = []
    for model in (fused, explicit):
        cache = model.new_kv_cache(1)
        a = model(idx[:, :6], kv_cache=cache, position_ids=pos[:, :6], attention_mask=mask[:, :6])
        b = model(idx[:, 6:], kv_cache=cache, position_ids=pos[:, 6:], attention_mask=mask)
        outs.append(torch.cat([a, b], dim=1))
    assert torch.allclose(outs[0], outs[1], atol=1e-10)
    assert torch.allclose(outs[0][:, pad:], fused(seq), atol=1e-10)


def test_rotate_half_convention_matches_transformers():
    """Our apply_rope and HF Llama's apply_rotary_pos_emb agree on the same q, k and tables."""
    llama = importlib.import_module("transformers.models.llama.modeling_llama")
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 7, 16), torch.randn(2, 3, 7, 16)  # (B, H, T, head_dim)
    cos, sin = ops.rope_tables(16, 7, base=10000.0)
    hq, hk = llama.apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert torch.allclose(ops.apply_rope(q, cos, sin), hq, atol=1e-6)
    assert torch.allclose(ops.apply_rope(k, cos, sin), hk, atol=1e-6)
