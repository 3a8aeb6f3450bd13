"""GPT-2's initialisation (model.gpt.init_weights): N(0, 0.02) weights, zero biases, unit norms, and
residual projections scaled by 1/sqrt(2 * n_layer)."""

import math

import pytest
import torch

from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT, init_weights


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(ModelConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=2000, context_length=256))


def test_weight_std(model):
    std = 0.02
    assert model.tok_emb.weight.std().item() == pytest.approx(std, rel=0.02)
    assert model.pos_emb.weight.std().item() == pytest.approx(std, rel=0.02)
    for block in model.blocks:
        assert block.attn.qkv.weight.std().item() == pytest.approx(std, rel=0.05)
        assert block.mlp.fc.weight.std().item() == pytest.approx(std, rel=0.05)
        assert abs(block.attn.qkv.weight.mean().item()) < 1e-3


def test_residual_projections_scaled(model):
    scaled = 0.02 / math.sqrt(2 * 8)
    for block in model.blocks:
        assert block.attn.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
        assert block.mlp.proj.weight.std().item() == pytest.approx(scaled, rel=0.05)


def test_biases_zero_norms_one(model):
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        elif "norm" in name:
            assert torch.all(p == 1), name


def test_tied_head_keeps_embedding_init(model):
    assert model.lm_head.weight is model.tok_emb.weight


def test_init_std_option_and_reinit():
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("tiny", init_std=0.1, n_embd=128, n_head=2, vocab_size=1000))
    assert model.tok_emb.weight.std().item() == pytest.approx(0.1, rel=0.05)
    with torch.no_grad():
        model.blocks[0].norm1.weight.fill_(3.0)
    init_weights(model)
    assert torch.all(model.blocks[0].norm1.weight == 1)


def test_rmsnorm_and_untied_head_init():
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("mini-llama"))
    assert all(torch.all(b.norm1.weight == 1) for b in model.blocks)
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.blocks[0].mlp.gate.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_scaling_keeps_residual_growth_independent_of_depth():
    """What the scaling is for: 2 * n_layer branches each add variance to the residual stream; scaled
    by 1/sqrt(2 * n_layer), their sum adds about as much as one unscaled branch (sqrt(32) ~ 5.7x
    less than unscaled in std for 16 layers)."""

    def growth(scale: bool) -> float:
        torch.manual_seed(0)
        model = GPT(ModelConfig(n_layer=16, n_head=2, n_embd=64, vocab_size=100, context_length=32)).eval()
        if not scale:
            with torch.no_grad():
                for block in model.blocks:
                    block.attn.proj.weight.normal_(0.0, 0.02)
                    block.mlp.proj.weight.normal_(0.0, 0.02)
        x0 = model.tok_emb(torch.randint(0, 100, (4, 32))) + model.pos_emb.weight
        x = x0
        with torch.no_grad():
            for block in model.blocks:
                x = block(x)
        return (x - x0).std().item()

    assert growth(scale=False) > 3 * growth(scale=True)
