"""`scratchllm finetune dpo` end to end: the reference log-probabilities computed once, a run with
checkpoints and a report, exact resume, and on the book's preference data a rising validation margin."""

import json
import math
from pathlib import Path

import pytest
import torch

from scratchllm.checkpoint import load_model
from scratchllm.cli import main
from scratchllm.config.finetune import DPOConfig, book_train
from scratchllm.finetune import dpo
from scratchllm.finetune.dpo import collate, plan, sequence_logprobs
from scratchllm.interop.load import GENERATION_FILE, load_any
from scratchllm.model.lora import has_lora, merge_lora
from scratchllm.runtime import autocast
from scratchllm.train.loop import resolve_precision, run_eval


@pytest.fixture(scope="module")
def prefs(tmp_path_factory, shared_data):
    """The book's first 40 preference entries as a JSON file."""
    entries = json.loads((shared_data / "instruction-data-with-preference.json").read_text())[:40]
    path = tmp_path_factory.mktemp("prefs") / "prefs.json"
    path.write_text(json.dumps(entries))
    return path


def count_forwards(model):
    calls = []
    model.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_reference_logprobs_are_computed_once_before_training(base_model, prefs):
    model, tokenizer, meta = load_any(base_model)
    config = DPOConfig(init_from=str(base_model), data=str(prefs), train=book_train(batch_size=4, eval_batches=2))
    calls = count_forwards(model)
    p = plan(config, model, tokenizer, meta)
    n = sum(1 for e in json.loads(prefs.read_text()) if e["chosen"] != e["rejected"])
    sizes = [int(n * 0.85), int(n * 0.05), n - int(n * 0.85) - int(n * 0.05)]
    assert len(calls) == sum(math.ceil(s / 4) for s in sizes)  # one pass per batch of 4 pairs of each split
    refs = [x for _ in range(p.batches.batches_per_epoch) for x in next(p.batches)["ref_logps"].tolist()]
    assert len(refs) == 2 * 4 * p.batches.batches_per_epoch and all(math.isfinite(x) and x < 0 for x in refs)
    # each cached value is the source model's own log-probability of that response
    example = p.batches.examples[0]
    one = collate([example], pad_id=50256)
    with torch.no_grad():
        direct = sequence_logprobs(model, one["input_ids"], one["response_mask"])
    assert direct.tolist() == pytest.approx([example.ref_chosen, example.ref_rejected], rel=1e-3)
    calls.clear()
    loss = p.loss_fn(model, next(p.batches))
    assert len(calls) == 1  # a training step runs the policy once, never the reference
    assert loss.item() == pytest.approx(math.log(2), abs=1e-3)  # the policy is still the reference
    assert p.meta == {"kind": "dpo", "beta": 0.1, "template": "alpaca"}
    amp = autocast("cpu", resolve_precision(config.train.precision, "cpu"))
    first = run_eval(model, p.eval_fn, amp)  # as the loop runs it (bf16 where native, as the cache was)
    # evaluation cuts the splits as the cache did: before training the rewards are exactly 0
    assert first["val_reward_margin"] == first["train_reward_chosen"] == first["train_preference_accuracy"] == 0
    assert first["train_loss"] == pytest.approx(math.log(2), rel=1e-12)
    assert set(first) >= {f"{s}_{k}" for s in ("train", "val") for k in dpo.LOGGED}


def run_dpo(base_model, prefs, runs, *extra):
    return main(["finetune", "dpo", "--init-from", str(base_model), "--data", str(prefs), "--runs_dir", str(runs),
                 "--name", "run", "--train.epochs", "none", "--batch_size", "4", "--eval_interval", "5",
                 "--log_interval", "1", "--eval_batches", "2", "--lr", "1e-3", "--quiet", *extra])


def losses(folder: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_a_run_writes_checkpoints_and_a_report_and_resumes_exactly(base_model, prefs, tmp_path, monkeypatch):
    computed = []
    real = dpo.reference_logprobs
    monkeypatch.setattr(dpo, "reference_logprobs", lambda *a, **k: (computed.append(len(a[1])), real(*a, **k)))
    assert run_dpo(base_model, prefs, tmp_path / "a", "--max_steps", "10") == 0
    assert sum(computed) == 40 and len(computed) == 3  # once per run: each split's pairs (40, none equal)
    folder = tmp_path / "a" / "run"
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step-0000005", "step-0000010"]
    last = folder / "checkpoints" / "step-0000010"
    assert json.loads((last / GENERATION_FILE).read_text()) == {"eos_token_id": 50256, "prompt_template": "alpaca"}
    assert json.loads((last / "state.json").read_text())["task"] == {"kind": "dpo", "beta": 0.1, "template": "alpaca"}
    report = json.loads((folder / "report.json").read_text())
    assert set(report["test"]) == {"pairs", *dpo.LOGGED}
    # the reward margin is beta times how far the log-probability margin moved from the reference's
    moved = report["after"]["logp_margin"] - report["before"]["logp_margin"]
    assert report["test"]["reward_margin"] == pytest.approx(0.1 * moved, abs=1e-4)
    evals = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()
             if "val_reward_margin" in json.loads(line)]
    assert [e["step"] for e in evals] == [0, 5, 10]
    assert evals[-1]["train_loss"] < evals[0]["train_loss"]  # it learns the training pairs
    model, _, meta = load_any(folder)  # the finetuned run loads like any other
    assert meta["generation"]["eos_token_id"] == 50256

    # ten steps, then four more with --resume: the same losses as fourteen steps at once
    assert run_dpo(base_model, prefs, tmp_path / "b", "--max_steps", "14") == 0
    assert run_dpo(base_model, prefs, tmp_path / "a", "--max_steps", "14", "--resume") == 0
    straight, resumed = losses(tmp_path / "b" / "run"), losses(folder)
    assert sorted(resumed) == list(range(1, 15))
    assert [resumed[s] for s in range(11, 15)] == [straight[s] for s in range(11, 15)]


def test_on_the_books_preference_data_the_validation_margin_and_accuracy_rise(base_model, tmp_path, capsys):
    """A tiny random model is enough: DPO moves any start toward the chosen responses."""
    assert main(["finetune", "dpo", "--init-from", str(base_model), "--runs_dir", str(tmp_path), "--name", "run",
                 "--train.epochs", "none", "--max_steps", "30", "--eval_interval", "30", "--lr", "1e-3",
                 "--max_length", "96", "--quiet"]) == 0
    evals = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
             if "val_reward_margin" in r]
    before, after = evals[0], evals[-1]
    assert (before["step"], after["step"]) == (0, 30)
    assert after["val_reward_margin"] > before["val_reward_margin"] + 0.05
    assert after["val_preference_accuracy"] > before["val_preference_accuracy"] + 0.2
    assert after["val_loss"] < before["val_loss"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["test"]["pairs"] > 100 and report["test"]["reward_margin"] > 0
    assert report["after"]["logp_margin"] > report["before"]["logp_margin"]
    assert "alpaca-book-preference" in capsys.readouterr().out


def test_dpo_with_lora_trains_only_the_adapters(base_model, prefs, tmp_path):
    """LoRA wraps the policy after the reference is cached: the base weights stay the source's."""
    assert run_dpo(base_model, prefs, tmp_path, "--max_steps", "6", "--lora", "r=4,alpha=8,targets=attn,mlp") == 0
    source, _, _ = load_any(base_model)
    tuned, _, meta = load_model(tmp_path / "run", merge=False)
    assert meta["lora"]["r"] == 4 and has_lora(tuned)
    base = {n: p for n, p in tuned.named_parameters() if "lora_" not in n}
    assert all(torch.equal(p, dict(source.named_parameters())[n]) for n, p in base.items())
    merged = merge_lora(tuned)
    assert not torch.equal(merged.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["test"]["reward_margin"] != 0
