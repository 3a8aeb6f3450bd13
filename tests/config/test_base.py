import pytest

from scratchllm.config import ModelConfig, SampleConfig, parse_overrides
from scratchllm.errors import ConfigError


def test_overrides_from_flags_are_typed():
    c = ModelConfig().override(parse_overrides(["--n_layer", "2", "--position=rope", "--bias", "false"]))
    assert (c.n_layer, c.position, c.bias) == (2, "rope", False)


def test_toml_round_trip(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text('n_layer = 3\nn_head = 2\nn_embd = 64\nnorm = "rmsnorm"\n')
    c = ModelConfig.from_toml(p)
    assert (c.n_layer, c.norm) == (3, "rmsnorm")
    assert ModelConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(n_embd=100, n_head=12), "n_embd"),
        (dict(n_layer=-1), "n_layer"),
        (dict(n_head=12, n_kv_head=5), "n_kv_head"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_invalid_model_configs_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**kwargs)


def test_unknown_key_and_bad_literal():
    with pytest.raises(ConfigError, match="unknown setting"):
        ModelConfig.from_dict({"n_layers": 2})
    with pytest.raises(ConfigError, match="not one of"):
        ModelConfig.from_dict({"norm": "batchnorm"})
    with pytest.raises(ConfigError, match="unknown model preset"):
        ModelConfig.preset("gpt5")


@pytest.mark.parametrize("kwargs", [dict(top_p=0.0), dict(top_p=1.5), dict(temperature=-1), dict(top_k=0)])
def test_invalid_sampling(kwargs):
    with pytest.raises(ConfigError):
        SampleConfig(**kwargs)


def test_presets_have_gpt2_shapes():
    assert ModelConfig.preset("gpt2-medium").n_layer == 24
    assert ModelConfig.preset("gpt2-xl").n_embd == 1600
    assert ModelConfig.preset("gpt2").n_head == 12
