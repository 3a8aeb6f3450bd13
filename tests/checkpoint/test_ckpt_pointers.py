"""The `latest`/`best` pointers name a checkpoint folder inside the run's checkpoints/, nothing else:
an edited pointer (a path out of the run, an absolute path, a missing target) is one clear error
naming the pointer file, for the reader of pointers, for `load_model` and for `scratchllm generate`."""

import os

import pytest
from ckpt_helpers import make_run

from scratchllm.checkpoint import (
    BEST,
    LATEST,
    CheckpointError,
    candidates,
    checkpoints,
    latest_run,
    load_model,
    read_pointer,
)
from scratchllm.cli import main

BAD_POINTERS = {
    "escape": "../../../../etc",
    "absolute": "/etc",
    "missing": "step-0000009",
    "not-a-step": "checkpoints",
    "empty": "",
    "two-names": "step-0000002\nstep-0000004",
}


@pytest.mark.parametrize("kind", sorted(BAD_POINTERS))
@pytest.mark.parametrize("pointer", [LATEST, BEST])
def test_a_pointer_names_a_checkpoint_inside_its_run(tmp_path, pointer, kind):
    run = tmp_path / "r"
    make_run(run)
    (run / pointer).write_text(BAD_POINTERS[kind] + "\n")
    with pytest.raises(CheckpointError) as e:
        read_pointer(run, pointer)
    msg = str(e.value)
    assert msg.startswith(f"pointer file {run / pointer} ") and "fix or delete it" in msg and "\n" not in msg


@pytest.mark.parametrize("kind", ["escape", "absolute", "missing"])
def test_load_model_and_generate_refuse_a_bad_latest(tmp_path, capsys, kind):
    run = tmp_path / "r"
    make_run(run)
    (run / LATEST).write_text(BAD_POINTERS[kind] + "\n")
    with pytest.raises(CheckpointError, match=f"pointer file {run / LATEST}"):
        load_model(run)
    assert main(["generate", "-m", str(run), "to", "--max-new-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: pointer file {run / LATEST}") and err.count("\n") == 1


def test_binary_and_symlinked_pointers(tmp_path):
    run = tmp_path / "r"
    make_run(run)
    (run / LATEST).write_bytes(b"\xff\xfe\x00step")
    with pytest.raises(CheckpointError, match="latest is not text"):
        read_pointer(run, LATEST)
    (run / LATEST).unlink()
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    os.symlink(tmp_path / "passwd", run / LATEST)  # a pointer that is a link: its text is still checked
    with pytest.raises(CheckpointError, match="not the name of a checkpoint folder"):
        read_pointer(run, LATEST)


def test_a_step_folder_that_links_out_of_the_run_is_refused(tmp_path):
    run = tmp_path / "r"
    make_run(run, steps=(2,))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.symlink(outside, run / "checkpoints" / "step-0000007")
    (run / LATEST).write_text("step-0000007\n")
    with pytest.raises(CheckpointError, match="names step-0000007, which is not a checkpoint folder in"):
        read_pointer(run, LATEST)
    assert [p.name for p in checkpoints(run)] == ["step-0000002"]  # and it is not listed


def test_candidates_latest_first_then_older(tmp_path):
    run = tmp_path / "r"
    make_run(run, steps=(2, 4, 6))
    (run / LATEST).write_text("step-0000004\n")  # step 6 was written by a save that never moved the pointer
    assert [p.name for p in candidates(run)] == ["step-0000004", "step-0000002"]
    (run / LATEST).unlink()
    assert [p.name for p in candidates(run)] == ["step-0000006", "step-0000004", "step-0000002"]
    assert read_pointer(run, BEST) is None


@pytest.mark.parametrize("content", ["../..", "..", "/etc", "a/../../b"])
def test_runs_latest_names_a_run_folder_inside_runs(tmp_path, content):
    runs = tmp_path / "runs"
    make_run(runs / "r1")
    (runs / LATEST).write_text(content + "\n")
    with pytest.raises(CheckpointError, match=f"pointer file {runs / LATEST} holds .*not the name of a run folder"):
        latest_run(runs)
    (runs / LATEST).write_text("gone\n")
    with pytest.raises(CheckpointError, match="names run 'gone', which is not a folder in"):
        latest_run(runs)
    (runs / LATEST).write_text("r1\n")
    assert latest_run(runs) == runs / "r1"
