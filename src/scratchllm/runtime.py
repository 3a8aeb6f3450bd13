"""Runtime helpers: device and dtype choice, autocast, seeding, threads, the allocator, the machine's
peak FLOP/s, rank-0 printing.

Process-wide settings (threads, the allocator, TF32, seeds) are made by the job that owns the
process (`setup_process`, called by `train.pretrain`), never by library functions such as the
training loop. Nothing happens on import; torch is imported inside the functions that need it so
that `scratchllm --help` stays instant. Not here: anything about models or data.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import time
from contextlib import nullcontext
from typing import Any

from scratchllm.errors import UserError
from scratchllm.files import cache_dir, write_json_atomic


def pick_device(name: str = "auto") -> Any:
    """`"auto"` picks CUDA, then MPS, then CPU; any other name must be available."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UserError("device mps was asked for but this torch has no MPS (Apple GPU) support here; "
                            "use --device cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"device {name!r} is not supported; use auto, cpu, cuda or mps")
    return dev


DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def torch_dtype(name: str) -> Any:
    """`"bf16"` -> `torch.bfloat16`, and so on; unknown names are a clear error."""
    import torch

    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; use fp32, bf16 or fp16")
    return getattr(torch, DTYPES[name])


def autocast(device: Any, dtype: str) -> Any:
    """A mixed-precision context for `dtype` on `device`; fp32 gives a no-op context."""
    import torch

    dt = torch_dtype(dtype)
    if dt == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dt)


class eval_mode:
    """`with eval_mode(model):` puts the model in eval mode, then restores the mode it had.

    The one place training mode is saved and restored (the loop's evaluation, generation).
    """

    def __init__(self, model: Any) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> Any:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was_training)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (for code that uses them)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(n: int | None) -> None:
    """Use `n` intra-op threads (None: leave torch's default, one per core)."""
    import torch

    if n:
        torch.set_num_threads(n)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process instead of returning it to the OS.

    A training step frees and re-allocates the same large tensors every step (logits, gradients,
    activations). glibc serves blocks over 32 MB with fresh `mmap`s and gives them back on free, so
    every step pays a page fault per 4 KiB page of each of them, a large share of a big model's step
    (`benchmarks/train_throughput.py` measures it: its "+ kept memory" row; earlier figures in
    benchmarks/RESULTS.md). With mmap off (M_MMAP_MAX 0) and trimming off (M_TRIM_THRESHOLD at its
    maximum) the heap keeps those pages mapped and reuses them. The same as running under
    `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=...`, or what jemalloc/tcmalloc give (PyTorch's CPU
    performance guide recommends those). The process's memory then stays at its high-water mark.

    Process-wide and one-way. Returns False (and changes nothing) where libc is not glibc.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def setup_process(threads: int | None = None, keep_freed: bool = False, device: Any = "cpu") -> None:
    """The process-wide settings of a training job, made once by the job that owns the process.

    - `threads`: intra-op threads (`set_threads`; None leaves torch's default);
    - `keep_freed`: keep freed memory in the process (`keep_freed_memory`, glibc only);
    - on a CUDA `device`, TF32 matmuls for the fp32 parts (`torch.set_float32_matmul_precision("high")`).
    Seeds are the job's too (`seed_everything` before it builds its model). The training loop calls
    none of these: a library user calling `train.loop.train` keeps the process as it was.
    """
    import torch

    set_threads(threads)
    if keep_freed:
        keep_freed_memory()
    if torch.device(device).type == "cuda":
        torch.set_float32_matmul_precision("high")


def measure_peak_flops(device: str = "cpu", precision: str = "fp32", n: int = 2048, reps: int = 3) -> float:
    """Measured FLOP/s of a large n x n matmul in `precision` on `device` (best of `reps`).

    Uses its own generator: the global RNG (and so exact resume) is untouched.
    """
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# Where measured peaks are kept, in `files.cache_dir()`: {key: FLOP/s}, one entry per machine setting.
PEAK_FLOPS_FILE = "peak_flops.json"


def peak_flops_key(device: Any, precision: str) -> str:
    """What a measured peak depends on: the CPU (model and flags, hashed), torch's version, the device
    (with the GPU's name), the precision and the intra-op thread count."""
    import torch

    dev = str(device)
    if torch.device(device).type == "cuda":
        dev += f" ({torch.cuda.get_device_name(torch.device(device))})"
    cpu = hashlib.sha256(cpu_identity().encode("utf-8")).hexdigest()[:16]
    return f"cpu {cpu} | torch {torch.__version__} | {dev} | {precision} | {torch.get_num_threads()} threads"


def peak_flops(device: Any = "cpu", precision: str = "fp32") -> float:
    """The peak FLOP/s that model FLOPs utilisation is measured against: a large matmul
    (`measure_peak_flops`) measured once per machine setting (`peak_flops_key`) and kept in
    `cache_dir()/peak_flops.json`; later calls read it. A cache that cannot be read is measured
    again, one that cannot be written is skipped.
    """
    key = peak_flops_key(device, precision)
    path = cache_dir() / PEAK_FLOPS_FILE
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    value = known.get(key)
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    value = measure_peak_flops(str(device), precision)
    try:
        write_json_atomic(path, {**known, key: value}, indent=1)
    except OSError:
        pass
    return value


def is_rank_zero() -> bool:
    """True in a single process and in rank 0 of a torchrun job."""
    return int(os.environ.get("RANK", "0")) == 0


def print0(*args: Any, **kwargs: Any) -> None:
    """print, but only on rank 0."""
    if is_rank_zero():
        print(*args, **kwargs)


# CPU features that decide a benchmark's bounds and our code paths: AVX2 / AVX-512 (vector width of
# the matrix-vector kernel's sums), AVX512-BF16 and AMX (native bf16 matmuls: runtime.fast_bf16_matmul).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
CPUINFO = "/proc/cpuinfo"  # Linux's description of the CPU; absent elsewhere


def cpu_info() -> tuple[str, frozenset[str]]:
    """This CPU's model name and feature flags, from Linux's /proc/cpuinfo.

    The flags are those every core reports (the lines can differ on CPUs with two kinds of cores).
    Elsewhere: platform's processor name (or the architecture) and no flags.
    """
    names, flag_sets = [], []
    try:
        with open(CPUINFO) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    names.append(value.strip())
                elif key.strip() in ("flags", "Features"):  # "Features" on ARM
                    flag_sets.append(frozenset(value.split()))
    except OSError:
        pass
    name = names[0] if names else platform.processor() or platform.machine()
    return name, frozenset.intersection(*flag_sets) if flag_sets else frozenset()


def cpu_identity() -> str:
    """What a `-march=native` build depends on: architecture, CPU model name and every flag line of
    /proc/cpuinfo (hashed by the caller; see model.gemv)."""
    ident = [platform.machine(), platform.processor()]
    try:
        with open(CPUINFO) as f:
            ident += sorted({line.strip() for line in f if line.startswith(("flags", "Features", "model name"))})
    except OSError:
        pass
    return "\n".join(ident)


def cpu_flags_summary() -> str:
    """The flags of CPU_FLAGS, each present or not: "avx2 avx512f avx512_bf16, no amx_bf16 amx_tile"."""
    flags = cpu_info()[1]
    have = [f for f in CPU_FLAGS if f in flags]
    missing = [f for f in CPU_FLAGS if f not in flags]
    return ", ".join(part for part in (" ".join(have), "no " + " ".join(missing) if missing else "") if part)


def machine_summary() -> str:
    """One line naming the machine: CPU model and the flags that matter (CPU_FLAGS), cores, memory,
    Python and torch versions, threads."""
    import torch

    cpu = cpu_info()[0]
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (f"{cpu} ({cpu_flags_summary()}), {os.cpu_count()} cores{mem}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def fast_bf16_matmul(device: Any = "cpu") -> bool:
    """Whether bf16 matrix multiplies run natively (faster than fp32) on `device`.

    CUDA: the GPU supports bf16. CPU: the processor has AVX512-BF16 or AMX (Linux /proc/cpuinfo);
    elsewhere bf16 matmuls are emulated and slower than fp32, so the answer is False.
    """
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind != "cpu":
        return False
    flags = cpu_info()[1]
    return "avx512_bf16" in flags or "amx_bf16" in flags
