"""Finding and loading a model: damaged checkpoints are skipped with a warning, and when every one
is bad ONE error names each file tried and its fault; a runs folder, a file or an empty folder
passed as the model says what to pass instead."""

import warnings

import pytest
import torch
from ckpt_helpers import make_run

from scratchllm.checkpoint import LATEST, CheckpointError, find_checkpoints, load_model, resolve_checkpoint
from scratchllm.cli import main
from scratchllm.errors import UserError


def test_load_model_round_trip_with_meta(tmp_path):
    run = tmp_path / "r"
    models = make_run(run)
    model, tok, meta = load_model(run)
    assert meta["step"] == 4 and meta["tokens"] == 40 and meta["checkpoint"] == str(run / "checkpoints/step-0000004")
    assert "files" in meta and not model.training and tok.decode(tok.encode("to be")) == "to be"
    x = torch.randint(0, model.config.vocab_size, (1, 8))
    torch.testing.assert_close(model(x), models[4](x), rtol=0, atol=0)
    assert resolve_checkpoint(run) == run / "checkpoints" / "step-0000004"
    assert resolve_checkpoint(run / "checkpoints" / "step-0000002") == run / "checkpoints" / "step-0000002"


def test_a_damaged_latest_falls_back_with_a_warning(tmp_path):
    run = tmp_path / "r"
    models = make_run(run)
    bad = run / "checkpoints" / "step-0000004" / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.warns(UserWarning, match=f"{bad}.*truncated.*using the previous good checkpoint"):
        model, _, meta = load_model(run)
    assert meta["step"] == 2
    x = torch.randint(0, model.config.vocab_size, (1, 8))
    torch.testing.assert_close(model(x), models[2](x), rtol=0, atol=0)


def test_every_checkpoint_bad_is_one_message_naming_each(tmp_path, capsys):
    run = tmp_path / "r"
    make_run(run, steps=(2, 4, 6))
    truncated = run / "checkpoints" / "step-0000006" / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:100])
    missing = run / "checkpoints" / "step-0000004" / "config.json"
    missing.unlink()
    edited = run / "checkpoints" / "step-0000002" / "state.json"
    edited.write_text('{"step": "abc"}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning per file: one error says it all
        with pytest.raises(CheckpointError) as e:
            load_model(run)
    msg = str(e.value)
    assert msg.startswith(f"no good checkpoint in {run / 'checkpoints'}: none of the 3 tried")
    assert f"(1) checkpoint file {truncated} is truncated" in msg
    assert f"(2) checkpoint file {missing} is missing" in msg
    assert f"(3) checkpoint file {edited}: field 'step'" in msg
    assert "\n" not in msg
    assert main(["generate", "-m", str(run), "to", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no good checkpoint") and err.count("\n") == 1
    assert all(str(p) in err for p in (truncated, missing, edited))


def test_a_runs_folder_is_named_as_such(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs / "shakespeare")
    make_run(runs / "verdict")
    (runs / LATEST).write_text("verdict\n")
    first, second = runs / "shakespeare", runs / "verdict"
    with pytest.raises(UserError, match=rf"{runs} is a runs folder, not a run: pass one of the runs in it \(here: "
                                        rf"{first}, {second}\), e.g. -m {first}"):
        load_model(runs)
    assert main(["generate", "-m", str(runs), "to", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {runs} is a runs folder") and err.count("\n") == 1 and "state.json" not in err
    empty_runs = tmp_path / "empty-runs"
    empty_runs.mkdir()
    (empty_runs / LATEST).write_text("nothing-yet\n")
    with pytest.raises(UserError, match=rf"is a runs folder, not a run: pass one of the runs in it, e.g. -m "
                                        rf"{empty_runs / '<name>'}"):
        load_model(empty_runs)


def test_the_latest_pointers_stand_for_what_they_name(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs / "shakespeare")
    make_run(runs / "verdict")
    (runs / LATEST).write_text("shakespeare\n")  # runs/latest names a run; runs/X/latest names a step
    assert resolve_checkpoint(runs / LATEST) == runs / "shakespeare" / "checkpoints" / "step-0000004"
    assert resolve_checkpoint(runs / "verdict" / LATEST) == runs / "verdict" / "checkpoints" / "step-0000004"


def test_a_file_an_empty_folder_and_a_run_without_checkpoints(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match="f.txt is a file, not a folder; pass a run folder"):
        find_checkpoints(tmp_path / "f.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty holds no checkpoint"):
        find_checkpoints(tmp_path / "empty")
    (tmp_path / "fresh" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="run folder .*fresh holds no checkpoint yet"):
        find_checkpoints(tmp_path / "fresh")
    with pytest.raises(UserError, match="does not exist"):
        find_checkpoints(tmp_path / "nope")
    (tmp_path / "gutted").mkdir()  # a run whose checkpoints/ was deleted: its pointer says so
    (tmp_path / "gutted" / LATEST).write_text("step-0000003\n")
    with pytest.raises(CheckpointError, match="gutted/latest names step-0000003, which is not a checkpoint folder"):
        find_checkpoints(tmp_path / "gutted")


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_a_model_given_the_files_tensors_saves_the_same_file_and_trains(tied, tmp_path):
    """load_model gives a plain checkpoint's model the file's own (memory-mapped, copy-on-write) tensors: saved
    again it writes the same bytes; training it changes the model, never the file; it loads again after."""
    import hashlib

    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.config.model import ModelConfig
    from scratchllm.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, context_length=16, n_layer=2, n_head=2, n_embd=32, tie_weights=tied))
    first = save_checkpoint(tmp_path / "a", model)
    sha = hashlib.sha256((first / "model.safetensors").read_bytes()).hexdigest()
    loaded, _, _ = load_model(first)
    assert (loaded.lm_head.weight is loaded.tok_emb.weight) == tied
    again = save_checkpoint(tmp_path / "b", loaded)
    assert (again / "model.safetensors").read_bytes() == (first / "model.safetensors").read_bytes()
    loaded.train()
    opt = torch.optim.AdamW(loaded.parameters(), lr=1e-2)
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    _, loss = loaded(x[:, :-1], x[:, 1:])
    loss.backward()
    opt.step()
    assert not torch.equal(loaded.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    assert hashlib.sha256((first / "model.safetensors").read_bytes()).hexdigest() == sha
    reread, _, _ = load_model(first)
    assert all(torch.equal(a, b) for a, b in zip(reread.state_dict().values(), model.state_dict().values()))


def test_a_bf16_checkpoint_loads_as_the_models_fp32(tmp_path):
    """A file's tensors of another dtype become the model's, as copying them into a built model did."""
    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.config.model import ModelConfig
    from scratchllm.model import GPT

    model = GPT(ModelConfig(vocab_size=64, context_length=16, n_layer=1, n_head=2, n_embd=32)).to(torch.bfloat16)
    loaded, _, _ = load_model(save_checkpoint(tmp_path / "a", model))
    assert {t.dtype for t in loaded.state_dict().values()} == {torch.float32}
    assert all(torch.equal(a.float(), b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
