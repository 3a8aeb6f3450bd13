"""Chapter 3 teaching modules: checked by hand-computed examples, against each other, against the
book's own code (llms_from_scratch.ch03) and against the production attention."""

import importlib

import pytest
import torch

from scratchllm.config.model import ModelConfig
from scratchllm.model.layers import Attention
from scratchllm.steps.attention import (
    CausalAttention,
    MultiHeadAttention,
    MultiHeadAttentionWrapper,
    SelfAttentionV1,
    SelfAttentionV2,
    simplified_attention,
    simplified_attention_weights,
)

ch03 = importlib.import_module("llms_from_scratch.ch03")

# the book's six 3-d embeddings of "Your journey starts with one step"
INPUTS = torch.tensor([[0.43, 0.15, 0.89], [0.55, 0.87, 0.66], [0.57, 0.85, 0.64],
                       [0.22, 0.58, 0.33], [0.77, 0.25, 0.10], [0.05, 0.80, 0.55]])


def test_simplified_attention_by_hand():
    w = simplified_attention_weights(INPUTS)
    # the book's worked example: scores of "journey" (x_2) with every input, then softmax
    scores = torch.tensor([(INPUTS[1] * x).sum() for x in INPUTS])
    assert torch.allclose(w[1], torch.exp(scores) / torch.exp(scores).sum())
    assert torch.allclose(w.sum(-1), torch.ones(6))
    z = simplified_attention(INPUTS)
    assert torch.allclose(z[1], (w[1][:, None] * INPUTS).sum(0))
    assert torch.allclose(z[1], torch.tensor([0.4419, 0.6515, 0.5683]), atol=1e-4)  # the book's printed value
    assert simplified_attention(INPUTS[None]).shape == (1, 6, 3)


def test_v1_equals_book_and_v2():
    torch.manual_seed(123)
    v1 = SelfAttentionV1(3, 2)
    book = ch03.SelfAttention_v1(3, 2)
    book.load_state_dict(v1.state_dict())
    assert torch.allclose(v1(INPUTS), book(INPUTS))
    v2 = SelfAttentionV2(3, 2)
    with torch.no_grad():
        for name in ("W_query", "W_key", "W_value"):
            getattr(v2, name).weight.copy_(getattr(v1, name).T)  # nn.Linear stores W^T
    assert torch.allclose(v1(INPUTS), v2(INPUTS), atol=1e-6)


def test_v2_equals_book():
    torch.manual_seed(789)
    v2 = SelfAttentionV2(3, 2, keep_attn_weights=True)
    book = ch03.SelfAttention_v2(3, 2)
    book.load_state_dict(v2.state_dict())
    assert torch.allclose(v2(INPUTS), book(INPUTS))
    w = v2.last_attn_weights
    assert w.shape == (6, 6) and torch.allclose(w.sum(-1), torch.ones(6))


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_causal_attention_equals_book(qkv_bias):
    torch.manual_seed(0)
    x = torch.stack([INPUTS, INPUTS.flip(0)])  # (2, 6, 3)
    ours = CausalAttention(3, 4, context_length=6, dropout=0.0, qkv_bias=qkv_bias, keep_attn_weights=True)
    book = ch03.CausalAttention(3, 4, 6, 0.0, qkv_bias)
    book.load_state_dict(ours.state_dict(), strict=False)  # the book also has its `mask` buffer
    assert torch.allclose(ours(x), book(x), atol=1e-6)
    w = ours.last_attn_weights
    assert torch.all(w.triu(1) == 0), "a token must not see later tokens"
    assert torch.allclose(w[0, 0, 0], torch.tensor(1.0))


def test_causal_dropout_scales_survivors():
    torch.manual_seed(0)
    att = CausalAttention(3, 3, 6, dropout=0.5).train()
    with torch.no_grad():
        for lin in (att.W_query, att.W_key, att.W_value):
            lin.weight.copy_(torch.eye(3))
    out = att(INPUTS[None].expand(200, 6, 3))
    ref = att.eval()(INPUTS[None])
    assert not torch.allclose(out[0], ref[0])  # dropout changes the output in training ...
    assert torch.allclose(out.mean(0), ref[0], atol=0.15)  # ... and is unbiased on average


def test_wrapper_equals_book_and_concatenates_heads():
    torch.manual_seed(0)
    x = torch.rand(2, 5, 3)
    ours = MultiHeadAttentionWrapper(3, 2, 8, 0.0, num_heads=3, keep_attn_weights=True)
    book = ch03.MultiHeadAttentionWrapper(3, 2, 8, 0.0, num_heads=3)
    book.load_state_dict(ours.state_dict(), strict=False)
    out = ours(x)
    assert out.shape == (2, 5, 6)
    assert torch.allclose(out, book(x), atol=1e-6)
    assert torch.allclose(out[..., 2:4], ours.heads[1](x))
    assert ours.last_attn_weights.shape == (2, 3, 5, 5)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_multihead_equals_book(qkv_bias):
    torch.manual_seed(0)
    x = torch.rand(2, 7, 12, dtype=torch.float64)
    ours = MultiHeadAttention(12, 12, 8, 0.0, num_heads=3, qkv_bias=qkv_bias).double()
    book = ch03.MultiHeadAttention(12, 12, 8, 0.0, num_heads=3, qkv_bias=qkv_bias).double()
    book.load_state_dict(ours.state_dict(), strict=False)
    assert torch.allclose(ours(x), book(x), atol=1e-12)


def test_multihead_equals_wrapper_with_split_weights():
    """The weight split: MultiHeadAttention == wrapper of heads holding row blocks, then out_proj."""
    torch.manual_seed(0)
    x = torch.rand(2, 5, 8, dtype=torch.float64)
    mha = MultiHeadAttention(8, 8, 5, 0.0, num_heads=2, qkv_bias=True).double()
    wrap = MultiHeadAttentionWrapper(8, 4, 5, 0.0, num_heads=2, qkv_bias=True).double()
    with torch.no_grad():
        for h, head in enumerate(wrap.heads):
            for name in ("W_query", "W_key", "W_value"):
                getattr(head, name).weight.copy_(getattr(mha, name).weight[4 * h:4 * h + 4])
                getattr(head, name).bias.copy_(getattr(mha, name).bias[4 * h:4 * h + 4])
    assert torch.allclose(mha(x), mha.out_proj(wrap(x)), atol=1e-12)


def copy_mha_to_production(mha: MultiHeadAttention, attn: Attention) -> None:
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.cat([mha.W_query.weight, mha.W_key.weight, mha.W_value.weight]))
        if attn.qkv.bias is not None:
            attn.qkv.bias.copy_(torch.cat([mha.W_query.bias, mha.W_key.bias, mha.W_value.bias]))
        attn.proj.weight.copy_(mha.out_proj.weight)
        attn.proj.bias.copy_(mha.out_proj.bias)


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_multihead_equals_production(attention, qkv_bias):
    torch.manual_seed(0)
    config = ModelConfig(n_embd=24, n_head=4, n_layer=1, context_length=16, vocab_size=10,
                         qkv_bias=qkv_bias, attention=attention)
    mha = MultiHeadAttention(24, 24, 16, 0.0, num_heads=4, qkv_bias=qkv_bias).double().eval()
    attn = Attention(config).double().eval()
    copy_mha_to_production(mha, attn)
    x = torch.randn(3, 16, 24, dtype=torch.float64)
    assert torch.allclose(mha(x), attn(x), atol=1e-12)
    assert torch.allclose(mha(x[:, :5]), attn(x[:, :5]), atol=1e-12)


def test_kept_weights_match_the_output():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 8, 6, 0.0, num_heads=2, keep_attn_weights=True).double()
    x = torch.randn(1, 6, 8, dtype=torch.float64)
    out = mha(x)
    w = mha.last_attn_weights  # (1, 2, 6, 6)
    v = mha.W_value(x).view(1, 6, 2, 4).transpose(1, 2)  # (1, 2, 6, 4)
    rebuilt = mha.out_proj((w @ v).transpose(1, 2).reshape(1, 6, 8))
    assert torch.allclose(out, rebuilt)
    assert torch.all(w.triu(1) == 0) and torch.allclose(w.sum(-1), torch.ones(1, 2, 6, dtype=torch.float64))
    assert MultiHeadAttention(8, 8, 6, 0.0, num_heads=2).last_attn_weights is None


def test_heads_must_divide():
    from scratchllm.errors import ConfigError

    with pytest.raises(ConfigError, match="num_heads"):
        MultiHeadAttention(8, 10, 6, 0.0, num_heads=3)
