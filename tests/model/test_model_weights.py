"""Weight-name maps are lossless: property tests over random configurations (no peers needed)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT
from scratchllm.model.weights import (
    from_book_gpt,
    from_hf_gpt2,
    from_hf_llama,
    from_hf_qwen3,
    to_book_gpt,
    to_hf_gpt2,
    to_hf_llama,
    to_hf_qwen3,
)


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@st.composite
def configs(draw, **fixed):
    n_head = draw(st.sampled_from([1, 2, 4]))
    n_kv = draw(st.sampled_from([d for d in (1, 2, 4) if n_head % d == 0]))
    d = dict(n_layer=draw(st.integers(1, 3)), n_head=n_head, n_embd=n_head * draw(st.sampled_from([2, 4, 8])),
             vocab_size=draw(st.integers(5, 40)), context_length=8, n_kv_head=n_kv,
             bias=draw(st.booleans()), qkv_bias=draw(st.booleans()), tie_weights=draw(st.booleans()),
             norm=draw(st.sampled_from(["layernorm", "rmsnorm"])), mlp=draw(st.sampled_from(["gelu", "swiglu"])),
             position=draw(st.sampled_from(["learned", "rope"])),
             attn_proj_bias=draw(st.sampled_from([None, False, True])), head_size=draw(st.sampled_from([None, 2, 6])))
    d.update(fixed)
    return ModelConfig(**d)


@settings(max_examples=25, deadline=None)
@given(config=configs(mlp="gelu", position="learned", n_kv_head=None, head_size=None))
def test_gpt2_map_round_trips(config):
    sd = GPT(config).state_dict()
    hf = to_hf_gpt2(sd)
    assert all(k.startswith(("transformer.", "lm_head.")) for k in hf)
    assert _same(from_hf_gpt2(hf), sd)


@settings(max_examples=25, deadline=None)
@given(config=configs(norm="rmsnorm", mlp="swiglu", position="rope"))
def test_llama_map_round_trips(config):
    sd = GPT(config).state_dict()
    hf = to_hf_llama(sd)
    kv_rows = config.kv_heads * config.head_dim
    assert hf["model.layers.0.self_attn.k_proj.weight"].shape == (kv_rows, config.n_embd)
    assert _same(from_hf_llama(hf), sd)


@settings(max_examples=25, deadline=None)
@given(config=configs(norm="rmsnorm", mlp="swiglu", position="rope", qk_norm=True, bias=False))
def test_qwen3_map_round_trips(config):
    sd = GPT(config).state_dict()
    hf = to_hf_qwen3(sd)
    assert hf["model.layers.0.self_attn.q_norm.weight"].shape == (config.head_dim,)
    assert hf["model.layers.0.self_attn.o_proj.weight"].shape == (config.n_embd, config.n_head * config.head_dim)
    assert _same(from_hf_qwen3(hf), sd)


@settings(max_examples=25, deadline=None)
@given(config=configs(norm="layernorm", mlp="gelu", position="learned", bias=True, n_kv_head=None, head_size=None,
                        attn_proj_bias=None))
def test_book_map_round_trips(config):
    sd = GPT(config).state_dict()
    book = to_book_gpt(sd)
    assert book["trf_blocks.0.att.W_key.weight"].shape == (config.n_embd, config.n_embd)
    assert _same(from_book_gpt(book), sd)


def test_rope_model_has_no_gpt2_layout():
    import pytest

    from scratchllm.errors import UserError

    with pytest.raises(UserError, match="position=rope"):
        to_hf_gpt2(GPT(ModelConfig.preset("tiny", position="rope")).state_dict())
