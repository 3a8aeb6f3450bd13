import math

import pytest
import torch
from train_helpers import ListBatches, tiny_model, tiny_tokens

from scratchllm.config.train import TrainConfig
from scratchllm.data.datasets import EvalBatches, RandomWindowBatches
from scratchllm.train import TrainingDiverged, lm_loss, train
from scratchllm.train.loop import batch_eval_fn, count_tokens, model_flops_per_token


def quick(**kw) -> TrainConfig:
    base = dict(lr=3e-3, warmup_steps=2, max_steps=30, batch_size=4, eval_interval=1000, progress=False,
                peak_flops=1e9, precision="fp32", log_interval=1)
    return TrainConfig(**{**base, **kw})


def test_training_reduces_loss_and_evaluates():
    tokens = tiny_tokens()
    model = tiny_model()
    eval_fn = batch_eval_fn({"val": list(EvalBatches(tokens[5000:], 4, 32, 2))})
    seen = []
    state = train(model, RandomWindowBatches(tokens[:5000], 4, 32, seed=0), lm_loss, quick(max_steps=60),
                  eval_fn=eval_fn, hooks=[lambda e, s, info: seen.append((e, info))])
    first, last = state.history[0], state.history[-1]
    assert first["step"] == 0 and last["step"] == 60
    assert last["val_loss"] < first["val_loss"] - 0.5
    assert last["val_ppl"] == pytest.approx(math.exp(last["val_loss"]))
    assert state.tokens == 60 * 4 * 32 and state.stop_reason == "max_steps"
    logs = [info for e, info in seen if e == "log"]
    assert len(logs) == 60 and all(r["tok_s"] > 0 and r["mfu"] > 0 for r in logs)
    assert [e for e, _ in seen][0] == "start" and seen[-1][0] == "end"


def test_gradient_accumulation_equals_larger_batch():
    tokens = tiny_tokens()
    big = [next(RandomWindowBatches(tokens, 8, 32, seed=s)) for s in range(3)]
    small = [(x[i:i + 4], y[i:i + 4]) for x, y in big for i in (0, 4)]
    a, b = tiny_model(), tiny_model()
    train(a, ListBatches(big), lm_loss, quick(max_steps=3, optimizer="sgd", grad_clip=0))
    train(b, ListBatches(small), lm_loss, quick(max_steps=3, optimizer="sgd", grad_clip=0, grad_accum=2))
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_gradient_clipping_bounds_the_norm():
    tokens = tiny_tokens()
    norms = []
    model = tiny_model()
    train(model, RandomWindowBatches(tokens, 4, 32, seed=0), lm_loss, quick(max_steps=3, grad_clip=1e-3),
          hooks=[lambda e, s, info: norms.append(info.get("grad_norm")) if e == "log" else None])
    # the hook sees the norm before clipping; after clipping the update used norm <= 1e-3
    assert all(n > 1e-3 for n in norms)
    # clipping to a tiny norm with SGD moves the weights by at most lr * clip per step
    m2, ref = tiny_model(), tiny_model()
    train(m2, RandomWindowBatches(tokens, 4, 32, seed=0), lm_loss,
          quick(max_steps=1, optimizer="sgd", grad_clip=1e-3, warmup_steps=0, lr=1.0, schedule="constant",
                weight_decay=0.0))
    with torch.no_grad():
        delta = torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(m2.parameters(), ref.parameters())))
    assert float(delta) == pytest.approx(1e-3, rel=1e-3)


def test_bf16_autocast_trains_with_fp32_master_weights():
    tokens = tiny_tokens()
    model = tiny_model()
    state = train(model, RandomWindowBatches(tokens, 4, 32, seed=0), lm_loss, quick(max_steps=5, precision="bf16"),
                  eval_fn=batch_eval_fn({"val": list(EvalBatches(tokens, 4, 32, 1))}))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert math.isfinite(state.history[-1]["val_loss"])


def test_nan_loss_stops_with_a_clear_message():
    tokens = tiny_tokens()
    calls = []

    def loss_fn(m, batch):  # the third step's loss is NaN
        calls.append(1)
        loss = lm_loss(m, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    with pytest.raises(TrainingDiverged, match=r"loss became nan at step 3.*Lower train.lr"):
        train(tiny_model(), RandomWindowBatches(tokens, 4, 32, seed=0), loss_fn, quick(max_steps=10))


def test_time_budget_and_exhausted_data_stop_the_loop():
    tokens = tiny_tokens()
    state = train(tiny_model(), RandomWindowBatches(tokens, 4, 32, seed=0), lm_loss,
                  quick(max_steps=10**6, max_seconds=1.0))
    assert state.stop_reason == "max_seconds" and 0 < state.step < 10**6
    batches = [next(RandomWindowBatches(tokens, 4, 32, seed=s)) for s in range(4)]
    state = train(tiny_model(), ListBatches(batches), lm_loss, quick(max_steps=100))
    assert state.stop_reason == "data" and state.step == 4


def test_a_schedule_over_seconds_decays_with_the_clock():
    seen = []
    state = train(tiny_model(), RandomWindowBatches(tiny_tokens(), 4, 32, seed=0), lm_loss,
                  quick(max_steps=10**6, max_seconds=1.0, decay_over="seconds", warmup_steps=0, schedule="linear",
                        lr=1e-3, min_lr=0.0),
                  hooks=[lambda e, s, info: seen.append((info["lr"], info["elapsed"])) if e == "log" else None])
    assert state.stop_reason == "max_seconds" and len(seen) > 2
    lrs = [lr for lr, _ in seen]
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and 0 < lrs[-1] < lrs[0] <= 1e-3
    # each step's rate is the budget left when it began: at most what is left when it is logged
    assert all(lr >= 1e-3 * (1 - elapsed) - 1e-12 for lr, elapsed in seen)


def test_dropout_run_is_deterministic_for_a_seed():
    tokens = tiny_tokens()
    losses = []
    for _ in range(2):
        rec = []
        train(tiny_model(dropout=0.1), RandomWindowBatches(tokens, 4, 32, seed=0), lm_loss, quick(max_steps=5),
              hooks=[lambda e, s, info, rec=rec: rec.append(info["loss"]) if e == "log" else None])
        losses.append(rec)
    assert losses[0] == losses[1]


def test_helpers():
    assert count_tokens({"input_ids": torch.zeros(2, 5)}) == 10
    m = tiny_model()
    n = sum(p.numel() for p in m.parameters()) - m.pos_emb.weight.numel()  # tied: the token table is the head
    assert model_flops_per_token(m, 32) == 6 * n + 12 * 2 * 32 * 32
    assert model_flops_per_token(torch.nn.Linear(4, 4), 32) is None  # not a GPT: FLOPs unknown, no MFU logged


def test_chunked_loss_equals_the_plain_loss_and_its_gradients():
    from scratchllm.train.losses import chunked_lm_loss

    tokens = tiny_tokens()
    x, y = next(RandomWindowBatches(tokens, 4, 32, seed=0))
    y[0, :5] = -100  # ignored positions count in neither
    a, b = tiny_model(), tiny_model()
    la, lb = lm_loss(a, (x, y)), chunked_lm_loss(b, (x, y), chunk_tokens=24)
    la.backward()
    lb.backward()
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_freed_memory_is_kept_unless_activations_are_checkpointed(monkeypatch, checkpointing):
    """The pretraining job makes the process-wide settings (train.pretrain.configure_process)."""
    import scratchllm.runtime as runtime
    from scratchllm.config.train import RunConfig
    from scratchllm.train.pretrain import configure_process

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    run = RunConfig.from_dict({"model": {"gradient_checkpointing": checkpointing}, "train": {"device": "cpu"}})
    configure_process(run)
    assert calls == ([] if checkpointing else [1])
    configure_process(run.override({"train.keep_freed_memory": "false"}))
    assert calls == ([] if checkpointing else [1])  # switched off: never called


def test_train_sets_nothing_process_wide(monkeypatch):
    """A library caller keeps its threads, allocator and RNG states; the run is still seeded by config.seed."""
    import random

    import scratchllm.runtime as runtime

    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append("malloc") or True)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append("threads"))
    monkeypatch.setattr(torch, "set_float32_matmul_precision", lambda p: calls.append("tf32"))
    losses = []
    for caller_seed in (1, 2):
        model, rec = tiny_model(dropout=0.1), []
        torch.manual_seed(caller_seed)  # whatever the caller's RNG holds, config.seed decides the dropout masks
        random.seed(caller_seed)
        before_torch, before_py = torch.get_rng_state(), random.getstate()
        train(model, RandomWindowBatches(tiny_tokens(), 4, 32, seed=0), lm_loss, quick(max_steps=3, threads=1),
              hooks=[lambda e, s, info, rec=rec: rec.append(info["loss"]) if e == "log" else None])
        assert torch.equal(torch.get_rng_state(), before_torch) and random.getstate() == before_py
        losses.append(rec)
    assert calls == []
    assert losses[0] == losses[1] and len(losses[0]) == 3


def test_tensorboard_gets_the_logged_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from scratchllm.train.run import Run

    tokens = tiny_tokens()
    run = Run(tmp_path / "run", tensorboard=True)
    eval_fn = batch_eval_fn({"val": list(EvalBatches(tokens[5000:], 4, 32, 2))})
    train(tiny_model(), RandomWindowBatches(tokens[:5000], 4, 32, seed=0), lm_loss,
          quick(max_steps=6, eval_interval=3), eval_fn=eval_fn, run=run)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss", "lr", "val_loss"} <= set(tags)
    assert [e.step for e in events.Scalars("loss")] == list(range(1, 7))
    assert [e.step for e in events.Scalars("val_loss")] == [0, 3, 6]
