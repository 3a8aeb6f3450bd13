"""The optimizer and the learning-rate schedules.

- `param_groups`: weight decay on matrices (every parameter with 2 or more dimensions: linear
  weights and embeddings) and none on biases and norm gains, as GPT-2 and nanoGPT do.
- `build_optimizer`: AdamW (Loshchilov & Hutter 2019), fused where torch has the kernel; or Muon
  (`train.muon`) for the matrices inside the transformer blocks with AdamW for the rest.
- `lr_at(step, config, elapsed)`: the learning rate of a step: linear warmup, then cosine
  (Loshchilov & Hutter 2017), linear or constant, down to `min_lr`; the decay runs over the steps
  (a pure function of the step) or over the time budget (`decay_over="seconds"`).

Frozen parameters (`requires_grad=False`) are left out of every group. Optimizer and schedule
names are checked once, by `TrainConfig`. Not here: the loop that calls these (`train.loop`).
"""

from __future__ import annotations

import math
from typing import Any

from scratchllm.errors import ConfigError


def lr_at(step: int, config: Any, elapsed: float | None = None) -> float:
    """Learning rate for optimizer step `step` (0-based) under `config` (a `TrainConfig`).

    Warmup rises linearly over `warmup_steps` to `lr` ((step + 1) / (warmup + 1), as nanoGPT), then the
    schedule decays to `min_lr` and stays there. The decay's progress runs from 0 to 1:
    - `decay_over="steps"`: over the steps from warmup to `decay_steps` (default `max_steps`);
    - `decay_over="seconds"`: as `elapsed / max_seconds`, `elapsed` being the seconds of training so far
      (counted across resumes), so the decay ends when the time budget does, however fast the steps
      run. Warmup still counts steps. The rate then depends on when each step ran, so a resumed run
      is not bit-exact (a step-based schedule is).

    >>> from types import SimpleNamespace as C
    >>> c = C(lr=1.0, final_lr=0.1, warmup_steps=9, decay_steps=None, max_steps=109, schedule="cosine",
    ...       decay_over="steps", max_seconds=None)
    >>> [round(lr_at(s, c), 3) for s in (0, 4, 9, 59, 109, 500)]
    [0.1, 0.5, 1.0, 0.55, 0.1, 0.1]
    >>> round(lr_at(59, C(**{**vars(c), "schedule": "linear"})), 3)
    0.55
    >>> lr_at(80, C(**{**vars(c), "schedule": "constant"}))
    1.0
    >>> timed = C(**{**vars(c), "decay_over": "seconds", "max_seconds": 60.0})
    >>> [round(lr_at(20, timed, elapsed=t), 3) for t in (0.0, 30.0, 60.0, 90.0)]
    [1.0, 0.55, 0.1, 0.1]
    """
    lr, low, warmup = config.lr, config.final_lr, config.warmup_steps
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    if config.schedule == "constant":
        return lr
    if config.decay_over == "seconds":
        if elapsed is None:
            raise ValueError("lr_at: decay_over='seconds' needs the elapsed seconds")
        ratio = min(1.0, elapsed / config.max_seconds)  # 0 -> 1 over the time budget
    else:
        end = config.decay_steps if config.decay_steps is not None else config.max_steps
        if step >= end or end <= warmup:
            return low
        ratio = (step - warmup) / (end - warmup)  # 0 -> 1 over the decay
    # the schedule is "cosine" or "linear" (TrainConfig checks the name)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio)) if config.schedule == "cosine" else 1.0 - ratio
    return low + coeff * (lr - low)


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: 2-D+ parameters decay, the rest (biases, norm gains) do not.

    Tied weights appear once (named_parameters de-duplicates them); frozen parameters are skipped.
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: Any, config: Any, device: Any = "cpu") -> Any:
    """The optimizer named by `config.optimizer` ("adamw", "muon" or "sgd"), over
    `param_groups(model, config.weight_decay)`."""
    import torch

    groups = param_groups(model, config.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
    if config.optimizer == "adamw":
        kwargs: dict[str, Any] = {}
        if config.fused and torch.device(device).type in ("cpu", "cuda"):
            kwargs["fused"] = True
        else:
            kwargs["foreach"] = True
        return torch.optim.AdamW(groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
                                 **kwargs)
    if config.optimizer == "muon":
        from scratchllm.runtime import fast_bf16_matmul
        from scratchllm.train.muon import Muon

        return Muon(muon_groups(model, config), lr=config.lr, momentum=config.muon_momentum,
                    ns_bf16=fast_bf16_matmul(device), betas=(config.beta1, config.beta2), eps=config.eps)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.beta1)  # "sgd" (TrainConfig checks the name)


def muon_groups(model: Any, config: Any) -> list[dict[str, Any]]:
    """Param groups for `Muon`: the 2-D weights inside `model.blocks` get Muon at `config.muon_lr`
    (fused QKV weights with their block sizes as `splits`); the rest get AdamW, as `param_groups`.

    Each group's `lr_scale` is its learning rate over `config.lr`, so the schedule (`set_lr`) moves
    both kinds together.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ConfigError("train.optimizer 'muon' needs a transformer with .blocks; choose adamw")
    splits = {id(m.qkv.weight): m.qkv_sizes() for m in blocks.modules() if hasattr(m, "qkv_sizes")}
    hidden = {id(p) for p in blocks.parameters() if p.dim() == 2 and p.requires_grad}
    fused = [p for p in blocks.parameters() if id(p) in hidden and id(p) in splits]
    plain = [p for p in blocks.parameters() if id(p) in hidden and id(p) not in splits]
    scale = config.muon_lr / config.lr
    groups = [{"params": ps, "muon": True, "splits": splits[id(ps[0])] if ps is fused else None, "lr": config.muon_lr,
               "lr_scale": scale, "weight_decay": config.weight_decay} for ps in (fused, plain) if ps]
    if len({tuple(splits[id(p)]) for p in fused}) > 1:
        raise ConfigError("train.optimizer 'muon': attention blocks of different shapes are not supported")
    for g in param_groups(model, config.weight_decay):
        rest = [p for p in g["params"] if id(p) not in hidden]
        if rest:
            groups.append({**g, "params": rest, "muon": False, "lr_scale": 1.0})
    return groups


def set_lr(optimizer: Any, lr: float) -> None:
    """Set every group's learning rate to `lr` times its `lr_scale` (1 unless a group sets it)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
