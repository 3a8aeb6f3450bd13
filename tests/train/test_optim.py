import math

import pytest
import torch
from train_helpers import tiny_model

from scratchllm.config.train import TrainConfig
from scratchllm.errors import ConfigError
from scratchllm.train.optim import build_optimizer, lr_at, param_groups


def test_warmup_then_cosine_by_hand():
    c = TrainConfig(lr=6e-4, min_lr=6e-5, warmup_steps=10, max_steps=110)
    assert lr_at(0, c) == pytest.approx(6e-4 * 1 / 11)
    assert lr_at(9, c) == pytest.approx(6e-4 * 10 / 11)
    assert lr_at(10, c) == pytest.approx(6e-4)  # decay starts at the peak
    # halfway through the decay the cosine is at 0.5: min + 0.5 (max - min)
    assert lr_at(60, c) == pytest.approx(6e-5 + 0.5 * (6e-4 - 6e-5))
    # a quarter of the way: 0.5 (1 + cos(pi/4))
    assert lr_at(35, c) == pytest.approx(6e-5 + 0.5 * (1 + math.cos(math.pi / 4)) * (6e-4 - 6e-5))
    assert lr_at(110, c) == pytest.approx(6e-5)
    assert lr_at(10_000, c) == pytest.approx(6e-5)


def test_linear_and_constant_schedules_and_default_min_lr():
    lin = TrainConfig(lr=1.0, warmup_steps=0, max_steps=100, schedule="linear")
    assert lin.final_lr == pytest.approx(0.1)
    assert lr_at(50, lin) == pytest.approx(0.1 + 0.5 * 0.9)
    const = TrainConfig(lr=4e-4, warmup_steps=0, max_steps=100, schedule="constant")
    assert [lr_at(s, const) for s in (0, 50, 99)] == [4e-4] * 3


def test_decay_steps_override():
    c = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=0, max_steps=1000, decay_steps=100)
    assert lr_at(100, c) == 0.0 and lr_at(500, c) == 0.0
    assert lr_at(50, c) == pytest.approx(0.5)


def test_decay_on_matrices_only_and_frozen_left_out():
    m = tiny_model()
    m.norm_f.weight.requires_grad_(False)
    groups = param_groups(m, 0.1)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    ids = {id(p) for g in groups for p in g["params"]}
    assert id(m.norm_f.weight) not in ids
    # tied embedding/head weight appears once
    assert sum(p is m.tok_emb.weight for p in decay["params"]) == 1
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert ids == trainable


def test_adamw_fused_and_unknown_optimizer():
    m = tiny_model()
    opt = build_optimizer(m, TrainConfig(), "cpu")
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults.get("fused") is True
    with pytest.raises(ConfigError, match="train.optimizer"):
        TrainConfig(optimizer="lion")
    with pytest.raises(ConfigError, match="train.schedule"):
        TrainConfig(schedule="exp")


def test_unknown_precision_is_one_clear_line():
    with pytest.raises(ConfigError, match="train.precision 'fp16' is unknown"):
        TrainConfig(precision="fp16")


def test_decay_over_seconds_follows_the_time_budget():
    c = TrainConfig(lr=1.0, min_lr=0.0, warmup_steps=10, max_steps=10**6, max_seconds=100.0, decay_over="seconds",
                    schedule="linear")
    assert lr_at(4, c, elapsed=50.0) == pytest.approx(5 / 11)  # warmup still counts steps
    # after warmup the step does not matter, the clock does: progress = elapsed / max_seconds
    assert lr_at(20, c, elapsed=25.0) == lr_at(5000, c, elapsed=25.0) == pytest.approx(0.75)
    assert lr_at(20, c, elapsed=100.0) == 0.0 and lr_at(20, c, elapsed=250.0) == 0.0
    cos = c.replace(schedule="cosine")
    assert lr_at(20, cos, elapsed=50.0) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="train.max_seconds"):
        TrainConfig(decay_over="seconds")
    with pytest.raises(ConfigError, match="train.decay_over"):
        TrainConfig(decay_over="tokens", max_seconds=10.0)
