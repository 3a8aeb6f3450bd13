"""Helpers shared by the training benchmarks: the machine line, medians, matmul peaks, char data.

Not a test: numbers depend on the machine and on what else runs on it. Compare only within one run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def header(title: str) -> None:
    from scratchllm.runtime import machine_summary

    print(f"== {title}\nmachine: {machine_summary()}", flush=True)


def median_step_time(step: Callable[[], None], warmup: int, steps: int) -> float:
    """Median wall time of `step()` after `warmup` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peaks(n: int = 2048) -> dict[str, float]:
    """Measured FLOP/s of an n x n matmul in fp32 and bf16 (the peaks MFU is reported against)."""
    from scratchllm.runtime import measure_peak_flops

    return {p: measure_peak_flops("cpu", p, n=n, reps=5) for p in ("fp32", "bf16")}


def shared_data_dir() -> Path:
    import os

    env = os.environ.get("SCRATCHLLM_DATA_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def char_shakespeare():
    """Tiny Shakespeare as character ids, split as nanoGPT's prepare.py: the last 10% is validation."""
    import numpy as np

    text = (shared_data_dir() / "tinyshakespeare.txt").read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(len(ids) * 0.9)
    return ids[:n], ids[n:], len(chars)
