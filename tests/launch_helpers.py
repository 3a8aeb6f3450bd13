"""Helpers for the tests that start jobs of several processes the real way (torchrun, `--nproc`):
the environment the processes get and the torchrun command line. Used by tests/train and tests/finetune."""

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def env() -> dict[str, str]:
    """This environment with the worktree's src first on PYTHONPATH, one thread per process, and
    torchrun's own logging quiet."""
    path = str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "LOGLEVEL": "ERROR"}


def torchrun(*args: str, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node NPROC ARGS` (a script, or -m MODULE ...), its output kept."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


def scratchllm(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m scratchllm ARGS` in a process of its own, its output kept."""
    return subprocess.run([sys.executable, "-m", "scratchllm", *args], capture_output=True, text=True,
                          timeout=timeout, env=env())


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
