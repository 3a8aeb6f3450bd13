"""Typed configuration: dataclasses validated in `__post_init__`, loadable from TOML, overridable by flags.

No torch here. Each concept keeps its dataclass in its own module (model, sample, data, train);
`base` holds the shared machinery (TOML loading, `--key value` overrides, field checks).
"""

from scratchllm.config.base import Config, load_toml, parse_overrides
from scratchllm.config.model import PRESETS, ModelConfig
from scratchllm.config.sample import SampleConfig

__all__ = ["Config", "ModelConfig", "PRESETS", "SampleConfig", "load_toml", "parse_overrides"]
