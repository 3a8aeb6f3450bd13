"""Exact resume with real processes: SIGKILL at a random moment, then --resume, gives the same losses
bit for bit as an uninterrupted run; SIGINT saves a checkpoint and exits cleanly."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tiny_run import run_tiny

from scratchllm.checkpoint import verify_checkpoint
from scratchllm.train.checkpoint import Checkpoints
from scratchllm.train.logging import read_metrics

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
