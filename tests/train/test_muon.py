import json

import pytest
import safetensors.torch
import torch
from train_helpers import tiny_model, tiny_tokens

from scratchllm.config.train import TrainConfig
from scratchllm.data.datasets import RandomWindowBatches
from scratchllm.errors import ConfigError
from scratchllm.train import lm_loss, train
from scratchllm.train.checkpoint import optimizer_from_safe, optimizer_to_safe
from scratchllm.train.muon import Muon, adamw_step, muon_directions, orthogonalize
from scratchllm.train.optim import build_optimizer, set_lr


@pytest.mark.parametrize("shape", [(16, 48), (48, 16), (32, 32)])
def test_orthogonalize_pushes_singular_values_towards_one(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    g[:, 0] *= 50  # one dominant direction, as gradients have
    q = orthogonalize(g)
    s = torch.linalg.svdvals(q)
    assert q.shape == g.shape
    # a square Gaussian matrix has singular values near 0, which five steps only partly lift
    assert s.max() < 1.25 and (s > 0.6).float().mean() >= 0.9
    # the same singular vectors: q is close to U V^T of g
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    cos = (q * (u @ vh)).sum() / (q.norm() * (u @ vh).norm())
    assert cos > 0.95


def test_fused_blocks_are_orthogonalized_separately():
    gen = torch.Generator().manual_seed(1)
    grad = torch.randn(24, 8, generator=gen)
    whole, split = muon_directions([grad, grad], [torch.zeros_like(grad)] * 2, 0.0, [None, [8, 8, 8]])
    assert not torch.allclose(whole, split)
    torch.testing.assert_close(split[8:16], orthogonalize(grad[8:16]))
    # a tall matrix is scaled by sqrt(rows / cols)
    torch.testing.assert_close(whole, orthogonalize(grad) * 3 ** 0.5)
    # a stack is orthogonalized matrix by matrix
    pair = torch.stack([grad[:8], grad[8:16]])
    torch.testing.assert_close(orthogonalize(pair)[1], orthogonalize(grad[8:16]), rtol=1e-5, atol=1e-6)


def test_bf16_newton_schulz_is_close_to_fp32():
    g = torch.randn(4, 64, 32, generator=torch.Generator().manual_seed(2))
    fp32, bf16 = orthogonalize(g), orthogonalize(g, dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert float((bf16 - fp32).norm() / fp32.norm()) < 0.05


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    p1 = torch.nn.Parameter(torch.randn(5, 3))
    p2 = torch.nn.Parameter(p1.detach().clone())
    ref = torch.optim.AdamW([p1], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    group = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    state: dict = {}
    for i in range(5):
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(i))
        p1.grad, p2.grad = g.clone(), g.clone()
        ref.step()
        with torch.no_grad():
            adamw_step(p2, state, group)
    torch.testing.assert_close(p2, p1, rtol=1e-6, atol=1e-7)


def test_groups_hidden_matrices_get_muon_and_the_rest_adamw():
    model = tiny_model(n_kv_head=1)
    config = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    opt = build_optimizer(model, config)
    assert isinstance(opt, Muon)
    names = {id(p): n for n, p in model.named_parameters()}
    muon = {names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]}
    adam = {names[id(p)] for g in opt.param_groups if not g["muon"] for p in g["params"]}
    assert muon == {n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert adam == set(names.values()) - muon
    assert "tok_emb.weight" in adam
    (fused,) = [g for g in opt.param_groups if g["splits"]]
    attn = model.blocks[0].attn
    assert fused["splits"] == attn.qkv_sizes() == [32, 16, 16]  # GQA: 2 query heads, 1 key/value head
    set_lr(opt, 5e-4)  # the schedule moves both kinds by the same factor
    assert {round(g["lr"], 8) for g in opt.param_groups} == {5e-4, 0.01}


def test_muon_trains_and_its_state_round_trips_for_exact_resume():
    tokens = tiny_tokens()
    config = TrainConfig(optimizer="muon", lr=3e-3, muon_lr=0.02, warmup_steps=2, max_steps=40, batch_size=4,
                         eval_interval=1000, progress=False, peak_flops=1e9, precision="fp32")
    model = tiny_model()
    x, y = next(RandomWindowBatches(tokens[5000:], 8, 32, seed=3))
    before = model(x, y)[1].detach().item()
    train(model, RandomWindowBatches(tokens[:5000], 4, 32, seed=0), lm_loss, config)
    assert model(x, y)[1].detach().item() < before - 0.5

    # a state saved as safetensors + JSON and loaded into a new optimizer continues identically
    opt = build_optimizer(model, config)
    batches = RandomWindowBatches(tokens[:5000], 4, 32, seed=1)
    for _ in range(2):
        model(*next(batches))[1].backward()
        opt.step()
        opt.zero_grad()
    tensors, meta = optimizer_to_safe(opt)
    tensors = safetensors.torch.load(safetensors.torch.save(tensors))  # through bytes, as a checkpoint file
    twin = tiny_model()
    twin.load_state_dict(model.state_dict())
    opt2 = build_optimizer(twin, config)
    opt2.load_state_dict(optimizer_from_safe(tensors, json.loads(json.dumps(meta))))
    xb, yb = next(batches)
    for m, o in ((model, opt), (twin, opt2)):
        m(xb, yb)[1].backward()
        o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_muon_settings_are_one_clear_line():
    with pytest.raises(ConfigError, match="muon_lr"):
        TrainConfig(optimizer="muon", muon_lr=0)
    with pytest.raises(ConfigError, match="muon_momentum"):
        TrainConfig(optimizer="muon", muon_momentum=1.0)
    with pytest.raises(ConfigError, match="needs a transformer"):
        build_optimizer(torch.nn.Linear(3, 3), TrainConfig(optimizer="muon"))
