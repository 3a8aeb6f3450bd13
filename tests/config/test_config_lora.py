"""LoraConfig: the --lora spec, the checks and their messages."""

import pytest

from scratchllm.config.lora import LoraConfig
from scratchllm.errors import ConfigError


def test_the_spec_of_the_command_line():
    c = LoraConfig.from_spec("r=8,alpha=16,targets=attn,mlp")
    assert c == LoraConfig(r=8, alpha=16.0, dropout=0.0, targets=("attn", "mlp"))
    assert c.scaling == 2.0
    c = LoraConfig.from_spec("targets=attn.qkv,blocks.1.mlp.fc,r=4,dropout=0.05")
    assert c.targets == ("attn.qkv", "blocks.1.mlp.fc") and c.r == 4 and c.dropout == 0.05
    assert LoraConfig.from_spec("r=4").targets == ("attn", "mlp")  # the default
    assert LoraConfig().r == 0 and LoraConfig().scaling == 0.0  # LoRA off


@pytest.mark.parametrize("spec, message", [
    ("", "'' is not key=value"),
    ("8", "'8' is not key=value"),
    ("r=8,16", "r takes one value, got 8,16"),
    ("r=8,r=4", "r is given twice"),
    ("=8", "has no name before '='"),
    ("r=", "r has an empty value"),
    ("rank=8", "unknown setting lora.rank"),
    ("r=eight", "lora.r: expected an integer"),
    ("r=-1", "lora r must be >= 0"),
    ("r=8,alpha=0", "lora alpha must be > 0"),
    ("r=8,alpha=inf", "lora.alpha must be a finite number"),
    ("r=8,dropout=1", "lora dropout must be in [0, 1)"),
    ("r=8,targets=attention", "lora target 'attention' is unknown; use attn, mlp, head, all"),
    ("r=8,targets=attn,", "targets has an empty value"),
])
def test_a_bad_spec_is_one_clear_error(spec, message):
    with pytest.raises(ConfigError) as e:
        LoraConfig.from_spec(spec)
    assert message in str(e.value)


def test_targets_may_not_be_empty():
    with pytest.raises(ConfigError, match="lora targets is empty"):
        LoraConfig(r=8, targets=())
