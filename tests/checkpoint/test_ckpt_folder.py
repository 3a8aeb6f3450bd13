"""One checkpoint folder: atomic layout with a manifest, every file and state.json field checked on
reading, and a model of another shape named as such (tensor and both shapes), never "corrupted"."""

import json

import pytest
import torch
from ckpt_helpers import TEXT, edit_state, tiny_model

from scratchllm.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    load_model,
    load_weights,
    read_state,
    save_checkpoint,
    verify_checkpoint,
)
from scratchllm.files import sha256_file
from scratchllm.tokenizer.char import CharTokenizer


def test_layout_manifest_and_extra_files(tmp_path):
    model = tiny_model()
    folder = tmp_path / "checkpoints" / "step-0000003"
    save_checkpoint(folder, model, state={"step": 3}, tokenizer=CharTokenizer.train(TEXT),
                    extra_files={"extra.bin": lambda p: p.write_bytes(b"12345")})
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors", "config.json", "tokenizer.scratchllm.json", "extra.bin", "state.json"}
    state = verify_checkpoint(folder)
    assert state["step"] == 3 and "rng" not in state  # RNG state is training's, not the format's
    assert set(state["files"]) == {"model.safetensors", "config.json", "tokenizer.scratchllm.json", "extra.bin"}
    assert state["files"]["extra.bin"] == {"size": 5, "sha256": sha256_file(folder / "extra.bin")}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    with pytest.raises(OSError):
        save_checkpoint(folder, model)  # never written over
    loaded = tiny_model(seed=1)
    load_weights(loaded, folder)
    x = torch.randint(0, model.config.vocab_size, (1, 8))
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_failed_writer_leaves_nothing(tmp_path):
    def fail(path):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path / "step-0000001", tiny_model(), extra_files={"x": fail})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fields, field", [
    ({"step": "abc"}, "'step'"),
    ({"step": -3}, "'step'"),
    ({"step": 2.5}, "'step'"),
    ({"val_loss": "low"}, "'val_loss'"),
    ({"files": ["model.safetensors"]}, "'files'"),
    ({"files": {"model.safetensors": {"size": "big", "sha256": "0" * 64}}}, "'files.model.safetensors.size'"),
    ({"files": {"model.safetensors": {"size": 1, "sha256": 7}}}, "'files.model.safetensors.sha256'"),
    ({"files": {"../../x": {"size": 1, "sha256": "0" * 64}}}, "'files.../../x'"),
    ({"files": {"config.json": "yes"}}, "'files.config.json'"),
])
def test_edited_state_fields_are_one_clear_error(tmp_path, capsys, fields, field):
    folder = tmp_path / "ck"
    save_checkpoint(folder, tiny_model(), state={"step": 1}, tokenizer=CharTokenizer.train(TEXT))
    path = edit_state(folder, **fields)
    for read in (read_state, verify_checkpoint, load_model):
        with pytest.raises(CheckpointError) as e:
            read(folder)
        msg = str(e.value)
        assert str(path) in msg and field in msg and "edited or damaged" in msg and "\n" not in msg
    from scratchllm.cli import main

    assert main(["generate", "-m", str(folder), "x", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and field in err and "Traceback" not in err


def test_state_that_is_not_an_object(tmp_path):
    folder = tmp_path / "ck"
    save_checkpoint(folder, tiny_model(), state={"step": 1})
    (folder / "state.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"state.json holds a JSON list, expected an object"):
        read_state(folder)


def test_other_shape_names_the_tensor_and_both_shapes(tmp_path):
    folder = tmp_path / "ck"
    save_checkpoint(folder, tiny_model(n_embd=32), state={"step": 1})
    with pytest.raises(CheckpointMismatch) as e:
        load_weights(tiny_model(n_embd=48), folder)
    msg = str(e.value)
    assert "shapes differ" in msg and "corrupt" not in msg
    assert "has shape [" in msg and "in the checkpoint" in msg and "in this model" in msg
    name = msg.split("shapes differ: ")[1].split(" has shape")[0]
    shapes = dict(tiny_model(n_embd=32).state_dict().items())
    assert name in shapes  # a real tensor name, e.g. transformer.wte.weight
    assert f"[{', '.join(map(str, shapes[name].shape))}] in the checkpoint" in msg
    assert f"[{', '.join(map(str, tiny_model(n_embd=48).state_dict()[name].shape))}] in this model" in msg


def test_another_layer_count_names_a_missing_or_extra_tensor(tmp_path):
    folder = tmp_path / "ck"
    save_checkpoint(folder, tiny_model(), state={"step": 1})
    n = tiny_model().config.n_layer
    with pytest.raises(CheckpointMismatch, match=rf"shapes differ.*tensors this model has are not in it \(first "
                                                 rf"blocks\.{n}\."):
        load_weights(tiny_model(n_layer=n + 1), folder)
    with pytest.raises(CheckpointMismatch, match=rf"shapes differ.*tensors in it are not in this model \(first "
                                                 rf"blocks\.{n - 1}\."):
        load_weights(tiny_model(n_layer=n - 1), folder)


def test_damaged_weights_header_is_not_a_shape_error(tmp_path):
    folder = tmp_path / "ck"
    save_checkpoint(folder, tiny_model())
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors is corrupted") as e:
        load_weights(tiny_model(), folder)
    assert not isinstance(e.value, CheckpointMismatch)


def test_config_of_the_wrong_shape_names_the_file(tmp_path):
    folder = tmp_path / "ck"
    save_checkpoint(folder, tiny_model(), state={"step": 1})
    (folder / "config.json").write_text(json.dumps({"n_layer": "many"}))
    (folder / "state.json").write_text(json.dumps({"step": 1}))  # no manifest: only the config is checked
    with pytest.raises(CheckpointError, match=r"config.json does not describe a model"):
        load_model(folder)

