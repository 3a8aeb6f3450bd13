"""Exact resume with real processes: SIGKILL at a random moment, then --resume, gives the same losses
bit for bit as an uninterrupted run; SIGINT saves a checkpoint and exits cleanly. One writer per run
folder: a second process gets the holder's pid (--resume) or the next name (a fresh run), two runs
started together get two folders, and a run that failed before its first checkpoint frees its name."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import run_tiny
from train_helpers import train_cli

from scratchllm.checkpoint import verify_checkpoint
from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT
from scratchllm.train.checkpoint import Checkpoints
from scratchllm.train.lock import RunBusy, RunLock
from scratchllm.train.logging import read_metrics
from scratchllm.train.run import Run

SCRIPT = Path(__file__).with_name("tiny_run.py")
STEPS = 30


def start(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), "--steps", str(STEPS), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 60) -> None:
    """Wait until the run's latest checkpoint is at `step` or later."""
    t = time.time()
    while time.time() - t < timeout:
        latest = Checkpoints(run_dir).latest
        if latest is not None and int(latest.name.split("-")[1]) >= step:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.005)
    raise AssertionError(f"no checkpoint at step {step} after {timeout} s")


def losses(run_dir: Path) -> dict[int, float]:
    recs = read_metrics(run_dir / "metrics.jsonl")
    steps = [r["step"] for r in recs if "loss" in r]
    assert steps == sorted(set(steps)), "metrics must read as one unbroken run"
    return {r["step"]: r["loss"] for r in recs if "loss" in r} | {
        -r["step"] - 1: r["val_loss"] for r in recs if "val_loss" in r}


def test_sigkill_at_a_random_moment_then_resume_is_bit_exact(tmp_path):
    assert run_tiny(str(tmp_path / "ref"), STEPS) == "max_steps"  # the uninterrupted run, in this process
    expected = losses(tmp_path / "ref")
    assert len([k for k in expected if k > 0]) == STEPS

    rng = random.Random(os.getpid())
    run = tmp_path / "killed"
    proc = start(run, "--sleep", "0.03")
    wait_for_step(run, proc, rng.choice([3, 6, 9, 12]))
    time.sleep(rng.uniform(0, 0.12))  # anywhere: mid-step, mid-save, mid-log
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = max(k for k in losses(run))
    assert killed_at < STEPS, "the run finished before it was killed; make it slower"

    resumed = start(run, "--resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "resumed from" in out + err
    assert losses(run) == expected  # every step's loss, bit for bit


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "r"
    proc = start(run, "--sleep", "0.05")
    wait_for_step(run, proc, 3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "stopped: interrupted" in out
    latest = Checkpoints(run).latest
    state = verify_checkpoint(latest)
    last_logged = max(r["step"] for r in read_metrics(run / "metrics.jsonl"))
    assert state["step"] == last_logged  # the step it was on when interrupted is saved, no work lost
    with RunLock.acquire(run):  # and the run folder's lock was released on the way out
        assert (run / ".lock").read_text().strip() == str(os.getpid())


# --- one run folder, one writer: the lock ------------------------------------------------------------------
HOLD = ("import sys, time; from scratchllm.train.lock import RunLock; RunLock.acquire(sys.argv[1]); "
        "print('locked', flush=True); time.sleep(120)")
CLI = "import sys; from scratchllm.cli import main; sys.exit(main(sys.argv[1:]))"


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds `folder`'s run lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_held_run_folder_names_the_holders_pid_and_is_freed_when_it_dies(tmp_path):
    run = tmp_path / "r"
    holder = hold_lock(run)
    try:
        with pytest.raises(RunBusy, match=f"run folder {run} is in use by another training run "
                                          f"\\(pid {holder.pid}\\)") as e:
            Run(run)
        assert e.value.pid == holder.pid
        assert [p.name for p in run.iterdir()] == [".lock"]  # nothing of ours was written
    finally:
        holder.kill()
        holder.wait()
    with Run(run) as r:  # SIGKILL released it: the kernel drops the lock with the process
        assert r.lock.fd is not None and (run / ".lock").read_text().strip() == str(os.getpid())
    assert (run / ".lock").read_text() == ""  # released: no stale pid left for the next reader


def test_resume_while_another_process_holds_the_run_is_one_line_with_its_pid(recipe, tmp_path, capsys):
    runs = tmp_path / "runs"
    Checkpoints(runs / "tiny").save(1, GPT(ModelConfig.preset("tiny", vocab_size=300, n_embd=32)))
    holder = hold_lock(runs / "tiny")
    try:
        assert train_cli(recipe, runs, "--resume") == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
        assert f"run folder {runs / 'tiny'} is in use by another training run (pid {holder.pid})" in err
        # a fresh run of the same name while it is held takes the next name
        assert train_cli(recipe, runs, "--max_steps", "2", "--eval_interval", "1") == 0
        out = capsys.readouterr().out
        assert f"{runs / 'tiny'} is in use by another run (pid {holder.pid}); this one is {runs / 'tiny-2'}" in out
        assert Checkpoints(runs / "tiny-2").latest.name == "step-0000002"
        assert not (runs / "tiny" / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_two_train_runs_started_together_get_two_folders(recipe, tmp_path):
    runs = tmp_path / "runs"
    assert train_cli(recipe, runs, "--name", "warm", "--max_steps", "1") == 0  # the data is prepared once
    argv = [sys.executable, "-c", CLI, "train", "--config", str(recipe), "--runs_dir", str(runs), "--quiet",
            "--max_steps", "4", "--eval_interval", "2", "--log_interval", "1", "--sample.max_new_tokens", "0"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith("tiny")) == ["tiny", "tiny-2"]
    for name in ("tiny", "tiny-2"):  # each folder holds exactly one run
        recs = read_metrics(runs / name / "metrics.jsonl")
        assert [r["step"] for r in recs if "val_loss" in r] == [0, 2, 4]
        assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4]
        assert Checkpoints(runs / name).latest.name == "step-0000004"


def test_a_run_that_failed_before_its_first_checkpoint_does_not_block_its_name(recipe, tmp_path, capsys):
    runs = tmp_path / "runs"
    failed = runs / "tiny"
    (failed / "checkpoints" / ".tmp-step-0000006-x").mkdir(parents=True)  # died mid-save of its first checkpoint
    (failed / "run_config.json").write_text("{}")
    (failed / "metrics.jsonl").write_text('{"step": 0, "val_loss": 9.9}\n{"step": 1, "loss": 9.8}\n')
    (failed / ".lock").write_text("999999\n")  # its lock file, no longer held by anyone
    assert train_cli(recipe, runs, "--max_steps", "2", "--eval_interval", "1") == 0
    assert "failed before its first checkpoint; starting over in it" in capsys.readouterr().out
    assert not (runs / "tiny-2").exists()
    recs = read_metrics(failed / "metrics.jsonl")
    assert [r["step"] for r in recs if "val_loss" in r] == [0, 1, 2] and 9.9 not in [r.get("val_loss") for r in recs]
    assert Checkpoints(failed).latest.name == "step-0000002"
    # a folder holding anything a run does not write is never reused
    (runs / "mine").mkdir()
    (runs / "mine" / "notes.txt").write_text("keep me")
    assert train_cli(recipe, runs, "--name", "mine", "--max_steps", "1") == 0
    assert (runs / "mine" / "notes.txt").read_text() == "keep me" and (runs / "mine-2" / "latest").is_file()


def test_a_run_that_fails_early_leaves_no_folder_and_no_lock(recipe, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert train_cli(recipe, runs, "--context_length", "100000") == 2
    assert not (runs / "tiny").exists()
    with RunLock.acquire(runs / "tiny") as folder:  # and nobody holds it
        assert folder == runs / "tiny"
