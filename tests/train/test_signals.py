"""SIGTERM (what timeout, Docker, Slurm and systemd send) is treated like Ctrl-C: the training process
finishes its step, saves a checkpoint and exits; the run then resumes exactly."""

import signal

import pytest
from test_resume import STEPS, losses, start, wait_for_step
from tiny_run import run_tiny

from scratchllm.train.checkpoint import Checkpoints, verify_checkpoint
from scratchllm.train.logging import read_metrics


def test_sigterm_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    assert run_tiny(str(tmp_path / "ref"), STEPS) == "max_steps"
    expected = losses(tmp_path / "ref")

    run = tmp_path / "r"
    proc = start(run, "--sleep", "0.05")
    wait_for_step(run, proc, 3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "stopped: terminated" in out and "terminated: finishing this step" in out + err
    state = verify_checkpoint(Checkpoints(run).latest)
    last_logged = max(r["step"] for r in read_metrics(run / "metrics.jsonl"))
    assert state["step"] == last_logged < STEPS  # the step it was on is saved, no work lost

    resumed = start(run, "--resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "resumed from" in out + err
    assert losses(run) == expected  # every step's loss, bit for bit


INT, TERM = signal.SIGINT, signal.SIGTERM


@pytest.mark.parametrize("first, second, code", [(TERM, TERM, 143), (INT, TERM, 143), (TERM, INT, 130),
                                                 (INT, INT, 130)])
def test_a_second_signal_aborts_with_its_own_exit_code(first, second, code):
    """The first signal asks the loop to finish its step and save; a second aborts at once, as
    `errors.Aborted` (a KeyboardInterrupt) naming that signal, so the exit code follows it."""
    from scratchllm.errors import Aborted
    from scratchllm.train.loop import StopSignals

    signals = StopSignals()
    signals._handle(first, None)
    assert signals.reason == {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}[first]
    with pytest.raises(Aborted) as caught:
        signals._handle(second, None)
    assert isinstance(caught.value, KeyboardInterrupt)
    assert caught.value.signum == second and caught.value.exit_code == code
