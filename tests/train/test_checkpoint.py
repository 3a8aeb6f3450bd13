import errno
import json
import re
import warnings

import pytest
import torch
from train_helpers import tiny_model, tiny_tokens

from scratchllm.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    checkpoints,
    latest_run,
    load_model,
    step_name,
    verify_checkpoint,
)
from scratchllm.config.train import TrainConfig
from scratchllm.data.datasets import EvalBatches, RandomWindowBatches
from scratchllm.errors import UserError
from scratchllm.tokenizer.char import CharTokenizer
from scratchllm.train import Checkpoints, Run, lm_loss, train
from scratchllm.train.checkpoint import optimizer_from_safe, optimizer_to_safe
from scratchllm.train.logging import read_metrics
from scratchllm.train.loop import batch_eval_fn
from scratchllm.train.optim import build_optimizer


def cfg(**kw):
    base = dict(lr=3e-3, warmup_steps=2, max_steps=12, batch_size=4, eval_interval=4, eval_batches=1,
                progress=False, peak_flops=1e9, precision="fp32", log_interval=1, keep_last=2)
    return TrainConfig(**{**base, **kw})


def run_tiny(run_dir, steps=12, **kw):
    tokens = tiny_tokens()
    model = tiny_model(dropout=0.1)
    run = Run(run_dir, keep_last=kw.pop("keep_last", 2), tokenizer=CharTokenizer.train("abc"))
    state = train(model, RandomWindowBatches(tokens[:5000], 4, 32, seed=1), lm_loss, cfg(max_steps=steps, **kw),
                  eval_fn=batch_eval_fn({"val": list(EvalBatches(tokens[5000:], 4, 32, 1))}), run=run)
    run.close()
    return model, state


def test_save_layout_keep_last_and_best(tmp_path):
    model, state = run_tiny(tmp_path / "r", steps=12)
    names = [p.name for p in checkpoints(tmp_path / "r")]
    ck = Checkpoints(tmp_path / "r")
    assert ck.latest.name == step_name(12)
    # keep the last 2 plus the best by validation loss
    assert names[:2] == [step_name(12), step_name(8)]
    assert ck.best.name in names and len(names) <= 3
    assert set(p.name for p in ck.latest.iterdir()) == {
        "model.safetensors", "config.json", "optimizer.safetensors", "state.json", "tokenizer.scratchllm.json"}
    meta = json.loads((ck.latest / "state.json").read_text())
    assert meta["step"] == 12 and meta["tokens"] == 12 * 4 * 32 and meta["data"]["batches_drawn"] == 12
    assert not list((tmp_path / "r" / "checkpoints").glob(".t*"))
    assert (tmp_path / "r" / "loss.png").stat().st_size > 1000
    # the best pointer names the lowest validation loss among evaluations that were saved
    vals = {r["step"]: r["val_loss"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "val_loss" in r}
    best_step = int(ck.best.name.split("-")[1])
    assert vals[best_step] == min(v for s, v in vals.items() if s > 0)


def test_best_is_kept_when_it_falls_out_of_the_last_k(tmp_path):
    folder = tmp_path / "r"
    ck = Checkpoints(folder, keep_last=1)
    m = tiny_model()
    ck.save(1, m, val_loss=1.0)
    ck.save(2, m, val_loss=2.0)
    ck.save(3, m, val_loss=3.0)
    assert [p.name for p in checkpoints(folder)] == [step_name(3), step_name(1)]
    assert ck.best.name == step_name(1) and ck.latest.name == step_name(3)


def test_load_model_round_trip_and_latest_run(tmp_path, monkeypatch):
    model, _ = run_tiny(tmp_path / "runs" / "demo", steps=4)
    (tmp_path / "runs" / "latest").write_text("demo\n")
    assert latest_run(tmp_path / "runs") == tmp_path / "runs" / "demo"
    loaded, tok, meta = load_model(latest_run(tmp_path / "runs"))
    assert meta["step"] == 4 and tok.decode(tok.encode("abc")) == "abc"
    x = torch.randint(0, 64, (2, 16))
    model.eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(UserError, match="no trained run"):
        latest_run(tmp_path / "nothing")


def test_optimizer_state_round_trips_through_safetensors():
    m = tiny_model()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)
    m(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))[1].backward()
    opt.step()
    tensors, meta = optimizer_to_safe(opt)
    meta = json.loads(json.dumps(meta))
    opt2 = torch.optim.AdamW(m.parameters(), lr=1e-3, fused=True)
    opt2.load_state_dict(optimizer_from_safe(tensors, meta))
    for a, b in zip(opt.state.values(), opt2.state.values()):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "state"])
def test_corrupted_latest_falls_back_to_previous_with_a_clear_message(tmp_path, damage):
    run_tiny(tmp_path / "r", steps=8, eval_interval=4)
    ck = Checkpoints(tmp_path / "r")
    latest = ck.latest
    target = latest / ("state.json" if damage == "state" else "model.safetensors")
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    elif damage == "delete":
        target.unlink()
    else:
        target.write_bytes(data[:20])
    m = tiny_model()
    opt = build_optimizer(m, cfg())
    with pytest.warns(UserWarning, match=str(target).replace("\\", "\\\\")):
        folder, state = ck.restore(m, opt)
    assert folder.name == step_name(4) and state["step"] == 4
    # load_model on that checkpoint folder alone names the file
    with pytest.raises(CheckpointError, match="checkpoint file .*(model.safetensors|state.json)"):
        load_model(latest)


def test_resume_from_a_corrupted_latest_continues_from_the_previous(tmp_path):
    run_tiny(tmp_path / "r", steps=8, eval_interval=4)
    latest = Checkpoints(tmp_path / "r").latest
    (latest / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="optimizer.safetensors"):
        _, state = run_tiny(tmp_path / "r", steps=12, eval_interval=4, resume=True)
    assert state.step == 12
    steps = [r["step"] for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 13))  # steps 5-8 were dropped and redone once
    redone = Checkpoints(tmp_path / "r").run_dir / "checkpoints" / step_name(8)
    if redone.exists():  # (it may have been pruned) the corrupted step-8 was replaced by a good one
        assert verify_checkpoint(redone)["step"] == 8


def test_full_disk_during_save_keeps_the_previous_latest(tmp_path, monkeypatch):
    import safetensors.torch as st

    folder = tmp_path / "r"
    ck = Checkpoints(folder)
    m = tiny_model()
    opt = torch.optim.AdamW(m.parameters())
    ck.save(1, m, optimizer=opt, val_loss=1.0)
    real_save_file = st.save_file

    def full_disk(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata)
        with open(filename, "r+b") as f:  # half the file made it to disk
            f.truncate(100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*step-0000001 is still the latest"):
        ck.save(2, m, optimizer=opt, val_loss=0.5)
    assert ck.latest.name == step_name(1) and ck.best.name == step_name(1)
    assert [p.name for p in checkpoints(folder)] == [step_name(1)]
    assert not [p for p in (folder / "checkpoints").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(st, "save_file", real_save_file)
    ck.save(2, m, optimizer=opt, val_loss=0.5)
    assert ck.latest.name == step_name(2)


def test_unwritable_run_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        Run(blocker / "run")


# --- restore: damaged, edited and mismatched checkpoints ------------------------------------------------
def damage(folder, how):
    """Damage one checkpoint as a crash, a bad disk or a hand edit would; returns the file and its fault."""
    if how == "truncated":
        p = folder / "model.safetensors"
        p.write_bytes(p.read_bytes()[:100])
        return p, "is truncated"
    if how == "missing":
        p = folder / "optimizer.safetensors"
        p.unlink()
        return p, "is missing"
    p = folder / "state.json"
    state = json.loads(p.read_text())
    field = {"step": "step", "rng-torch": "rng.torch", "rng-python": "rng.python", "tokens": "tokens",
             "data": "data", "optimizer": "optimizer.param_groups"}[how]
    if how == "step":
        state["step"] = "abc"
    elif how == "rng-torch":
        state["rng"]["torch"] = state["rng"]["torch"][:-8] + "!!!!!!!!"
    elif how == "rng-python":
        state["rng"]["python"][1] = state["rng"]["python"][1][:10]
    elif how == "tokens":
        state["tokens"] = -1
    elif how == "data":
        state["data"] = {"batches_drawn": "many"}
    else:
        state["optimizer"]["param_groups"] = "adam"
    p.write_text(json.dumps(state))
    return p, f"field '{field}'"


@pytest.mark.parametrize("how", ["step", "rng-torch", "rng-python", "tokens", "data", "optimizer"])
def test_edited_state_json_is_skipped_with_a_message_naming_file_and_field(tmp_path, how):
    run_tiny(tmp_path / "r", steps=8, eval_interval=4)
    ck = Checkpoints(tmp_path / "r")
    path, fault = damage(ck.latest, how)
    m = tiny_model()
    with pytest.warns(UserWarning, match=f"{path}: {fault}") as rec:
        folder, state = ck.restore(m, build_optimizer(m, cfg()))
    assert folder.name == step_name(4) and state["step"] == 4
    assert "edited or damaged" in str(rec[0].message)


@pytest.mark.parametrize("hows", [("truncated", "rng-torch"), ("missing", "step"), ("step", "truncated")])
def test_every_checkpoint_bad_is_one_message_naming_each_file(tmp_path, hows):
    run_tiny(tmp_path / "r", steps=8, eval_interval=4)
    ck = Checkpoints(tmp_path / "r")
    faults = [damage(folder, how) for folder, how in zip(ck.candidates(), hows)]
    assert len(faults) == 2
    m = tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one message, no warning per file
        with pytest.raises(CheckpointError) as e:
            ck.restore(m, build_optimizer(m, cfg()))
    msg = str(e.value)
    assert msg.startswith(f"no good checkpoint in {tmp_path / 'r' / 'checkpoints'}") and "\n" not in msg
    for i, (path, fault) in enumerate(faults, 1):
        assert f"({i}) checkpoint file {path}" in msg and fault in msg
    # the training loop's --resume says the same
    with pytest.raises(CheckpointError, match="no good checkpoint in") as e2:
        run_tiny(tmp_path / "r", steps=12, eval_interval=4, resume=True)
    assert str(e2.value) == msg


def test_resume_with_another_model_shape_says_the_shapes_differ(tmp_path):
    run_tiny(tmp_path / "r", steps=8, eval_interval=4)
    other = tiny_model(n_embd=48)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not a damaged checkpoint: no falling back
        with pytest.raises(CheckpointMismatch) as e:
            Checkpoints(tmp_path / "r").restore(other, build_optimizer(other, cfg()))
    msg = str(e.value)
    assert "shapes differ" in msg and "corrupt" not in msg and "damaged" not in msg
    assert re.search(r"the model shapes differ: \S+ has shape \[(\d+, )?32\] in the checkpoint \S+, "
                     r"\[(\d+, )?48\] in this model", msg), msg
    assert str(tmp_path / "r" / "checkpoints" / step_name(8) / "model.safetensors") in msg


def test_resume_with_other_optimizer_settings_is_a_mismatch(tmp_path):
    run_tiny(tmp_path / "r", steps=4, eval_interval=4)
    m = tiny_model()
    opt = torch.optim.SGD([p for p in m.parameters()][:3], lr=0.1)
    with pytest.raises(CheckpointMismatch, match="optimizer state in .* does not fit this model's parameters"):
        Checkpoints(tmp_path / "r").restore(m, opt)


def test_a_bad_latest_pointer_stops_resume_with_the_pointer_named(tmp_path):
    run_tiny(tmp_path / "r", steps=4, eval_interval=4)
    (tmp_path / "r" / "latest").write_text("../../../../etc\n")
    with pytest.raises(CheckpointError, match=f"pointer file {tmp_path / 'r' / 'latest'} holds '../../../../etc'"):
        run_tiny(tmp_path / "r", steps=8, eval_interval=4, resume=True)


def test_a_nan_validation_loss_is_never_the_best(tmp_path):
    ck = Checkpoints(tmp_path / "r", keep_last=5)
    m = tiny_model()
    ck.save(1, m, val_loss=float("nan"))
    assert ck.best is None and ck.latest.name == step_name(1)
    ck.save(2, m, val_loss=2.0)
    ck.save(3, m, val_loss=float("nan"))
    ck.save(4, m, val_loss=3.0)
    assert ck.best.name == step_name(2) and ck.latest.name == step_name(4)
