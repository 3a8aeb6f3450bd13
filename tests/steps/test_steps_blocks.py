"""Chapter 4 teaching modules against torch's modules, the production model and the book's code."""

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.config.model import ModelConfig
from scratchllm.errors import ConfigError
from scratchllm.generate.simple import generate_text_simple
from scratchllm.model import GPT
from scratchllm.model.layers import MLP, Block
from scratchllm.model.weights import from_book_gpt
from scratchllm.steps.blocks import (
    GELU,
    ExampleDeepNeuralNetwork,
    FeedForward,
    LayerNorm,
    TransformerBlock,
    layer_gradient_means,
)
from scratchllm.steps.gpt import GPTModel

ch04 = importlib.import_module("llms_from_scratch.ch04")

CONFIG = ModelConfig.preset("tiny", tie_weights=False)


def book_cfg(config: ModelConfig) -> dict:
    return {"vocab_size": config.vocab_size, "context_length": config.context_length, "emb_dim": config.n_embd,
            "n_heads": config.n_head, "n_layers": config.n_layer, "drop_rate": config.dropout,
            "qkv_bias": config.qkv_bias}


def without_masks(sd):
    return {k: v for k, v in sd.items() if not k.endswith("att.mask")}


def test_layernorm_equals_torch_and_book():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16, dtype=torch.float64) * 3 + 1
    ours = LayerNorm(16).double()
    with torch.no_grad():
        ours.scale.normal_()
        ours.shift.normal_()
    ref = nn.LayerNorm(16, eps=1e-5).double()
    ref.load_state_dict({"weight": ours.scale, "bias": ours.shift})
    assert torch.allclose(ours(x), ref(x), atol=1e-12)
    book = ch04.LayerNorm(16).double()
    book.load_state_dict(ours.state_dict())
    assert torch.allclose(ours(x), book(x), atol=1e-12)
    plain = LayerNorm(16).double()(x)
    assert torch.allclose(plain.mean(-1), torch.zeros(2, 5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(plain.var(-1, unbiased=False), torch.ones(2, 5, dtype=torch.float64), atol=1e-5)


def test_gelu_equals_torch_and_book():
    x = torch.linspace(-6, 6, 1001, dtype=torch.float64)
    assert torch.allclose(GELU()(x), F.gelu(x, approximate="tanh"), atol=1e-12)
    assert torch.allclose(GELU()(x.float()), ch04.GELU()(x.float()), atol=1e-6)
    assert torch.allclose(GELU()(x), F.gelu(x), atol=1e-3)  # close to the exact erf GELU too


def test_feedforward_equals_book_and_production_mlp():
    torch.manual_seed(0)
    x = torch.randn(2, 4, CONFIG.n_embd)
    ours = FeedForward(CONFIG)
    book = ch04.FeedForward(book_cfg(CONFIG))
    book.load_state_dict(ours.state_dict())
    assert torch.allclose(ours(x), book(x), atol=1e-6)
    mlp = MLP(CONFIG)
    mlp.load_state_dict({"fc.weight": ours.layers[0].weight, "fc.bias": ours.layers[0].bias,
                         "proj.weight": ours.layers[2].weight, "proj.bias": ours.layers[2].bias})
    assert torch.allclose(ours(x), mlp(x), atol=1e-6)


def test_shortcuts_keep_gradients_alive():
    sizes = [3, 3, 3, 3, 3, 1]
    x = torch.tensor([[1.0, 0.0, -1.0]])
    target = torch.tensor([[0.0]])
    torch.manual_seed(123)
    plain = ExampleDeepNeuralNetwork(sizes, use_shortcut=False)
    torch.manual_seed(123)
    skip = ExampleDeepNeuralNetwork(sizes, use_shortcut=True)
    g_plain = layer_gradient_means(plain, x, target)
    g_skip = layer_gradient_means(skip, x, target)
    assert list(g_plain) == [f"layers.{i}.0.weight" for i in range(5)]
    # without shortcuts the first layer's gradient is much smaller than the last's
    assert g_plain["layers.0.0.weight"] < 0.1 * g_plain["layers.4.0.weight"]
    # with them, the first layer gets a gradient comparable to the last's, far above the plain one
    assert g_skip["layers.0.0.weight"] > 0.1 * g_skip["layers.4.0.weight"]
    assert g_skip["layers.0.0.weight"] > 10 * g_plain["layers.0.0.weight"]


def block_to_production(sd: dict) -> dict:
    """Teaching TransformerBlock names -> production Block names, through the book mapping."""
    wrapped = {f"trf_blocks.0.{k}": v for k, v in sd.items()}
    wrapped.update({"tok_emb.weight": torch.zeros(1), "pos_emb.weight": torch.zeros(1),
                    "final_norm.scale": torch.zeros(1), "final_norm.shift": torch.zeros(1),
                    "out_head.weight": torch.zeros(1)})
    ours = from_book_gpt(wrapped)
    return {k.removeprefix("blocks.0."): v for k, v in ours.items() if k.startswith("blocks.0.")}


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_transformer_block_equals_production_and_book(attention):
    config = CONFIG.replace(attention=attention, qkv_bias=False)
    torch.manual_seed(0)
    teach = TransformerBlock(config).double().eval()
    block = Block(config).double().eval()
    block.load_state_dict(block_to_production(teach.state_dict()))
    book = ch04.TransformerBlock(book_cfg(config)).double().eval()
    book.load_state_dict(teach.state_dict(), strict=False)
    x = torch.randn(2, 9, config.n_embd, dtype=torch.float64)
    assert torch.allclose(teach(x), block(x), atol=1e-12)
    assert torch.allclose(teach(x), book(x), atol=1e-6)  # the book's GELU uses a float32 sqrt(2/pi)


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_gptmodel_equals_production_and_book(qkv_bias):
    config = CONFIG.replace(qkv_bias=qkv_bias)
    torch.manual_seed(0)
    teach = GPTModel(config).double().eval()
    model = GPT(config).double().eval()
    model.load_state_dict(from_book_gpt(teach.state_dict()))
    book = ch04.GPTModel(book_cfg(config)).double().eval()
    missing, unexpected = book.load_state_dict(teach.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("att.mask") for k in missing)
    idx = torch.randint(0, config.vocab_size, (2, config.context_length))
    with torch.no_grad():
        logits = teach(idx)
        assert torch.allclose(logits, model(idx), atol=1e-10)
        assert torch.allclose(logits, book(idx), atol=1e-6)  # the book's GELU uses a float32 sqrt(2/pi)


def test_generate_text_simple_equals_book():
    torch.manual_seed(0)
    teach = GPTModel(CONFIG).eval()
    book = ch04.GPTModel(book_cfg(CONFIG)).eval()
    book.load_state_dict(teach.state_dict(), strict=False)
    idx = torch.tensor([[1, 2, 3]])
    ours = generate_text_simple(teach, idx, max_new_tokens=12, context_size=8)  # crops the context
    theirs = ch04.generate_text_simple(book, idx, max_new_tokens=12, context_size=8)  # crops the context
    assert ours.shape == (1, 15) and torch.equal(ours, theirs)


def test_attention_maps_for_pictures():
    torch.manual_seed(0)
    teach = GPTModel(CONFIG, keep_attn_weights=True).eval()
    teach(torch.randint(0, CONFIG.vocab_size, (1, 10)))
    maps = teach.attention_maps()
    assert len(maps) == CONFIG.n_layer
    assert all(m.shape == (1, CONFIG.n_head, 10, 10) and torch.all(m.triu(1) == 0) for m in maps)


@pytest.mark.parametrize("change", [{"norm": "rmsnorm"}, {"mlp": "swiglu"}, {"position": "rope"},
                                    {"bias": False}, {"n_kv_head": 1}])
def test_book_model_refuses_options_beyond_it(change):
    field = next(iter(change))
    with pytest.raises(ConfigError, match=f"model.{field}"):
        GPTModel(CONFIG.replace(**change))
