"""`scratchllm train`: bad input is one line and exit code 2 with nothing written; the main job end to end
on a tiny config (a small local text file, a small BPE trained in-process); `load_model` on its run."""

import json
from pathlib import Path

import pytest
from train_helpers import train_cli

from scratchllm.checkpoint import latest_run, load_model, read_pointer
from scratchllm.cli import main
from scratchllm.config.train import RunConfig, recipes
from scratchllm.errors import ConfigError
from scratchllm.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def test_main_job_end_to_end_then_generate_finds_it(recipe, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train_cli(recipe, runs) == 0
    out = capsys.readouterr().out
    assert "sample before training" in out and "sample after training" in out
    run = latest_run(runs)
    assert run == runs / "tiny"
    for name in ("loss.png", "MODEL_CARD.md", "metrics.jsonl", "run_config.json", "latest", "best"):
        assert (run / name).is_file(), name
    card = (run / "MODEL_CARD.md").read_text()
    assert "the-verdict.txt" in card and "Not fit for" in card and "val_loss" in card and "bpe" in card
    evals = [r for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 6, 12]
    model, tok, meta = load_model(run)
    assert meta["step"] == 12 and tok.vocab_size == 300 and model.config.vocab_size == 300
    assert meta["run_config"]["train"]["max_steps"] == 12
    # a second run with the same name never overwrites the first
    assert train_cli(recipe, runs, "--max_steps", "2", "--eval_interval", "1") == 0
    assert latest_run(runs) == runs / "tiny-2" and (runs / "tiny" / "latest").read_text().strip() == "step-0000012"
    # --resume continues the named run to a new max_steps
    assert train_cli(recipe, runs, "--name", "tiny", "--resume", "--max_steps", "14") == 0
    assert json.loads((runs / "tiny" / "checkpoints" / "step-0000014" / "state.json").read_text())["step"] == 14


@pytest.mark.parametrize("flags, message", [
    (["--train.optimizer", "lion"], "train.optimizer 'lion' is unknown"),
    (["--schedule", "exp"], "train.schedule 'exp' is unknown"),
    (["--context_length", "100000"], "tokens; a window of 100000 tokens"),
    (["--data.dataset", "/nonexistent/corpus.txt"], "not found"),
    (["--batch_size", "100000", "--context_length", "512", "--n_embd", "512", "--n_head", "8"], "GiB available"),
    (["--no_such_setting", "1"], "unknown setting"),
    (["--resume", "--name", "never-ran"], "nothing to resume"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(recipe, tmp_path, capsys, flags, message):
    runs = tmp_path / "runs"
    assert train_cli(recipe, runs, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err and "Traceback" not in err
    assert not (runs / "tiny").exists() and not (runs / "never-ran").exists()


def test_unwritable_runs_dir_and_missing_recipe(recipe, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert train_cli(recipe, blocker / "runs") == 2
    assert "not writable" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_shipped_recipes_load_and_match_their_sources():
    char = RunConfig.load("configs/shakespeare-char.toml")
    assert (char.model.n_layer, char.model.n_head, char.model.n_embd, char.model.context_length) == (4, 4, 128, 64)
    assert (char.train.batch_size, char.train.max_steps, char.train.lr, char.train.final_lr) == (12, 2000, 1e-3, 1e-4)
    assert (char.train.beta2, char.train.warmup_steps, char.train.eval_batches) == (0.99, 100, 20)
    assert char.model.bias is False
    book = RunConfig.load("configs/verdict.toml")
    assert (book.model.n_layer, book.model.n_embd, book.model.context_length) == (12, 768, 256)
    assert book.model.qkv_bias is False
    assert (book.train.lr, book.train.weight_decay, book.train.batch_size, book.train.epochs) == (4e-4, 0.1, 2, 10)
    assert book.data.dataset == "the-verdict" and book.train.schedule == "constant"
    demo = RunConfig.load("configs/shakespeare-bpe.toml", overrides={"train.lr": "3e-4", "n_layer": "2"})
    assert demo.data.dataset == "shakespeare" and demo.train.lr == 3e-4 and demo.model.n_layer == 2
    with pytest.raises(ConfigError, match="unknown preset"):
        RunConfig.load(preset="nope")


@pytest.mark.parametrize("name", sorted(recipes()))
def test_a_preset_is_exactly_its_recipe(name):
    assert RunConfig.load(preset=name) == RunConfig.load(f"configs/{name}.toml")
    shipped = ROOT / "src" / "scratchllm" / "recipes" / f"{name}.toml"
    assert (ROOT / "configs" / f"{name}.toml").read_bytes() == shipped.read_bytes()


def test_a_recipe_can_name_a_preset_to_start_from(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text('preset = "shakespeare-char"\n[train]\nmax_steps = 10\n')
    run = RunConfig.load(p)
    assert run.name == "mine" and run.train.max_steps == 10
    assert run.model == RunConfig.load(preset="shakespeare-char").model


def test_bare_train_asks_for_a_recipe_and_lists_them(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: name a recipe") and "\n" not in err
    for name in recipes():
        assert name in err
    assert main(["train", "--list-presets"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == sorted(recipes())
    assert any("nanoGPT's character-level Shakespeare" in line for line in out)


@pytest.mark.parametrize("flag", ["--runs-dir", "--runs_dir"])
def test_both_spellings_of_runs_dir(flag, capsys):
    assert main(["train", "--preset", "verdict", flag, "elsewhere", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["runs_dir"] == "elsewhere"


def test_help_lists_every_setting_with_type_default_and_comment(capsys):
    import dataclasses

    from scratchllm.config.base import field_docs
    from scratchllm.config.train import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f"--train.{f.name} " in out, f.name
    assert "--train.lr FLOAT (default 0.0006)" in out and "--model.n_kv_head INT or none (default none)" in out
    assert " ".join(field_docs(TrainConfig)["lr"].split()) in " ".join(out.split())
    assert "--data.tokenizer.vocab_size INT or none (default none)" in out
    assert "--sample.max_new_tokens INT (default 200)" in out  # RunConfig's own sampling defaults
    from scratchllm.config.train import RunConfig

    for table in ("model", "data", "train", "sample"):  # each table's heading, then its comment
        doc = " ".join(field_docs(RunConfig)[table].split())
        assert f"[{table}] settings: {doc}" in " ".join(out.split()), table


def test_sigterm_exits_143_and_names_the_command_that_continues(recipe, tmp_path):
    """`timeout`, Docker and Slurm send SIGTERM: the run saves, exits 143 and prints the exact command
    (recipe, flags, runs folder, name) that continues it."""
    import shlex
    import signal
    import subprocess
    import sys
    import time

    runs = tmp_path / "my runs"
    cmd = [sys.executable, "-m", "scratchllm.cli", "train", "--config", str(recipe), "--runs_dir", str(runs),
           "--quiet", "--max_steps", "100000", "--eval_interval", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (runs / "tiny" / "latest").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in err, err
    line = next(ln for ln in out.splitlines() if ln.startswith("continue with: "))
    again = shlex.split(line[len("continue with: "):])
    assert again[:2] == ["scratchllm", "train"] and again[-1] == "--resume"
    assert again[again.index("--config") + 1] == str(recipe) and again[again.index("--runs_dir") + 1] == str(runs)
    assert again[again.index("--name") + 1] == "tiny" and "--max_steps" in again
    step = json.loads((read_pointer(runs / "tiny", "latest") / "state.json").read_text())["step"]
    assert main(again[1:] + ["--max_steps", str(step + 2)]) == 0  # the printed command continues the run
    assert json.loads((read_pointer(runs / "tiny", "latest") / "state.json").read_text())["step"] == step + 2

