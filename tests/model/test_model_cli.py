"""`scratchllm model info` and `scratchllm model presets`: output, JSON, and one-line errors with exit 2."""

import json

import pytest

from scratchllm.cli import main
from scratchllm.config.model import ModelConfig
from scratchllm.model import info


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_info_preset_table(capsys):
    rc, out, err = run(capsys, "model", "info", "gpt2-small")
    assert rc == 0 and not err
    assert "124,439,808" in out and "36.00 KiB" in out  # params; bf16 KV cache per token


def test_info_json_with_overrides(capsys):
    rc, out, _ = run(capsys, "model", "info", "gpt2-small", "--n_layer", "6", "--position=rope", "--json",
                     "--seq-len", "256")
    assert rc == 0
    s = json.loads(out)
    config = ModelConfig.preset("gpt2-small", n_layer=6, position="rope")
    assert s["params_total"] == info.num_params(config)
    assert s["config"]["n_layer"] == 6 and s["seq_len"] == 256
    assert s["train_flops_per_token"] == info.train_flops_per_token(config, 256)


def test_info_from_config_file(capsys, tmp_path):
    flat = tmp_path / "model.toml"
    flat.write_text('n_layer = 3\nn_head = 2\nn_embd = 64\nvocab_size = 1000\ncontext_length = 128\n')
    nested = tmp_path / "train.toml"
    nested.write_text('[model]\nn_layer = 3\nn_head = 2\nn_embd = 64\nvocab_size = 1000\ncontext_length = 128\n'
                      '[train]\nlr = 0.001\n')
    expected = info.num_params(ModelConfig(n_layer=3, n_head=2, n_embd=64, vocab_size=1000, context_length=128))
    for path in (flat, nested):
        rc, out, _ = run(capsys, "model", "info", "--config", str(path), "--json")
        assert rc == 0 and json.loads(out)["params_total"] == expected


def test_presets(capsys):
    rc, out, _ = run(capsys, "model", "presets")
    assert rc == 0
    assert "gpt2-xl" in out and "1.56G" in out and "mini-llama" in out
    rc, out, _ = run(capsys, "model", "presets", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["gpt2-medium"]["params"] == 354_823_168 and "gpt2" in rows["gpt2-small"]["aliases"]


@pytest.mark.parametrize("argv, field", [
    (["tiny", "--n_embd", "33"], "model.n_embd"),
    (["tiny", "--n_layer", "-1"], "model.n_layer"),
    (["tiny", "--n_head", "0"], "model.n_head"),
    (["tiny", "--position", "sideways"], "position"),
    (["tiny", "--n_kv_head", "3", "--n_head", "4"], "model.n_kv_head"),
    (["tiny", "--dropout", "1.5"], "model.dropout"),
    (["tiny", "--colour", "red"], "--colour"),
    (["nope"], "'nope'"),
    ([], "preset"),
    (["tiny", "--seq-len", "0"], "--seq-len"),
    (["--config", "/nonexistent/model.toml"], "/nonexistent/model.toml"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, field):
    rc, out, err = run(capsys, "model", "info", *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and field in lines[0], err
    assert "Traceback" not in err


def test_bad_toml_names_the_field(capsys, tmp_path):
    path = tmp_path / "m.toml"
    path.write_text("[model]\nn_layers = 4\n")
    rc, _, err = run(capsys, "model", "info", "--config", str(path))
    assert rc == 2 and "n_layers" in err and len(err.strip().splitlines()) == 1
