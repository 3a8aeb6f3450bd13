"""LoRA settings: which linear layers get a low-rank adapter, its rank, scale and dropout.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"; the book's appendix E)
trains a low-rank update `scaling * B @ A` beside a frozen weight instead of the weight itself.
`LoraConfig` is the setting every finetuning method takes (`--lora r=8,alpha=16,targets=attn,mlp`,
parsed by `LoraConfig.from_spec`); `r = 0` means no LoRA (full finetuning).

Targets: a word, or the end of a module name (with at least one dot), matched against the model's
`nn.Linear` layers by `model.lora`:

    attn    attention's fused q/k/v projection and its output projection (attn.qkv, attn.proj)
    mlp     the feed-forward layers (mlp.fc, mlp.gate for SwiGLU, mlp.proj)
    head    the language-model head (lm_head)
    all     every nn.Linear (except a head tied to the token embedding)
    NAME    a module-name suffix: "attn.qkv" (every block's), "blocks.11.mlp.fc" (one layer)

Not here: the layer and the matching (`model.lora`), saving adapters (`checkpoint`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scratchllm.config.base import Config, check, check_finite
from scratchllm.errors import ConfigError

# The target words and the module-name suffixes each stands for ("all": every nn.Linear).
TARGET_WORDS: dict[str, tuple[str, ...]] = {
    "attn": ("attn.qkv", "attn.proj"),
    "mlp": ("mlp.fc", "mlp.gate", "mlp.proj"),
    "head": ("lm_head",),
    "all": (),
}
# A module-name suffix: names separated by dots, at least one dot ("attn.qkv", "blocks.11.mlp.fc").
NAME_RE = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)+\Z")
SPEC_EXAMPLE = "r=8,alpha=16,targets=attn,mlp"


@dataclass
class LoraConfig(Config):
    # Rank of each adapter (the inner size of B @ A); 0 turns LoRA off (full finetuning).
    r: int = 0
    # Scale of the update: the adapter's output is multiplied by alpha / r (Hu et al. 2021), so with
    # alpha fixed a change of rank needs little retuning of the learning rate. 16 scales the update by
    # 2 at rank 8. (The book's appendix E multiplies by alpha alone: its alpha times r is ours.)
    alpha: float = 16.0
    # Dropout on the adapter's input while training; 0 (the book's) is off.
    dropout: float = 0.0
    # Layers to adapt: attn, mlp, head, all, or module-name suffixes such as attn.qkv or blocks.11.mlp.fc.
    targets: tuple[str, ...] = ("attn", "mlp")

    def __post_init__(self) -> None:
        check_finite(self, "lora.")
        check(self.r >= 0, f"lora r must be >= 0 (0 turns LoRA off), got {self.r}")
        check(self.alpha > 0, f"lora alpha must be > 0 (the update is scaled by alpha / r), got {self.alpha}")
        check(0.0 <= self.dropout < 1.0, f"lora dropout must be in [0, 1), got {self.dropout}")
        check(len(self.targets) > 0, f"lora targets is empty; name the layers to adapt, e.g. {SPEC_EXAMPLE}")
        for t in self.targets:
            check(t in TARGET_WORDS or NAME_RE.match(t) is not None,
                  f"lora target {t!r} is unknown; use {', '.join(TARGET_WORDS)} or the end of a module name "
                  f"with a dot, such as attn.qkv or blocks.0.mlp.fc")

    @property
    def scaling(self) -> float:
        """alpha / r: what the adapter's output is multiplied by (0 when LoRA is off)."""
        return self.alpha / self.r if self.r else 0.0

    @staticmethod
    def spec_overrides(spec: str) -> dict[str, str]:
        """The command-line form as settings: `key=value` items separated by commas; an item without
        "=" continues the previous key's list. Only the keys given (so a recipe's other LoRA settings stay).

        >>> LoraConfig.spec_overrides("r=8,alpha=16,targets=attn,mlp")
        {'r': '8', 'alpha': '16', 'targets': 'attn,mlp'}
        """
        values: dict[str, list[str]] = {}
        key = None
        for item in spec.split(","):
            if "=" in item:
                key, _, value = item.partition("=")
                key = key.strip().replace("-", "_")
                if not key:
                    raise ConfigError(f"--lora {spec!r}: {item!r} has no name before '='; write key=value, "
                                      f"e.g. {SPEC_EXAMPLE}")
                if key in values:
                    raise ConfigError(f"--lora {spec!r}: {key} is given twice; give each setting once")
                values[key] = [value.strip()]
            elif key is None:
                raise ConfigError(f"--lora {spec!r}: {item!r} is not key=value; write e.g. {SPEC_EXAMPLE}")
            else:
                values[key].append(item.strip())
        out: dict[str, str] = {}
        for k, items in values.items():
            if k != "targets" and len(items) > 1:
                raise ConfigError(f"--lora {spec!r}: {k} takes one value, got {','.join(items)}; "
                                  f"only targets is a list")
            if any(not v for v in items):
                raise ConfigError(f"--lora {spec!r}: {k} has an empty value; write e.g. {SPEC_EXAMPLE}")
            out[k] = ",".join(items)
        return out

    @classmethod
    def from_spec(cls, spec: str) -> LoraConfig:
        """A LoraConfig from the command-line form (`spec_overrides`), the other settings their defaults.

        >>> LoraConfig.from_spec("r=8,alpha=16,targets=attn,mlp")
        LoraConfig(r=8, alpha=16.0, dropout=0.0, targets=('attn', 'mlp'))
        """
        return cls.from_dict(cls.spec_overrides(spec), prefix="lora.")
