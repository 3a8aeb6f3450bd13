"""LoRA settings (stub: the full version lands with model/lora.py)."""

from __future__ import annotations

from dataclasses import dataclass

from scratchllm.config.base import Config


@dataclass
class LoraConfig(Config):
    # Rank of the adapters; 0: LoRA off (full finetuning).
    r: int = 0
    # Scaling alpha / r.
    alpha: float = 16.0
    # Dropout on the adapters' input.
    dropout: float = 0.0
    # Which linear layers get adapters.
    targets: tuple[str, ...] = ("attn", "mlp")

    @staticmethod
    def spec_overrides(spec: str) -> dict[str, str]:
        """`r=8,alpha=16,targets=attn,mlp` as setting overrides; items without "=" continue the
        previous key's list.

        >>> LoraConfig.spec_overrides("r=8,alpha=16,targets=attn,mlp")
        {'r': '8', 'alpha': '16', 'targets': 'attn,mlp'}
        """
        from scratchllm.errors import ConfigError

        out: dict[str, str] = {}
        key = None
        for item in spec.split(","):
            if "=" in item:
                key, value = item.split("=", 1)
                key = key.strip()
                out[key] = value.strip()
            elif key is not None and item.strip():
                out[key] += "," + item.strip()
            else:
                raise ConfigError(f"--lora {spec!r}: write key=value items, e.g. r=8,alpha=16,targets=attn,mlp")
        return out
