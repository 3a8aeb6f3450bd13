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


# --- a checkpoint's stored bytes, scheme and sparsity ---------------------------------------------------------
@pytest.mark.parametrize("bits, group", [(8, None), (4, 16)])
def test_info_of_a_quantized_checkpoint_shows_its_bytes_and_scheme(capsys, tmp_path, bits, group):
    import torch

    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.compress.quantize import QuantScheme, quantize_model
    from scratchllm.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, context_length=16, n_layer=2, n_head=2, n_embd=32))
    quantize_model(model, QuantScheme(bits, group))
    folder = save_checkpoint(tmp_path / "q", model)
    rc, out, err = run(capsys, "model", "info", str(folder), "--json")
    assert rc == 0 and not err
    s = json.loads(out)
    sd = model.state_dict()
    assert s["stored"]["total_bytes"] == sum(t.numel() * t.element_size() for t in sd.values())
    kind = "int8 weights" if bits == 8 else "int4 weights (2 per byte)"
    assert s["stored"]["by_kind"][kind] == sum(t.numel() for k, t in sd.items() if k.endswith("qweight"))
    assert s["stored"]["by_kind"]["quantization scales"] == sum(t.numel() * 4 for k, t in sd.items()
                                                                if k.endswith("scales"))
    assert s["quantization"]["bits"] == bits and s["quantization"]["group_size"] == group
    rc, out, _ = run(capsys, "model", "info", str(folder))
    assert rc == 0 and ("int8, one scale per output channel, symmetric" if bits == 8 else
                        "int4, groups of 16, symmetric") in out
    assert "of fp32's" in out


def test_info_of_a_pruned_run_shows_its_sparsity(capsys, tmp_path):
    import torch

    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.model import GPT

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "dense", GPT(ModelConfig(vocab_size=64, context_length=16, n_layer=2, n_head=2,
                                                         n_embd=32)))
    assert main(["prune", str(tmp_path / "dense"), "--sparsity", "0.25", "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    rc, out, _ = run(capsys, "model", "info", str(tmp_path / "p"), "--json")
    p = json.loads(out)["pruning"]
    masked = 2 * (32 * 96 + 32 * 32 + 32 * 128 * 2)  # qkv, proj, fc, mlp proj in two blocks
    assert p["measured"]["masked_weights"] == masked
    assert p["measured"]["pruned_weights"] == sum(round(0.25 * n) for n in (32 * 96, 32 * 32, 32 * 128, 32 * 128)) * 2
    assert p["scope"] == "layer" and p["sparsity"] == 0.25
    rc, out, _ = run(capsys, "model", "info", str(tmp_path / "p"))
    assert "unstructured magnitude, layer scope, sparsity 0.25; 25.0% of the masked weights zero" in out
    rc, out, err = run(capsys, "model", "info", str(tmp_path / "p"), "--n_layer", "3")
    assert rc == 2 and err.count("error:") == 1 and "has its own config" in err
