"""Scale-out (train.distributed): 2 processes on the CPU with gloo, launched the real way (torchrun, and
`scratchllm train --nproc 2`), against one process training on the same global batches.

- DDP and FSDP: the same losses (fp32, within 1e-5) and the same final weights as one process;
- FSDP's consolidated checkpoint loads in one process with the job's own logits; a run saved by 2
  processes resumes in 1 (and a 1-process checkpoint in an FSDP job);
- one rank killed: the job ends with one clear line in bounded time; `--resume` ends with the weights
  of an uninterrupted run.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).parent
WORKER = HERE / "dist_worker.py"
sys.path.insert(0, str(HERE))
from dist_worker import fixed_input, job  # noqa: E402

from launch_helpers import env, ok  # noqa: E402
from launch_helpers import torchrun as torchrun_  # noqa: E402

STEPS = 20


def torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 dist_worker.py ARGS`, its output kept."""
    return torchrun_(str(WORKER), *args, timeout=timeout)


@pytest.fixture(scope="module")
def one_process():
    """The reference: one process, the same global batches, 20 steps."""
    return job(None, "none", STEPS)


def assert_same_run(out: Path, ref: dict, weights_atol: float = 1e-5) -> None:
    losses = {int(k): v for k, v in json.loads((out / "losses.json").read_text()).items()}
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step, loss in losses.items():
        assert abs(loss - ref["losses"][step]) < 1e-5, (step, loss, ref["losses"][step])
    weights = load_file(str(out / "weights.safetensors"))
    assert set(weights) | {"lm_head.weight"} == set(ref["weights"])
    for name, w in weights.items():
        torch.testing.assert_close(w, ref["weights"][name], atol=weights_atol, rtol=0, msg=name)
    # and training moved the weights: the comparison is not of two untouched initialisations
    assert losses[STEPS] < losses[1] - 0.1


def test_ddp_matches_one_process(tmp_path, one_process):
    ok(torchrun(str(tmp_path / "out"), "--strategy", "ddp", "--steps", str(STEPS)))
    assert_same_run(tmp_path / "out", one_process)


@pytest.mark.slow
def test_fsdp_cpu_offload_runs_on_a_cpu_job(tmp_path, one_process):
    """train.fsdp_cpu_offload in a job on the CPU (no pinned memory without a GPU): the same steps."""
    ok(torchrun(str(tmp_path / "out"), "--strategy", "fsdp", "--steps", str(STEPS), "--cpu-offload"))
    assert_same_run(tmp_path / "out", one_process)


@pytest.mark.slow
def test_ddp_with_compile_matches_one_process(tmp_path, one_process):
    """train.compile with DDP on the CPU: the model is compiled in place and then wrapped, and the job
    computes the uncompiled single process's steps (compiling takes most of this test's time). The
    compiled kernels round differently (fused operations), and AdamW turns last-bit differences of a
    near-zero gradient into updates ~lr x 1e-3: the weights agree to 5e-5, the losses to 1e-5."""
    ok(torchrun(str(tmp_path / "out"), "--strategy", "ddp", "--steps", str(STEPS), "--compile", timeout=600))
    assert_same_run(tmp_path / "out", one_process, weights_atol=5e-5)


@pytest.mark.slow
def test_fsdp_matches_one_process_and_its_checkpoint_moves_to_one_process(tmp_path, one_process):
    from scratchllm.checkpoint import load_model, read_state

    run = tmp_path / "run"
    ok(torchrun(str(tmp_path / "out"), "--strategy", "fsdp", "--steps", str(STEPS), "--folder", str(run)))
    assert_same_run(tmp_path / "out", one_process)

    # the checkpoint: each rank's shards (DCP) beside the consolidated model.safetensors
    last = run / "checkpoints" / "step-0000020"
    state = read_state(last)
    assert state["sharded"]["world_size"] == 2
    assert {"__0_0.distcp", "__1_0.distcp", "sharded.metadata"} <= set(state["files"])
    assert "optimizer.safetensors" not in state["files"]  # the optimizer's moments are in the shards
    # one process loads the consolidated model: the job's own logits, exactly
    model, _, _ = load_model(last)
    with torch.no_grad():
        logits = model(fixed_input())
    torch.testing.assert_close(logits, load_file(str(tmp_path / "out" / "logits.safetensors"))["logits"],
                               atol=0, rtol=0)

    # saved by 2 processes, resumed by 1 (weights and AdamW moments from the shards): the uninterrupted run's
    resumed = job(None, "none", STEPS + 8, run_dir=str(run), resume=True)
    straight = job(None, "none", STEPS + 8)
    assert sorted(resumed["losses"]) == list(range(STEPS + 1, STEPS + 9))
    for step, loss in resumed["losses"].items():
        assert abs(loss - straight["losses"][step]) < 1e-5, step
    # 8 steps further than the 1e-5 comparison above: AdamW divides each update by the root of its second
    # moment, so the last-bit differences of a reduction in another order reach ~lr x 1e-3 in elements whose
    # gradients are near 0
    for name, w in straight["weights"].items():
        torch.testing.assert_close(resumed["weights"][name], w, atol=5e-5, rtol=0, msg=name)


@pytest.mark.slow
def test_one_process_checkpoint_resumes_under_fsdp(tmp_path, one_process):
    """An ordinary checkpoint (one process or DDP) continues in an FSDP job: every rank reads the whole
    weights and moments and keeps its shards; then that FSDP run resumes with 2 processes from its own
    sharded checkpoint."""
    run = tmp_path / "run"
    job(None, "none", 12, run_dir=str(run))
    ok(torchrun(str(tmp_path / "a"), "--strategy", "fsdp", "--steps", "16", "--folder", str(run), "--resume"))
    ok(torchrun(str(tmp_path / "b"), "--strategy", "fsdp", "--steps", str(STEPS), "--folder", str(run), "--resume"))
    losses = {int(k): v for k, v in json.loads((tmp_path / "b" / "losses.json").read_text()).items()}
    assert sorted(losses) == list(range(17, STEPS + 1))
    for step, loss in losses.items():
        assert abs(loss - one_process["losses"][step]) < 1e-5, step
    weights = load_file(str(tmp_path / "b" / "weights.safetensors"))
    for name, w in weights.items():
        torch.testing.assert_close(w, one_process["weights"][name], atol=1e-5, rtol=0, msg=name)


def test_strategy_none_in_a_torchrun_job_is_a_clear_error(tmp_path):
    proc = torchrun(str(tmp_path / "out"), "--strategy", "none", "--steps", "2")
    assert proc.returncode != 0
    assert "train.strategy is none; set train.strategy ddp or fsdp" in proc.stderr


# --- through the command line ---------------------------------------------------------------------------------
RECIPE = """name = "tiny"
prompt = "The"
[data]
dataset = "{data}"
tokenizer = {{ kind = "bpe", vocab_size = 300 }}
[model]
n_layer = 2
n_head = 2
n_embd = 64
context_length = 64
[train]
max_steps = 60
batch_size = 4
eval_interval = 10
eval_batches = 4
peak_flops = 1e9
threads = 1
precision = "fp32"
[sample]
max_new_tokens = 0
"""


def scratchllm(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "scratchllm", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env())


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_resume_gives_the_uninterrupted_weights(tmp_path, shared_data):
    from train_helpers import train_cli

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE.format(data=shared_data / "the-verdict.txt"))
    runs = tmp_path / "runs"
    flags = ["--config", str(recipe), "--runs_dir", str(runs), "--quiet", "--train.strategy", "fsdp"]
    job_ = scratchllm("train", *flags, "--nproc", "2")
    first = runs / "tiny" / "checkpoints" / "step-0000020"
    deadline = time.monotonic() + 120
    while not first.exists():
        assert job_.poll() is None, job_.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.05)
    ranks = {rank_of(c): c for c in children(job_.pid)}
    os.kill(ranks[1], signal.SIGKILL)
    killed = time.monotonic()
    out, err = job_.communicate(timeout=120)
    # the job ends in bounded time: torchrun sees the dead rank and stops the other
    assert time.monotonic() - killed < 60
    assert job_.returncode == 2
    # one line from the launcher, last; before it the surviving rank's own (what plain torchrun shows)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert "process 1 of 2" in lines[-1] and "SIGKILL" in lines[-1] and "--resume --nproc 2" in lines[-1], err[-2000:]
    assert err.rstrip().endswith(lines[-1])
    assert all("lost contact with another process" in ln for ln in lines[:-1])
    assert "Traceback" not in err

    again = scratchllm("train", *flags, "--resume", "--nproc", "2")
    out, err = again.communicate(timeout=180)
    assert again.returncode == 0, err[-3000:]
    assert "resumed from" in out
    # the uninterrupted run, in one process: the same weights
    assert train_cli(recipe, tmp_path / "straight", "--train.strategy", "none") == 0
    final = "checkpoints/step-0000060/model.safetensors"
    a = load_file(str(runs / "tiny" / final))
    b = load_file(str(tmp_path / "straight" / "tiny" / final))
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
