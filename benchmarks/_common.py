"""Helpers shared by the benchmarks: the machine line, the physical bounds, medians, char data, RESULTS.md.

Every benchmark prints the machine line (CPU model and the flags that matter: AVX2, AVX-512,
AVX512-BF16, AMX), the precision of each row, and each speed beside the physical bound it is
measured against, with the fraction reached:
- memory-bound work (batch-1 decode, one-row matrix-vector products): bytes read / the memory's
  read bandwidth, measured beside each row (`ReadBandwidth`);
- compute-bound work (training): FLOPs / the measured matmul peak of the precision used
  (`matmul_peaks`), i.e. model FLOPs utilisation (MFU).
A peer's ratio says who is faster here; the fraction of the bound says how much is left on any machine.

Each run replaces its own section of benchmarks/RESULTS.md with what it printed (date, command,
machine line), unless given `--no-record`.

Not a test: numbers depend on the machine and on what else runs on it. Compare only within one run.
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
# Sections of RESULTS.md, in this order; each benchmark owns the one named after its file.
SECTIONS = ("gemv", "generate", "quantize", "train_throughput", "pretrain_quality", "tokenizer", "load",
            "finetune_speed", "finetune_quality", "prune", "llamacpp", "serve",
            "distributed")


def header(title: str) -> str:
    """Print the title and the machine line; return the machine line."""
    from scratchllm.runtime import machine_summary

    machine = machine_summary()
    print(f"== {title}\nmachine: {machine}", flush=True)
    return machine


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Shortest wall time of `repeats` calls of `fn` (the first one included), and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


class ReadBandwidth:
    """The memory's read bandwidth in GB/s, measured beside each row: torch summing a 512 MB fp32
    tensor (far beyond the caches; a read-only stream, as batch-1 decoding is), best of 3, with
    torch's threads.

    The bound of memory-bound rows. On a shared machine it drifts within minutes (other tenants'
    traffic), so each row is measured against the bandwidth read just before and just after it (the
    higher of the two: the fraction is not flattered). A plain sum is a yardstick, not a hard
    ceiling: a reader with a few long streams per core (scratchllm's kernel) can read a little
    faster, so a fraction above 100% is possible.
    """

    def __init__(self) -> None:
        import torch

        self.buffer = torch.empty(128 * 2**20, dtype=torch.float32).fill_(1.0)  # 512 MB, pages touched

    def measure(self) -> float:
        t, _ = best_time(self.buffer.sum, 3)
        return self.buffer.numel() * 4 / t / 1e9

    def around(self, fn: Callable[[], object]) -> tuple[object, float]:
        """`fn()` and the bandwidth around it (the higher of before and after)."""
        before = self.measure()
        out = fn()
        return out, max(before, self.measure())


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


def matmul_peaks(n: int = 2048, precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict[str, float]:
    """Measured FLOP/s of an n x n matmul in each precision (the peaks MFU is reported against)."""
    from scratchllm.runtime import measure_peak_flops

    return {p: measure_peak_flops("cpu", p, n=n, reps=5) for p in precisions}


def shared_data_dir() -> Path:
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


def sms_spam_split(seed: int = 123, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)) -> dict[str, list]:
    """`sms-spam` balanced and split as `scratchllm finetune classify` does it (its data functions, in
    the order its plan calls them): {"train", "validation", "test"} lists of {"text", "label"} records."""
    from scratchllm.finetune import classify_data as data

    records = data.read_labelled("sms-spam")
    labels = data.label_names(records)
    train, validation, test = data.split(data.balance(records, labels, seed), fractions, seed)
    return {"train": train, "validation": validation, "test": test}


# --- benchmarks/RESULTS.md ----------------------------------------------------------------------

def add_record_flag(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--no-record", action="store_true",
                    help="do not replace this benchmark's section of benchmarks/RESULTS.md with this run")


class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy."""

    def __init__(self, out) -> None:
        self.out, self.copy = out, io.StringIO()

    def write(self, s: str) -> int:
        self.copy.write(s)
        return self.out.write(s)

    def flush(self) -> None:
        self.out.flush()


@contextmanager
def recorded(name: str, enabled: bool = True) -> Iterator[None]:
    """Within the block, what the benchmark prints is also kept; when the block ends without an error,
    it replaces the benchmark's section `name` of RESULTS.md (with the date and the command line)."""
    if not enabled:
        yield
        return
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    try:
        yield
    finally:
        sys.stdout = tee.out
    command = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{name}.py", *sys.argv[1:]])
    write_section(name, command, tee.copy.getvalue())
    print(f"(recorded in {RESULTS.relative_to(ROOT)}, section {name})")


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- begin {name} -->", f"<!-- end {name} -->"


def write_section(name: str, command: str, output: str, path: Path = RESULTS) -> None:
    """Replace section `name` of the results file at `path` (keeping the others and any text outside the
    sections), written atomically."""
    if name not in SECTIONS:
        raise ValueError(f"unknown section {name!r}; add it to SECTIONS")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = f"## {name}\n\nLast run {when}: `{command}`\n\n```text\n{output.rstrip()}\n```"
    begin, end = _markers(name)
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1]
    else:  # a new section goes before the first section that follows it in SECTIONS, else at the end
        later = [_markers(s)[0] for s in SECTIONS[SECTIONS.index(name) + 1:] if _markers(s)[0] in text]
        block = f"{begin}\n{body}\n{end}\n\n"
        if later:
            at = min(text.index(m) for m in later)
            text = text[:at] + block + text[at:]
        else:
            text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + block
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results-", suffix=".md")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text.rstrip("\n") + "\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # as open() would create it (mkstemp's file is 0600)
    os.replace(tmp, path)
