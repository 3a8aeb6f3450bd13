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


def test_strings_are_taken_as_given(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('stop = ["\\n\\n", " User:"]\n')
    assert SampleConfig.from_toml(p).stop == ("\n\n", " User:")
    # from the command line, list items are separated by commas and kept whole, spaces included
    assert SampleConfig().override({"stop": "\n\n, User:"}).stop == ("\n\n", " User:")
    assert SampleConfig().override({"stop": ""}).stop == ()


@pytest.mark.parametrize("stop", [("",), ("\n", "")])
def test_an_empty_stop_string_is_an_error(stop):
    with pytest.raises(ConfigError, match="stop string is empty"):
        SampleConfig(stop=stop)


@pytest.mark.parametrize("cls, key", [(SampleConfig, "temperature"), (SampleConfig, "top_p"),
                                      (ModelConfig, "dropout"), (ModelConfig, "rope_base")])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_numbers_are_rejected(cls, key, value):
    with pytest.raises(ConfigError, match=f"{key} must be a finite number"):
        cls.from_dict({key: value})


def test_every_float_setting_rejects_inf():
    import dataclasses

    from scratchllm.config.data import DataConfig
    from scratchllm.config.train import TrainConfig

    for cls, prefix in ((TrainConfig, "train."), (DataConfig, "data."), (ModelConfig, "model."), (SampleConfig, "")):
        floats = [n for n, tp in cls.field_types().items() if "float" in str(tp)]
        assert floats, cls
        for name in floats:
            with pytest.raises(ConfigError, match=f"{prefix}{name} must be a finite number"):
                cls.from_dict({name: "inf"})
        assert dataclasses.is_dataclass(cls)


def test_field_docs_are_the_comments_above_each_field():
    from scratchllm.config.base import field_docs
    from scratchllm.config.train import TrainConfig

    docs = field_docs(TrainConfig)
    assert docs["lr"] == "Peak learning rate; 6e-4 is GPT-3 small's (and nanoGPT's default for 124M)."
    # a section ruler above a field is not part of its comment
    assert docs["optimizer"].startswith('"adamw" (Loshchilov')
    assert docs["schedule"].startswith('"cosine": linear warmup')
    assert field_docs(SampleConfig)["stop"].startswith("Stop strings:")


def test_every_config_field_has_a_comment():
    """Each default is explained where it is defined (the comment `--help` shows), in every config."""
    import dataclasses
    import importlib
    import pkgutil

    import scratchllm.config
    from scratchllm.config.base import Config, field_docs

    classes = []
    for info in pkgutil.iter_modules(scratchllm.config.__path__):
        module = importlib.import_module(f"scratchllm.config.{info.name}")
        classes += [c for c in vars(module).values() if isinstance(c, type) and issubclass(c, Config)
                    and dataclasses.is_dataclass(c) and c.__module__ == module.__name__]
    assert {"TrainConfig", "RunConfig", "ModelConfig", "SampleConfig"} <= {c.__name__ for c in classes}
    for cls in classes:
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{cls.__name__}: no comment above {', '.join(missing)}"


def test_config_file_that_is_binary_is_one_line(tmp_path):
    from scratchllm.config.base import load_toml

    p = tmp_path / "x.toml"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(ConfigError, match="is not TOML"):
        load_toml(p)
