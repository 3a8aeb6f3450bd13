"""LoRA: a trainable low-rank update beside a frozen linear layer, swapped in for chosen `nn.Linear`s.

A `LoRALinear` is the `nn.Linear` it wraps (the same `weight` and `bias` Parameters, so the state
dict keeps the plain names `X.weight`, `X.bias`) plus two small matrices, `lora_A` (r, in) and
`lora_B` (out, r):

    y = x @ W^T + b + (alpha / r) * dropout(x) @ A^T @ B^T

A starts as nn.Linear's own init (kaiming-uniform, a = sqrt(5)) and B at zero, so a fresh adapter
changes nothing (Hu et al. 2021, section 4.1; the book's appendix E `LoRALayer`, whose A and B are
our A^T and B^T and whose scale is alpha alone). `merge()` adds the update into W, after which the
layer is a plain linear (no extra cost at inference); `unmerge()` takes it out again.

`add_lora(model, config)` wraps the layers a `config.lora.LoraConfig` targets and freezes the rest
(the book's recipe: only the adapters train); `merge_lora(model)` puts plain `nn.Linear`s with the
merged weights back. `adapter_state` / `adapter_config` are what a checkpoint saves beside the base
weights; `base_linears(model)` shows the model as the plain model it adapts (for saving and loading
the base weights under their plain names).

Not here: the settings and the target words (`config.lora`), files (`checkpoint`), training.
References: Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; Raschka,
"Build a Large Language Model (From Scratch)", appendix E.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.config.lora import TARGET_WORDS, LoraConfig
from scratchllm.errors import UserError

LORA_PARAMS = ("lora_A", "lora_B")


class LoRALinear(nn.Linear):
    """`base` (its own weight and bias Parameters, shared) plus a rank-`r` update scaled by alpha / r."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        nn.Module.__init__(self)  # not nn.Linear's: it would make a new weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        self.r, self.alpha, self.scaling = r, float(alpha), alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear's weight, Hu et al. and the book
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, dtype=w.dtype, device=w.device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta(self) -> torch.Tensor:
        """The update the adapter adds to the weight: scaling * B @ A, (out, in)."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        return y + self.scaling * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)  # (..., out)

    @torch.no_grad()
    def merge(self) -> None:
        """W += scaling * B @ A: the layer is now a plain linear (dropout no longer applies)."""
        if not self.merged:
            self.weight += self.delta().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W -= scaling * B @ A: back to base + adapter (equal to the weight before `merge` to rounding)."""
        if self.merged:
            self.weight -= self.delta().to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha:g}{', merged' if self.merged else ''}"


# --- which layers ------------------------------------------------------------------------------------
def linear_names(model: nn.Module) -> list[str]:
    """Names of the model's nn.Linear layers (LoRA ones included), in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _suffix(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def summary(names: list[str]) -> str:
    """Layer names with the block numbers folded: "blocks.N.attn.qkv, ..., lm_head (N = 0..11)"."""
    shapes = list(dict.fromkeys(re.sub(r"\.\d+\.", ".N.", n) for n in names))
    numbers = sorted({int(m) for n in names for m in re.findall(r"\.(\d+)\.", n)})
    return ", ".join(shapes) + (f" (N = {numbers[0]}..{numbers[-1]})" if numbers else "")


def tied(model: nn.Module, name: str) -> bool:
    """Whether layer `name`'s weight is also another module's (a head tied to the token embedding)."""
    w = model.get_submodule(name).weight
    return any(p is w for n, p in model.named_parameters(remove_duplicate=False) if n != f"{name}.weight")


def select(model: nn.Module, targets: tuple[str, ...] | list[str]) -> list[str]:
    """The names of the nn.Linear layers `targets` (config.lora's words and name suffixes) name.

    "all" leaves out a tied head (its weight is the token embedding's); naming that head otherwise is
    an error, as is a target that matches no layer.
    """
    names = linear_names(model)
    chosen: list[str] = []
    for t in targets:
        if t == "all":
            found = [n for n in names if not tied(model, n)]
        else:
            found = [n for n in names if any(_suffix(n, s) for s in TARGET_WORDS.get(t, (t,)))]
            if not found:
                raise UserError(f"lora target {t!r} matches no linear layer of this model; its linear layers "
                                f"are {summary(names)}; use attn, mlp, head, all or the end of one of these names")
        for n in found:
            if tied(model, n):
                raise UserError(f"lora target {t!r} names {n}, whose weight is the token embedding's "
                                f"(tie_weights): an adapter there would change the embedding too when merged; "
                                f"leave it out of targets, or use a model with tie_weights false")
        chosen += [n for n in found if n not in chosen]
    return [n for n in names if n in chosen]  # in module order


def exactly(model: nn.Module, modules: list[str]) -> list[str]:
    """`modules` (adapters.json's exact layer names) in module order, each an untied linear layer of `model`."""
    names = linear_names(model)
    for n in modules:
        if n not in names:
            raise UserError(f"the adapters are for layer {n!r}, which this model does not have (its linear "
                            f"layers: {summary(names)}); load them onto the model they were trained on")
        if tied(model, n):
            raise UserError(f"the adapters are for {n}, whose weight is the token embedding's in this model "
                            f"(tie_weights); load them onto the model they were trained on")
    return [n for n in names if n in set(modules)]


# --- wrapping and unwrapping ---------------------------------------------------------------------------
def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def add_lora(model: nn.Module, config: LoraConfig | Mapping[str, Any] | str, *, freeze: bool = True) -> list[str]:
    """Wrap the layers `config` targets in `LoRALinear`s; return their names (in module order).

    `config` is a `LoraConfig`, its command-line spec ("r=8,alpha=16,targets=attn,mlp"), or a dict:
    LoraConfig's fields, or `adapter_config`'s JSON (r, alpha, dropout and `modules`, the exact
    names). `freeze` (the book's recipe) sets requires_grad False on every parameter but the
    adapters; a caller that also trains a head unfreezes it after. With r = 0 (LoRA off) nothing
    changes and the list is empty. Layers already LoRA are an error.
    """
    if isinstance(config, str):
        config = LoraConfig.from_spec(config)
    if isinstance(config, Mapping):
        config = dict(config)
        modules = config.pop("modules", None)
        config.pop("base", None)
        if modules is not None:
            config["targets"] = ["all"]  # checked below against the exact names
        config = LoraConfig.from_dict(config, prefix="lora.")
    else:
        modules = None
    if config.r == 0:
        return []
    if has_lora(model):
        raise UserError("this model has LoRA layers already; merge them (merge_lora) or start from the plain model")
    names = select(model, config.targets) if modules is None else exactly(model, modules)
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    for n in names:
        _set(model, n, LoRALinear(model.get_submodule(n), config.r, config.alpha, config.dropout))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (A and B of every LoRA layer), in module order."""
    return [p for m in lora_layers(model).values() for p in (m.lora_A, m.lora_B)]


def count_lora_params(model: nn.Module) -> int:
    """Numbers in the adapters: r * (in + out) per LoRA layer."""
    return sum(p.numel() for p in lora_parameters(model))


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters' tensors, under their state-dict names (`blocks.0.attn.qkv.lora_A`, ...)."""
    return {f"{name}.{p}": getattr(m, p).detach() for name, m in lora_layers(model).items() for p in LORA_PARAMS}


def adapter_config(model: nn.Module) -> dict[str, Any]:
    """The adapters' settings as JSON: r, alpha, dropout and the exact names of the adapted layers."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers")
    first = next(iter(layers.values()))
    drop = first.dropout.p if isinstance(first.dropout, nn.Dropout) else 0.0
    return {"r": first.r, "alpha": first.alpha, "dropout": drop, "modules": list(layers)}


def _plain(layer: LoRALinear) -> nn.Linear:
    """An nn.Linear holding `layer`'s weight and bias Parameters (nothing copied, nothing initialised)."""
    plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    plain.weight, plain.bias = layer.weight, layer.bias
    return plain


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace each LoRALinear by a plain nn.Linear holding W + scaling * B @ A; returns `model`."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        _set(model, name, _plain(layer))
    return model


@contextmanager
def base_linears(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block the model is the plain model its adapters adapt: each LoRALinear is an
    nn.Linear over its base weight and bias (the same Parameters, so loading into them loads the base).
    Its state dict is then exactly a plain model's. A merged layer is unmerged within the block and
    merged again after (a loader unmerges first, so that what it loads stays unmerged)."""
    layers = lora_layers(model)
    merged = [name for name, layer in layers.items() if layer.merged]
    for name, layer in layers.items():
        layer.unmerge()
        _set(model, name, _plain(layer))
    try:
        yield model
    finally:
        for name, layer in layers.items():
            _set(model, name, layer)
            if name in merged:
                layer.merge()
