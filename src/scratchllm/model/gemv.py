"""A matrix-vector product for batch-1 decoding on the CPU: scratchllm's C kernel, built on first use.

At batch 1 a decode step multiplies one row by every weight matrix, so it runs at the speed at
which memory delivers the weights. torch's CPU `F.linear` (MKL's sgemv) reads a one-row product's
weights well below the memory's speed; `gemv.c` (portable C, see its header) reads each thread's
rows as a few long streams, which the CPU's prefetchers follow, and so reads them about as fast as
a plain sum of the same weights. It reads the model's own weights in place: nothing is copied or
repacked. bf16 weights are read as bf16 (half the bytes) and summed in fp32, with bf16 rows in and out. A product
may also add a residual as it writes (`x + proj(h)` in one call). Weights stored (in, out), the transpose
(an imported GPT-2's Conv1D matrices, which interop.hf leaves where the file maps them), are read in place
too, through their transposed view (`Kernel.takes`). `Kernel.attend` is the rest of a
batch-1 decode step's attention: the new keys and values written into the KV cache and one query per
head attending over it, in one call (fp32 or bf16; see gemv.c). Quantized weights
(`model.quant_linear`'s int8 per row and int4 group-wise format) are multiplied as integers with the
input rows quantized to int8 in blocks of 32 (llama.cpp's q8_0 activations; `quantize_input` is that
rounding in torch), the scales applied per block in floats (`Kernel.bind_q8`, `Kernel.bind_q4`; gemv.c's
"quantized weights" comment): int8 as stored, int4 in the kernel layout (16 rows side by side,
`to_kernel_layout`), into which model.quant_linear rearranges its buffers in place. They take the same decode-step
glue as the fp32/bf16 products: a residual added as they write (`add=`, `out=`), a norm applied to the input row
before it is quantized (`norm=`, a `RowNorm`), and an MLP's two products and activation in one call
(`Kernel.bind_mlp_quantized`).
Their paths (AVX-512 VNNI, AVX2, portable C)
are chosen when called, by what the CPU runs (`Kernel.isas`); `SCRATCHLLM_KERNEL_ISA=c|avx2|avx512`
forces one (tests run each). `benchmarks/gemv.py`
measures it against torch, HF's layout, oneDNN and the memory's read bandwidth; see
benchmarks/RESULTS.md.

The glue between a decode step's products is C too, each one call where torch would dispatch several ops
(gemv.c's last section): `Kernel.attend` also puts the new query and key heads through QK-norm and RoPE
when the model has them; `Kernel.norm` is one row's RMSNorm or LayerNorm; `Kernel.bind_normed` a product
whose input row is normalized first (a block's norm and the product after it); `Kernel.bind_mlp` an MLP's
products and its SwiGLU or GELU (and its norm before them), in one call; `Kernel.embed` (`embed_q` for a quantized
table) the token's embedding row, a step's first call.

A decode step's calls can be written down as they are made (`record`: every C function of the library is a `_Call`
that appends itself and its arguments to the active `Recording`; `attend` and `embed` mark the arguments that move
with the step: the position, the token, the tables' rows) and made again in one C call (`Kernel.plan`,
`Kernel.run_plan`, `Kernel.plan_runner`: gemv.c's `scratchllm_run_plan`, on one team of threads that makes every
call, one barrier between them), which may end with the greedy token, the argmax of the step's logits
(`Kernel.argmax`). model.step_plan decides when a step may be replayed. Quantized buffers that a file maps at any
offset are moved to 64-byte-aligned memory when a layer binds them (`align_in_place`).

`load()` builds the kernel once per machine with the system C compiler (`$CC`, else `cc`, `gcc`,
`clang`; flags `-O3 -march=native -fopenmp -shared -fPIC`) into
`<cache>/kernels/gemv-<cpu>-<build>.so` (the cache folder of `files.cache_dir`, written
atomically). `<cpu>` hashes the CPU's model name and feature flags (`runtime.cpu_identity`), so a
home folder shared between machines never loads a library built with `-march=native` for another
CPU; `<build>` hashes the source, compiler and flags. It loads the library with ctypes, checks it
against `F.linear` on small matrices that take every code path (the quantized ones against `F.linear`
of the dequantized weight; the norms and MLP activations against torch's), and returns a `Kernel`. When it has
built a new library that passes, it removes this CPU's libraries of other builds (older sources or
compilers: `prune`), so they do not pile up; other CPUs' files are never touched. Where any
step fails (no compiler, no OpenMP, a mismatch) it returns None and `status()` says why; callers
then use torch's kernels. `SCRATCHLLM_NO_KERNEL=1` turns it off.

Not here: which layers use it and when (model.fast_linear, model.quant_linear).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from scratchllm.files import cache_dir
from scratchllm.runtime import cpu_identity

SOURCE = Path(__file__).with_name("gemv.c")
DISABLE_ENV = "SCRATCHLLM_NO_KERNEL"
# Tried in order: tuned for this CPU, then generic (compilers that do not know -march=native).
FLAG_SETS = (("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"), ("-O3", "-fopenmp", "-shared", "-fPIC"))
COMPILE_TIMEOUT = 120.0  # seconds; far more than a build takes, short of a hang
# The quantized products' paths, by number (gemv.c): portable C, AVX2 + FMA, AVX-512 with VNNI.
ISAS = ("c", "avx2", "avx512")
ISA_ENV = "SCRATCHLLM_KERNEL_ISA"  # forces a path (tests, comparisons); unset: the best this CPU runs
# Weights (elements) under which a product runs on one thread: a team of threads costs a few microseconds to
# start, more than two threads save on a matrix this small (it sits in the caches).
PARALLEL_MIN = 2**16
MAX_HEAD_DIM = 512  # the longest head `attend` takes (gemv.c's MAX_HEAD_DIM: its per-head buffers)
QBLOCK = 32  # inputs per quantized block of the input row (gemv.c's QBLOCK, llama.cpp's q8_0 block)
MLP_ACTS = {"swiglu": 0, "gelu_tanh": 1, "gelu": 2}  # `bind_mlp`'s activations, by gemv.c's number (ACT_*)


# The C functions a recorded decode step may call (model.step_plan), by gemv.c's number (PLAN_*, this order).
PLAN_FNS = ("scratchllm_gemv", "scratchllm_gemv_bf16", "scratchllm_gemv_t", "scratchllm_gemv_t_bf16",
            "scratchllm_attend", "scratchllm_norm", "scratchllm_mlp_hidden", "scratchllm_gemv_normed",
            "scratchllm_gemv_q8", "scratchllm_gemv_q4", "scratchllm_mlp_q", "scratchllm_embed", "scratchllm_embed_q")
PLAN_ARGS, PLAN_PATCHES = 20, 3  # gemv.c's: arguments per call, arguments that move with the step per call
MOVES = ("pos", "token")  # what a moving argument follows (gemv.c's patch_var)


class Recording:
    """The kernel calls made while it is active (`record()`): (function name, argument types, arguments, moves),
    moves a tuple of (argument index, "pos" or "token", step): the arguments that follow the decode step's position
    or token (argument = recorded + (now - then) * step). What model.step_plan replays."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list, tuple, tuple]] = []

    def move(self, *moves: tuple[int, str, int]) -> None:
        """Mark arguments of the last call as moving with the step."""
        name, types, args, old = self.calls[-1]
        self.calls[-1] = (name, types, args, old + moves)


class _Recorder(threading.local):
    """The active Recording of this thread (another thread's calls are its own), or None."""

    active: Recording | None = None


_recorder = _Recorder()


@contextlib.contextmanager
def record() -> Iterator[Recording]:
    """Within the block, every call this thread makes into the kernel's C functions is also written down (see
    `Recording`)."""
    if _recorder.active is not None:
        raise RuntimeError("a kernel recording is already running")
    _recorder.active = rec = Recording()
    try:
        yield rec
    finally:
        _recorder.active = None


class _Call:
    """One C function of the library, called as ctypes calls it (`argtypes`, `restype` set on it); written down
    while a Recording is active."""

    __slots__ = ("fn", "name")

    def __init__(self, fn, name: str) -> None:
        self.fn, self.name = fn, name

    def __call__(self, *args):
        rec = _recorder.active
        if rec is not None and self.name in PLAN_FNS:  # (not the queries: a layer bound during the step)
            rec.calls.append((self.name, self.fn.argtypes, args, ()))
        return self.fn(*args)

    def __getattr__(self, attr: str):
        return getattr(self.fn, attr)

    def __setattr__(self, attr: str, value) -> None:
        if attr in _Call.__slots__:
            object.__setattr__(self, attr, value)
        else:
            setattr(self.fn, attr, value)


class _Library:
    """The loaded library, its functions as `_Call`s."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib

    def __getattr__(self, name: str) -> _Call:
        call = _Call(getattr(self._lib, name), name)
        setattr(self, name, call)
        return call


class _PlanOp(ctypes.Structure):
    """gemv.c's `struct plan_op`: one recorded call."""

    _fields_ = [("fn", ctypes.c_long), ("args", ctypes.c_long * PLAN_ARGS), ("n_patch", ctypes.c_long),
                ("patch_arg", ctypes.c_long * PLAN_PATCHES), ("patch_var", ctypes.c_long * PLAN_PATCHES),
                ("patch_step", ctypes.c_long * PLAN_PATCHES)]


class _PlanRun(ctypes.Structure):
    """gemv.c's `struct plan_run`: a plan's calls and how to run them."""

    _fields_ = [("ops", ctypes.c_void_p), ("n", ctypes.c_long), ("threads", ctypes.c_long),
                ("logits", ctypes.c_void_p), ("vocab", ctypes.c_long)]


def _as_long(value, kind) -> int:
    """A recorded argument as gemv.c's plan holds it: floats as a double's bits, None as 0, the rest as integers."""
    if kind is ctypes.c_float:
        return struct.unpack("<q", struct.pack("<d", float(value)))[0]
    return 0 if value is None else int(value)


class Kernel:
    """The loaded C functions, called as `kernel(weight, x, bias)` -> x @ weight.T + bias for one row x.

    weight (out, in) contiguous, fp32 or bf16 (read as bf16, summed in fp32), on the CPU; x (..., in)
    of the weight's dtype holding one row; bias (out,) or None. The result has x's dtype and shape
    (..., out).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lib = _Library(ctypes.CDLL(str(path)))  # keeps the library loaded as long as the kernel lives
        self._fns = {torch.float32: self._lib.scratchllm_gemv, torch.bfloat16: self._lib.scratchllm_gemv_bf16}
        for fn in self._fns.values():
            fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long, ctypes.c_long, ctypes.c_int]
            fn.restype = None
        self._fns[torch.float32].argtypes += [ctypes.c_void_p]  # the residual added (or NULL)
        self._fns[torch.bfloat16].argtypes += [ctypes.c_void_p] * 2  # scratch (the inputs split), the residual
        # weights stored (in, out) (a transposed view, GPT-2's Conv1D layout): (w, x, b, y, out, in, threads,
        # partial sums, residual)
        self._fns_t = {torch.float32: self._lib.scratchllm_gemv_t, torch.bfloat16: self._lib.scratchllm_gemv_t_bf16}
        for fn in self._fns_t.values():
            fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long, ctypes.c_long, ctypes.c_int] + [ctypes.c_void_p] * 2
            fn.restype = None
        self._attend = self._lib.scratchllm_attend
        self._attend.argtypes = ([ctypes.c_void_p] * 6 + [ctypes.c_long] * 5 + [ctypes.c_int] * 2
                                 + [ctypes.c_void_p] * 2 + [ctypes.c_float] + [ctypes.c_void_p] * 2 + [ctypes.c_int])
        self._attend.restype = ctypes.c_int
        # a decode step's glue (gemv.c's last section): one row's norm; the MLP's products with its activation
        self._norm = self._lib.scratchllm_norm  # (x, weight, bias, y, n, eps, rms, bf16)
        self._norm.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long, ctypes.c_float, ctypes.c_int, ctypes.c_int]
        self._norm.restype = None
        # (wf, bf, wg, bg, x, y, out, in, threads, scratch, act, bf16, norm)
        self._mlp = self._lib.scratchllm_mlp_hidden
        self._mlp.argtypes = ([ctypes.c_void_p] * 6 + [ctypes.c_long] * 2 + [ctypes.c_int, ctypes.c_void_p]
                              + [ctypes.c_int] * 2 + [ctypes.c_void_p])
        self._mlp.restype = None
        self._normed = self._lib.scratchllm_gemv_normed  # (w, x, b, y, out, in, threads, scratch, norm, bf16, t)
        self._normed.argtypes = ([ctypes.c_void_p] * 4 + [ctypes.c_long] * 2 + [ctypes.c_int]
                                 + [ctypes.c_void_p] * 2 + [ctypes.c_int] * 2)
        self._normed.restype = None
        # quantized weights (model.quant_linear's format): int8 per row, int4 group-wise; the paths this CPU runs
        self._q8, self._q4 = self._lib.scratchllm_gemv_q8, self._lib.scratchllm_gemv_q4
        for fn in (self._q8, self._q4):  # (weights, x, y, rows, threads, residual, norm)
            fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long, ctypes.c_int] + [ctypes.c_void_p] * 2
            fn.restype = None
        self._mlp_q = self._lib.scratchllm_mlp_q  # (fc weights, gate weights, x, y, threads, act, norm, sums)
        self._mlp_q.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 2 + [ctypes.c_void_p] * 2
        self._mlp_q.restype = None
        self._scratch_bytes = self._lib.scratchllm_q_scratch_bytes
        self._scratch_bytes.argtypes, self._scratch_bytes.restype = [ctypes.c_long], ctypes.c_long
        self._lib.scratchllm_q_isas.restype = ctypes.c_int
        bits = self._lib.scratchllm_q_isas()
        # a decode step's first call (the token's embedding row) and the recorded step replayed (model.step_plan)
        self._embed = self._lib.scratchllm_embed  # (table, pos_table, token, pos, y, n, bf16)
        self._embed.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_long] * 2 + [ctypes.c_void_p, ctypes.c_long,
                                                                              ctypes.c_int]
        self._embed.restype = None
        self._embed_q = self._lib.scratchllm_embed_q  # (weights, pos_table, token, pos, y)
        self._embed_q.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_long] * 2 + [ctypes.c_void_p]
        self._embed_q.restype = None
        self._run_plan = self._lib.scratchllm_run_plan.fn  # (run, pos, token) -> the pick, or -(failed call + 1)
        self._run_plan.argtypes, self._run_plan.restype = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long], ctypes.c_long
        self._argmax = self._lib.scratchllm_argmax.fn
        self._argmax.argtypes, self._argmax.restype = [ctypes.c_void_p, ctypes.c_long], ctypes.c_long
        self._heads_rows = self._lib.scratchllm_plan_heads_rows.fn
        self._heads_rows.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
        self._heads_rows.restype = ctypes.c_long
        self.isas = tuple(name for k, name in enumerate(ISAS) if bits >> k & 1)  # e.g. ("c", "avx2", "avx512")

    def isa(self, name: str | None = None) -> int:
        """The quantized products' path number: `name` ("c", "avx2", "avx512"), else $SCRATCHLLM_KERNEL_ISA,
        else the best this CPU runs. A path this CPU lacks is a ValueError."""
        name = name or os.environ.get(ISA_ENV) or self.isas[-1]
        if name not in self.isas:
            raise ValueError(f"the quantized kernel's path {name!r} does not run on this CPU; it runs "
                             f"{', '.join(self.isas)} (set {ISA_ENV} to one of them, or unset it)")
        return ISAS.index(name)

    def __call__(self, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.bind(weight, bias)(x)

    @staticmethod
    def takes(weight: torch.Tensor) -> bool:
        """Whether `bind` takes this weight: a CPU fp32 or bf16 matrix, contiguous (out, in) or the transposed
        view of a contiguous (in, out) one (GPT-2's Conv1D matrices as model.weights maps them; bf16: out even)."""
        if weight.dim() != 2 or weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
            return False
        if weight.is_contiguous():
            return True
        return weight.t().is_contiguous() and (weight.dtype == torch.float32 or weight.shape[0] % 2 == 0)

    def bind(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Callable[..., torch.Tensor]:
        """`product(x, add=None, out=None)`: `x @ weight.T + bias (+ add)` with the weight checked and its
        address taken once (a decode step makes ~50 such calls; binding halves their Python cost).
        The weight is (out, in) contiguous, or a transposed view of an (in, out) one (`takes`), read as it lies
        (gemv.c's "weights stored (in, out)").

        x: one row (..., in) of the weight's dtype; bf16 weights take and give bf16 rows (sums in fp32).
        add: a residual (..., out) of that dtype added to the result, rounded as torch's `y + add` would
        (bf16: the product rounded, then the sum); out: the tensor written (default a new one; may be
        `add` itself: an in-place residual). The weight is read live, where it is; the bias as it is now
        (a copy if it is not fp32). Weights under PARALLEL_MIN elements run on one thread (a thread
        team costs more than they take)."""
        n_out, n_in = weight.shape
        if not self.takes(weight):
            raise ValueError(f"gemv takes one CPU row and an fp32 or bf16 weight, contiguous (out, in) or a "
                             f"transposed (in, out) one; got weight {tuple(weight.shape)} {weight.dtype} "
                             f"{tuple(weight.stride())} on {weight.device}")
        dtype = weight.dtype
        bf16 = dtype == torch.bfloat16
        transposed = not weight.is_contiguous()
        b32 = None if bias is None else bias.detach().float().contiguous()  # no copy for fp32
        single = weight.numel() < PARALLEL_MIN
        num_threads = torch.get_num_threads
        if transposed:  # each thread's partial sums: a row of `out` floats a thread (room for every core)
            most = max(torch.get_num_threads(), os.cpu_count() or 1)
            fn, scratch = self._fns_t[dtype], torch.empty(most * n_out, dtype=torch.float32)

            def num_threads() -> int:
                return min(torch.get_num_threads(), most)
        else:  # bf16: the row split in even/odd halves
            fn, scratch = self._fns[dtype], torch.empty(n_in, dtype=torch.float32) if bf16 else None
        w_ptr, b_ptr = weight.data_ptr(), None if b32 is None else b32.data_ptr()
        s_ptr = scratch.data_ptr() if scratch is not None else None

        def product(x: torch.Tensor, add: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
            if x.numel() != n_in or x.dtype is not dtype or x.device.type != "cpu":
                raise ValueError(f"gemv takes one CPU row of {n_in} of the weight's dtype ({dtype}); "
                                 f"got x {tuple(x.shape)} {x.dtype} on {x.device}")
            if not x.is_contiguous():
                x = x.contiguous()
            if add is not None and (add.numel() != n_out or add.dtype is not dtype or not add.is_contiguous()):
                raise ValueError(f"gemv's residual must be a contiguous {dtype} row of {n_out}; got "
                                 f"{tuple(add.shape)} {add.dtype}")
            if out is None:
                out = torch.empty(*x.shape[:-1], n_out, dtype=dtype)  # (..., out)
            elif out.numel() != n_out or out.dtype is not dtype or not out.is_contiguous():
                raise ValueError(f"gemv's out must be a contiguous {dtype} row of {n_out}; got "
                                 f"{tuple(out.shape)} {out.dtype}")
            threads = 1 if single else num_threads()
            a_ptr = None if add is None else add.data_ptr()
            if bf16 or transposed:
                fn(w_ptr, x.data_ptr(), b_ptr, out.data_ptr(), n_out, n_in, threads, s_ptr, a_ptr)
            else:
                fn(w_ptr, x.data_ptr(), b_ptr, out.data_ptr(), n_out, n_in, threads, a_ptr)
            return out

        product.keep_alive = (weight, b32, scratch)  # the addresses above stay valid while `product` lives
        return product

    def attend(self, q: int, k: int, v: int, k_cache: int, v_cache: int, y: int, n_head: int, n_kv_head: int,
               head_dim: int, pos: int, head_stride: int, bf16: bool, *, q_norm: int | None = None,
               k_norm: int | None = None, eps: float = 0.0, cos: int | None = None, sin: int | None = None,
               table_bf16: bool = False) -> None:
        """Single-query attention over one layer's KV cache (gemv.c's `scratchllm_attend`), on addresses: the
        new position's keys `k` and values `v` (n_kv_head * head_dim each) are written into the caches
        (n_kv_head, max_len, head_dim; head stride `head_stride` elements) at `pos`, then every query head
        of `q` (n_head * head_dim) attends to positions 0..pos; the heads' outputs go to `y`
        (n_head * head_dim). fp32, or bf16 throughout. The caller checks shapes, dtypes and room.

        Before that, the new query and key heads go through QK-norm when `q_norm` and `k_norm` (the RMSNorm
        weights, head_dim values of the rows' dtype; `eps`) are given, then RoPE when `cos` and `sin` (the
        position's rows of the tables, head_dim values, bf16 when `table_bf16` else fp32) are: what
        model.layers' general path does to them, rounded as it rounds."""
        if self._attend(q, k, v, k_cache, v_cache, y, n_head, n_kv_head, head_dim, pos, head_stride, int(bf16),
                        torch.get_num_threads(), q_norm, k_norm, eps, cos, sin, int(table_bf16)):
            raise ValueError(f"attend takes heads of at most {MAX_HEAD_DIM} values; got {head_dim}")
        rec = _recorder.active
        if rec is not None:  # a recorded step: the next one writes the next position, RoPE's next rows
            row = head_dim * (2 if table_bf16 else 4)
            rec.move((9, "pos", 1), *(((16, "pos", row), (17, "pos", row)) if cos is not None else ()))

    def norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float,
             rms: bool) -> torch.Tensor:
        """RMSNorm (`rms`) or LayerNorm of one row x (..., n) fp32 or bf16 with `weight` (n,) and `bias` (n,) or None
        of x's dtype (gemv.c's `scratchllm_norm`): computed in fp32 and rounded once, as torch's CPU norms are.
        A new tensor of x's shape and dtype."""
        n, dtype = x.shape[-1], x.dtype
        if (x.numel() != n or weight.numel() != n or dtype not in self._fns or weight.dtype is not dtype
                or not (x.is_cpu and weight.is_cpu and weight.is_contiguous())
                or (bias is not None and (bias.dtype is not dtype or bias.numel() != n
                                          or not (bias.is_cpu and bias.is_contiguous())))):
            raise ValueError(f"norm takes one CPU fp32 or bf16 row and contiguous weight and bias of its size and "
                             f"dtype; got x {tuple(x.shape)} {dtype}, weight {tuple(weight.shape)} {weight.dtype}")
        if not x.is_contiguous():
            x = x.contiguous()
        y = torch.empty_like(x)
        self._norm(x.data_ptr(), weight.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(), n, eps,
                   int(rms), int(dtype is torch.bfloat16))
        return y

    def embed(self, table: torch.Tensor, pos_table: torch.Tensor | None, token: int, pos: int) -> torch.Tensor:
        """One token's embedding row (1, 1, n): `table[token]` (+ `pos_table[pos]`, a learned position's row), tables
        (rows, n) contiguous CPU fp32 or bf16 of one dtype, the sum rounded once (gemv.c's `scratchllm_embed`).
        Recorded, the token and the position move with the step. Indices out of the tables are a ValueError."""
        rows, n = table.shape
        dtype = table.dtype
        if (dtype not in self._fns or not table.is_cpu or not table.is_contiguous() or not 0 <= token < rows
                or (pos_table is not None and (pos_table.dtype is not dtype or pos_table.shape[-1] != n
                                               or not pos_table.is_cpu or not pos_table.is_contiguous()
                                               or not 0 <= pos < pos_table.shape[0]))):
            raise ValueError(f"embed takes contiguous CPU fp32 or bf16 tables of one dtype and width, and rows inside "
                             f"them; got table {tuple(table.shape)} {dtype}, token {token}, position {pos}")
        y = torch.empty(1, 1, n, dtype=dtype)
        self._embed(table.data_ptr(), None if pos_table is None else pos_table.data_ptr(), token, pos, y.data_ptr(),
                    n, int(dtype is torch.bfloat16))
        rec = _recorder.active
        if rec is not None:
            rec.move((2, "token", 1), (3, "pos", 1))
        return y

    def embed_q(self, product: Callable[..., torch.Tensor], pos_table: torch.Tensor | None, token: int,
                pos: int) -> torch.Tensor:
        """One token's embedding row (1, 1, n) fp32 from a quantized table: the weights of `product` (a bound
        `bind_q8` or `bind_q4` product; int4 in the kernel layout) dequantized at row `token`, as
        model.quant_linear's `dequantize` computes it (+ `pos_table[pos]`, fp32 (rows, n)). As `embed` otherwise."""
        w = product.weights
        n = w.n_in
        if not 0 <= token < w.out or (pos_table is not None and (
                pos_table.dtype is not torch.float32 or pos_table.shape[-1] != n or not pos_table.is_cpu
                or not pos_table.is_contiguous() or not 0 <= pos < pos_table.shape[0])):
            raise ValueError(f"embed_q takes a row of the table's {w.out} and a contiguous CPU fp32 position table "
                             f"of width {n}; got token {token}, position {pos}")
        y = torch.empty(1, 1, n)
        self._embed_q(ctypes.addressof(w), None if pos_table is None else pos_table.data_ptr(), token, pos,
                      y.data_ptr())
        rec = _recorder.active
        if rec is not None:
            rec.move((2, "token", 1), (3, "pos", 1))
        return y

    def plan(self, rec: Recording, pos: int, token: int) -> ctypes.Array:
        """The calls of `rec`, recorded at position `pos` for token `token`, as `run_plan` takes them (gemv.c's
        `struct plan_op` array). A call of a function the plan cannot make is a ValueError."""
        ops = (_PlanOp * len(rec.calls))()
        for op, (name, types, args, moves) in zip(ops, rec.calls):
            if name not in PLAN_FNS or len(args) > PLAN_ARGS or len(moves) > PLAN_PATCHES:
                raise ValueError(f"a decode step's plan cannot replay a call of {name}")
            values = [_as_long(value, kind) if kind is ctypes.c_float else 0 if value is None else value
                      for value, kind in zip(args, types)]
            for i, var, step in moves:
                values[i] -= (pos if var == "pos" else token) * step  # the base: argument = base + now * step
            op.fn, op.n_patch = PLAN_FNS.index(name), len(moves)
            op.args[:len(values)] = values
            for k, (i, var, step) in enumerate(moves):
                op.patch_arg[k], op.patch_var[k], op.patch_step[k] = i, MOVES.index(var), step
        return ops

    def run_plan(self, ops: ctypes.Array, pos: int, token: int, threads: int = 1,
                 pick_from: torch.Tensor | None = None) -> int | None:
        """Make the calls of `ops` (`plan`) again, for position `pos` and token `token`, in one call: on one team of
        `threads` threads that makes every call (gemv.c's "A replayed decode step's team"; each call's share of the
        work as the call alone would split it, one barrier between calls), else one call after the other.
        `pick_from`: the step's logits (1, vocab) fp32 contiguous, whose argmax (`argmax`) is then computed in the
        same call and returned (a greedy decode's next token); else None. A decode loop takes `plan_runner`."""
        picked = self.plan_runner(ops, threads, pick_from)(pos, token)
        return None if pick_from is None else picked

    def plan_runner(self, ops: ctypes.Array, threads: int = 1,
                    pick_from: torch.Tensor | None = None) -> Callable[[int, int], int]:
        """`run(pos, token)`: `run_plan(ops, pos, token, threads, pick_from)` with everything but the position and
        the token set once (gemv.c's `struct plan_run`), so a step is a call of three arguments; it returns the
        pick (0 without `pick_from`). It holds `ops` and `pick_from`."""
        logits = None if pick_from is None else pick_from.data_ptr()
        vocab = 0 if pick_from is None else pick_from.shape[-1]
        run = _PlanRun(ctypes.addressof(ops), len(ops), threads, logits, vocab)
        at, call = ctypes.addressof(run), self._run_plan

        def step(pos: int, token: int) -> int:
            out = call(at, pos, token)
            if out < 0:
                raise ValueError(f"a decode step's plan failed at its call {-out - 1} ({PLAN_FNS[ops[-out - 1].fn]})")
            return out

        step.held = (run, ops, pick_from)  # type: ignore[attr-defined]  (what `at` points into)
        return step

    def heads_rows(self, ops: ctypes.Array, threads: int) -> int:
        """How many calls of `ops` a team of `threads` threads makes as "the heads' rows" (gemv.c: each thread the
        query, key and value rows of the heads it then attends with, no barrier in between)."""
        return self._heads_rows(ctypes.addressof(ops), len(ops), threads)

    def argmax(self, x: torch.Tensor) -> int:
        """The first index of x's largest value (a NaN counts as largest), as torch.argmax: x (n,) fp32 contiguous.
        What `run_plan` picks."""
        if x.dtype is not torch.float32 or x.dim() != 1 or not x.is_contiguous():
            raise ValueError(f"argmax takes one contiguous fp32 row; got {x.dtype} of shape {tuple(x.shape)}")
        return self._argmax(x.data_ptr(), x.numel())

    def bind_mlp(self, fc_weight: torch.Tensor, fc_bias: torch.Tensor | None, act: str,
                 gate_weight: torch.Tensor | None = None, gate_bias: torch.Tensor | None = None,
                 norm: RowNorm | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """`hidden(x)`: an MLP's hidden activations of one row x (..., in) in one call (gemv.c's
        `scratchllm_mlp_hidden`): act "swiglu": silu(x @ gate_weight.T + gate_bias) * (x @ fc_weight.T + fc_bias);
        "gelu_tanh" or "gelu" (exact): GELU(x @ fc_weight.T + fc_bias). Weights (out, in) contiguous fp32 or bf16
        (x of their dtype; bf16 rounded where torch's steps round), read in place; biases taken as they are now.
        `norm`: x is normalized by it first (see `RowNorm`), in the same call."""
        act_id = MLP_ACTS.get(act)
        if act_id is None or (act == "swiglu") != (gate_weight is not None):
            raise ValueError(f"bind_mlp takes act one of {', '.join(MLP_ACTS)}, and a gate exactly for swiglu; got "
                             f"act {act!r}, gate {gate_weight is not None}")
        weights = [fc_weight] + ([gate_weight] if act == "swiglu" else [])
        dtype, (n_out, n_in) = self._check_weights(weights, "bind_mlp"), fc_weight.shape
        bf16 = dtype is torch.bfloat16
        biases = [None if b is None else b.detach().float().contiguous() for b in (fc_bias, gate_bias)]
        scratch = torch.empty(2 * n_out + (n_in if bf16 else 0), dtype=torch.float32)  # the sums, the input split
        ptrs = [None if t is None else t.data_ptr() for t in (fc_weight, biases[0], gate_weight, biases[1])]
        s_ptr, call, single = scratch.data_ptr(), self._mlp, fc_weight.numel() * len(weights) < PARALLEL_MIN
        nm, nm_keep = (None, ()) if norm is None else norm.bind(n_in, dtype)
        num_threads = torch.get_num_threads

        def hidden(x: torch.Tensor) -> torch.Tensor:
            x = one_row(x, n_in, dtype, "the MLP")
            y = torch.empty(*x.shape[:-1], n_out, dtype=dtype)  # (..., out)
            call(*ptrs, x.data_ptr(), y.data_ptr(), n_out, n_in, 1 if single else num_threads(), s_ptr, act_id,
                 int(bf16), nm)
            return y

        # the addresses above stay valid while `hidden` lives (detached views: their storage even if a
        # parameter's .data is replaced)
        hidden.keep_alive = (*(w.detach() for w in weights), *biases, scratch, *nm_keep)
        return hidden

    def bind_normed(self, weight: torch.Tensor, bias: torch.Tensor | None,
                    norm: RowNorm) -> Callable[[torch.Tensor], torch.Tensor]:
        """`product(x)`: `norm(x) @ weight.T + bias` for one row x (..., in) in one call (gemv.c's
        `scratchllm_gemv_normed`: a block's norm and the product after it), as `norm` then `bind`'s product
        compute it. Weight (out, in) contiguous fp32 or bf16, or stored (in, out) as `bind` takes it (`takes`), x of
        its dtype; the bias taken as it is now."""
        transposed = self.takes(weight) and not weight.is_contiguous()
        dtype = weight.dtype if transposed else self._check_weights([weight], "bind_normed")
        n_out, n_in = weight.shape
        bf16 = dtype is torch.bfloat16
        b32 = None if bias is None else bias.detach().float().contiguous()
        num_threads = torch.get_num_threads
        if transposed:  # gemv_t's partial rows, as in `bind`
            most = max(torch.get_num_threads(), os.cpu_count() or 1)
            scratch = torch.empty(most * n_out, dtype=torch.float32)

            def num_threads() -> int:
                return min(torch.get_num_threads(), most)
        else:  # bf16: the row split in even/odd halves
            scratch = torch.empty(n_in, dtype=torch.float32) if bf16 else None
        w_ptr, b_ptr, s_ptr = weight.data_ptr(), None if b32 is None else b32.data_ptr(), None
        if scratch is not None:
            s_ptr = scratch.data_ptr()
        nm, nm_keep = norm.bind(n_in, dtype)
        call, single = self._normed, weight.numel() < PARALLEL_MIN

        def product(x: torch.Tensor) -> torch.Tensor:
            x = one_row(x, n_in, dtype, "gemv")
            y = torch.empty(*x.shape[:-1], n_out, dtype=dtype)  # (..., out)
            call(w_ptr, x.data_ptr(), b_ptr, y.data_ptr(), n_out, n_in, 1 if single else num_threads(), s_ptr, nm,
                 int(bf16), int(transposed))
            return y

        product.keep_alive = (weight.detach(), b32, scratch, *nm_keep)  # (as bind_mlp's)
        return product

    def _check_weights(self, weights: list[torch.Tensor], what: str) -> torch.dtype:
        """The dtype of `weights`, contiguous CPU fp32 or bf16 matrices of one dtype and shape; else a ValueError."""
        first = weights[0]
        if first.dtype not in self._fns or any(w.dtype is not first.dtype or not w.is_cpu or not w.is_contiguous()
                                               or w.shape != first.shape or w.dim() != 2 for w in weights):
            raise ValueError(f"{what} takes contiguous CPU fp32 or bf16 weights of one shape and dtype; got "
                             + ", ".join(f"{tuple(w.shape)} {w.dtype} on {w.device}" for w in weights))
        return first.dtype

    def bind_q8(self, qweight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None,
                isa: str | None = None, rows: int = 1, norm: RowNorm | None = None) -> Callable[..., torch.Tensor]:
        """`product(x, add=None, out=None)`: `x @ (qweight * scales).T + bias (+ add)` for up to `rows` fp32 rows
        x (..., in), each quantized as `quantize_input` does: int8 weights (out, in), one fp32 scale per row (scales
        (out, 1)), read in place. `isa`: the path (see `isa`). add, out, norm: see `_bind_quantized`."""
        out, n_in = qweight.shape
        if (qweight.dtype != torch.int8 or scales.dtype != torch.float32 or scales.numel() != out
                or not (qweight.is_contiguous() and scales.is_contiguous()) or qweight.device.type != "cpu"):
            raise ValueError(f"gemv int8 takes a contiguous CPU int8 weight and {out} fp32 scales; got "
                             f"{qweight.dtype} {tuple(qweight.shape)}, scales {scales.dtype} {tuple(scales.shape)}")
        return self._bind_quantized(self._q8, (qweight, scales, None), 0, out, n_in, bias, isa, rows, "int8", norm)

    def bind_q4(self, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group: int,
                bias: torch.Tensor | None = None, isa: str | None = None, rows: int = 1,
                norm: RowNorm | None = None) -> Callable[..., torch.Tensor]:
        """`product(x, add=None, out=None)`: `x @ W.T + bias (+ add)` for up to `rows` fp32 rows x (..., in), each
        quantized as `quantize_input` does,
        W int4 group-wise IN THE KERNEL LAYOUT (`to_kernel_layout` of model.quant_linear's format): qweight
        (out, in / 2) uint8 (two weights a byte, the even one low), scales (out, in / group) fp32, zeros
        (out, in / group) uint8 or None (symmetric: 8); group a multiple of 32. Read in place. `isa`: the path
        (see `isa`). add, out, norm: see `_bind_quantized`."""
        out, n_in = qweight.shape[0], qweight.shape[1] * 2
        groups = n_in // group if group > 0 else 0
        ok = (qweight.dtype == torch.uint8 and scales.dtype == torch.float32 and group % 32 == 0 and group > 0
              and n_in % group == 0 and tuple(scales.shape) == (out, groups) and qweight.device.type == "cpu"
              and qweight.is_contiguous() and scales.is_contiguous()
              and (zeros is None or (zeros.dtype == torch.uint8 and tuple(zeros.shape) == (out, groups)
                                     and zeros.is_contiguous())))
        if not ok:
            raise ValueError(f"gemv int4 takes contiguous CPU uint8 (out, in/2), fp32 scales and uint8 zeros "
                             f"(out, in/group), group a multiple of 32; got {tuple(qweight.shape)} "
                             f"{qweight.dtype}, scales {tuple(scales.shape)}, group {group}")
        return self._bind_quantized(self._q4, (qweight, scales, zeros), group, out, n_in, bias, isa, rows, "int4",
                                    norm)

    def _bind_quantized(self, fn, tensors: tuple, group: int, out: int, n_in: int, bias: torch.Tensor | None,
                        isa: str | None, rows: int, what: str,
                        norm: RowNorm | None = None) -> Callable[..., torch.Tensor]:
        """The product of bind_q8/bind_q4, `product(x, add=None, out=None)`: x (..., in) fp32 of up to `rows` rows ->
        (..., out) fp32, one C call with the weights' addresses and sizes set once (gemv.c's `struct q_weights`).
        add: a residual (..., out) fp32 added to the result (`x @ W.T + b + add`, as torch's `y + add`); out: the
        tensor written (default a new one; may be `add` itself: an in-place residual). `norm`: each row is
        normalized by it first (see `RowNorm`; fp32), in the same call, as `norm` then the product compute it."""
        b32 = None if bias is None else bias.detach().float().contiguous()
        scratch = torch.empty(rows * self._scratch_bytes(n_in) + 64, dtype=torch.uint8)  # quantized rows (+ align)
        ptrs = [0 if t is None else t.data_ptr() for t in (*tensors, b32, scratch)]
        weights = _QWeights(*ptrs, out, n_in, group, self.isa(isa))
        call = ctypes.addressof(weights)
        nm, nm_keep = (None, ()) if norm is None else norm.bind(n_in, torch.float32)
        n_out = out

        def product(x: torch.Tensor, add: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
            if x.dtype is not torch.float32 or not x.is_cpu or x.shape[-1] != n_in or not 0 < x.numel() <= rows * n_in:
                raise ValueError(f"gemv {what} takes 1 to {rows} CPU fp32 rows of {n_in}; got x {tuple(x.shape)} "
                                 f"{x.dtype}")
            xc = x if x.is_contiguous() else x.contiguous()
            nx = x.numel() // n_in
            if add is None and out is None:  # the plain product (checks below skipped: each call counts)
                y = torch.empty(*x.shape[:-1], n_out)  # (..., out) fp32
                fn(call, xc.data_ptr(), y.data_ptr(), nx, torch.get_num_threads(), None, nm)
                return y
            for t, name in ((add, "residual"), (out, "out")):
                if t is not None and (t.dtype is not torch.float32 or t.numel() != nx * n_out or not t.is_cpu
                                      or not t.is_contiguous()):
                    raise ValueError(f"gemv {what}'s {name} must be a contiguous CPU fp32 tensor of {nx} rows of "
                                     f"{n_out}; got {tuple(t.shape)} {t.dtype}")
            y = torch.empty(*x.shape[:-1], n_out) if out is None else out  # (..., out) fp32
            fn(call, xc.data_ptr(), y.data_ptr(), nx, torch.get_num_threads(), None if add is None else add.data_ptr(),
               nm)
            return y

        product.weights = weights  # for `bind_mlp_quantized`, which reads two layers' weights in one call
        product.keep_alive = (*tensors, b32, scratch, weights, *nm_keep)  # the addresses above stay valid
        return product

    def bind_mlp_quantized(self, fc: Callable[..., torch.Tensor], act: str,
                           gate: Callable[..., torch.Tensor] | None = None,
                           norm: RowNorm | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """`hidden(x)`: as `bind_mlp`'s, for quantized weights: `fc` and `gate` are products of `bind_q8` or
        `bind_q4` (both the same scheme and shape), act "swiglu" (with `gate`) or "gelu_tanh"/"gelu"; one fp32
        row x (..., in) in one call (gemv.c's `scratchllm_mlp_q`: the norm, the input quantized once for both
        products, the products, the activation), as the separate calls compute it."""
        act_id = MLP_ACTS.get(act)
        f = fc.weights
        g = None if gate is None else gate.weights
        if act_id is None or (act == "swiglu") != (gate is not None) or (
                g is not None and (g.out, g.n_in, g.group) != (f.out, f.n_in, f.group)):
            raise ValueError(f"bind_mlp_quantized takes act one of {', '.join(MLP_ACTS)}, and a gate of fc's scheme "
                             f"and shape exactly for swiglu; got act {act!r}, gate {gate is not None}")
        n_out, n_in = f.out, f.n_in
        sums = torch.empty(2 * n_out, dtype=torch.float32)
        nm, nm_keep = (None, ()) if norm is None else norm.bind(n_in, torch.float32)
        f_ptr, g_ptr, s_ptr, call = ctypes.addressof(f), None if g is None else ctypes.addressof(g), sums.data_ptr(), \
            self._mlp_q

        def hidden(x: torch.Tensor) -> torch.Tensor:
            if x.numel() != n_in or x.dtype is not torch.float32 or not x.is_cpu:
                raise ValueError(f"the quantized MLP takes one CPU fp32 row of {n_in}; got x {tuple(x.shape)} "
                                 f"{x.dtype} on {x.device}")
            if not x.is_contiguous():
                x = x.contiguous()
            y = torch.empty(*x.shape[:-1], n_out)  # (..., out) fp32
            call(f_ptr, g_ptr, x.data_ptr(), y.data_ptr(), torch.get_num_threads(), act_id, nm, s_ptr)
            return y

        hidden.keep_alive = (fc, gate, sums, *nm_keep)  # (the products keep their weights' addresses valid)
        return hidden


def one_row(x: torch.Tensor, n_in: int, dtype: torch.dtype, what: str) -> torch.Tensor:
    """`x` as a one-row call reads it: one contiguous CPU row of `n_in` values of `dtype`; else a ValueError that
    names the call (`what`)."""
    if x.numel() != n_in or x.dtype is not dtype or not x.is_cpu:
        raise ValueError(f"{what} takes one CPU row of {n_in} of its weights' dtype ({dtype}); "
                         f"got x {tuple(x.shape)} {x.dtype} on {x.device}")
    return x if x.is_contiguous() else x.contiguous()


class RowNorm:
    """A norm that a bound product applies to its input row first (`Kernel.bind_normed`, `Kernel.bind_mlp`): RMSNorm
    (`rms`) or LayerNorm with `weight` (n,), `bias` (n,) or None, `eps`; computed as `Kernel.norm` computes it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, rms: bool) -> None:
        self.weight, self.bias, self.eps, self.rms = weight, bias, eps, rms

    def bind(self, n: int, dtype: torch.dtype) -> tuple[int, tuple]:
        """gemv.c's `struct row_norm` for rows of `n` values of `dtype`: its address, and what keeps it valid."""
        w, b = self.weight.detach(), None if self.bias is None else self.bias.detach()
        if any(t is not None and (t.dtype is not dtype or t.numel() != n or not t.is_cpu or not t.is_contiguous())
               for t in (w, b)):
            raise ValueError(f"a norm of rows of {n} {dtype} takes contiguous CPU weight and bias of that size and "
                             f"dtype; got weight {tuple(w.shape)} {w.dtype}")
        row = torch.empty(n, dtype=dtype)  # the normalized row, which the product reads
        s = _RowNorm(w.data_ptr(), None if b is None else b.data_ptr(), row.data_ptr(), self.eps, int(self.rms))
        return ctypes.addressof(s), (w, b, row, s)


class _RowNorm(ctypes.Structure):
    """gemv.c's `struct row_norm`."""

    _fields_ = [("w", ctypes.c_void_p), ("b", ctypes.c_void_p), ("row", ctypes.c_void_p), ("eps", ctypes.c_float),
                ("rms", ctypes.c_int)]


class _QWeights(ctypes.Structure):
    """gemv.c's `struct q_weights`: one quantized layer's fixed arguments."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("w", "scales", "zeros", "b", "scratch")] + [
        (name, ctypes.c_long) for name in ("out", "n_in", "group", "isa")]


def quantize_input(x: torch.Tensor) -> torch.Tensor:
    """The fp32 row (..., in) as the quantized products see it: in blocks of QBLOCK values along the last
    dimension (the last block may be shorter), step d = max|x| / 127, q = round(x * (1 / d)) (half to
    even), x' = q * d. The C code's arithmetic in torch (the tests' and the self-check's reference)."""
    n_in = x.shape[-1]
    pad = -n_in % QBLOCK
    xp = F.pad(x.float(), (0, pad)).view(*x.shape[:-1], -1, QBLOCK)  # (..., blocks, QBLOCK)
    d = xp.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.round(xp * inv)
    return (q * d).flatten(-2)[..., :n_in]


# --- the int4 kernel layout (gemv.c's "quantized weights" comment): rows in blocks of QROWS, each block stored
# chunk by chunk (chunk c of each of its rows, then chunk c + 1); chunks of 4 bytes for the packed weights
# (8 weights), of 1 value for scales and zero points (a block's scales group by group).
QROWS = 16  # rows side by side (gemv.c's QROWS: one AVX-512 register of int32 sums)
Q4_CHUNKS = {"qweight": 4, "scales": 1, "zeros": 1}  # values per chunk, by model.quant_linear's buffer names


def _blocks(t: torch.Tensor, chunk: int):
    """(out, n) -> its whole blocks of QROWS rows and its last partial block: (rows from, rows to, t) each."""
    out = t.shape[0]
    full = out // QROWS * QROWS
    return [(0, full, QROWS)] * (full > 0) + [(full, out, out - full)] * (out > full)


ALIGN = 64  # bytes: a cache line, and an AVX-512 register


def align_in_place(t: torch.Tensor) -> None:
    """Move t's data to ALIGN-byte-aligned memory when it is not there, in place (every holder of t sees it): a
    tensor memory-mapped from a safetensors file starts wherever the file's header left it, and the kernel's
    vector loads from it would straddle two cache lines. (The int4 kernel layout is a fresh copy, so aligned.)
    Measured on the demo model's int4 step: 10-15% slower from a misaligned file's buffers than from aligned
    ones; fp32 weights, read as long rows, showed no difference, and are left where the file maps them."""
    if t.data_ptr() % ALIGN:
        with torch.no_grad():
            t.set_(t.clone(memory_format=torch.contiguous_format))


def to_kernel_layout(t: torch.Tensor, chunk: int) -> torch.Tensor:
    """A copy of t (out, n) (model.quant_linear's row-major format) whose memory is in the kernel layout, chunks of
    `chunk` values (n a multiple of it); same shape and dtype."""
    out, n = t.shape
    res = torch.empty_like(t, memory_format=torch.contiguous_format)
    for a, b, k in _blocks(t, chunk):  # (blocks, k rows, n / chunk, chunk) -> (blocks, n / chunk, k rows, chunk)
        res[a:b].view(-1, n // chunk, k, chunk).copy_(t[a:b].reshape(-1, k, n // chunk, chunk).transpose(1, 2))
    return res


def from_kernel_layout(t: torch.Tensor, chunk: int) -> torch.Tensor:
    """`to_kernel_layout`'s inverse: a copy of t in the row-major format."""
    out, n = t.shape
    res = torch.empty_like(t, memory_format=torch.contiguous_format)
    for a, b, k in _blocks(t, chunk):
        res[a:b].view(-1, k, n // chunk, chunk).copy_(t[a:b].reshape(-1, n // chunk, k, chunk).transpose(1, 2))
    return res


def kernel_layout_rows(t: torch.Tensor, idx: torch.Tensor, chunk: int) -> torch.Tensor:
    """Rows idx (N,) of t (out, n) held in the kernel layout, as row-major rows (N, n) (a gather)."""
    out, n = t.shape
    full = out // QROWS * QROWS
    if full == out or bool((idx < full).all()):  # rows of whole blocks only (a decode step's token, mostly)
        blocks = t[:full].view(-1, n // chunk, QROWS, chunk)  # (blocks, chunks, rows, chunk)
        return blocks[idx // QROWS, :, idx % QROWS].reshape(-1, n)  # (N, chunks, chunk) -> (N, n)
    block = torch.div(idx, QROWS, rounding_mode="floor")
    k = torch.where(block * QROWS + QROWS <= out, QROWS, out - full)  # rows in each row's block
    j = torch.arange(n, device=t.device)
    flat = (block * QROWS * n + (idx - block * QROWS) * chunk)[:, None] + (j // chunk * chunk)[None] * k[:, None] \
        + (j % chunk)[None]  # (N, n)
    return t.reshape(-1)[flat]


def compiler() -> str | None:
    """The C compiler to build with: $CC, else the first of cc, gcc, clang on PATH."""
    if os.environ.get("CC"):
        return os.environ["CC"]
    return next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def cpu_key() -> str:
    """This CPU's part of a library's name: its identity (model name and flags), hashed."""
    return _digest(cpu_identity(), 8)


def library_path(cc: str, flags: tuple[str, ...]) -> Path:
    """Where the library built by `cc` with `flags` for this CPU lives: one file per CPU identity
    (model name and flags) and build (source, compiler, flags)."""
    build = "\0".join([SOURCE.read_text(), cc, " ".join(flags)])
    return cache_dir() / "kernels" / f"gemv-{cpu_key()}-{_digest(build, 12)}.so"


def prune(keep: list[Path]) -> list[Path]:
    """Remove this CPU's libraries (`gemv-<this cpu>-*.so`) beside `keep` other than those in `keep`
    (the one in use and the other flag sets' of the same build); returns the files removed. Another
    CPU's libraries are never touched, and a file that cannot be removed is left (a process that has
    one loaded keeps its copy: removing only unlinks the name)."""
    if not keep:
        return []
    folder = keep[0].parent
    removed = []
    for path in sorted(folder.glob(f"gemv-{cpu_key()}-*.so")):
        if path in keep:
            continue
        try:
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def _compile(cc: str, flags: tuple[str, ...], dest: Path) -> str | None:
    """Build the library at `dest` (via a temp file and a rename); None on success, else why not."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".gemv-", suffix=".so")
        os.close(fd)
    except OSError as e:
        return f"cannot write to the kernel cache {dest.parent}: {e}"
    try:
        run = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                             timeout=COMPILE_TIMEOUT)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no message"])[-1]
            return f"{cc} {' '.join(flags)} failed: {last}"
        os.replace(tmp, dest)
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"{cc} could not run: {e}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _self_check(kernel: Kernel) -> str | None:
    """Compare with F.linear on shapes that take every code path (rows in streams, leftover rows and columns),
    weights stored (out, in) and (in, out)."""
    g = torch.Generator().manual_seed(0)
    for out, n_in, with_bias in [(67, 53, True), (40, 64, False), (5, 16, True), (98, 37, True)]:
        stored, x = torch.randn(out, n_in, generator=g), torch.randn(n_in, generator=g)
        b = torch.randn(out, generator=g) if with_bias else None
        for w, layout in ((stored, "(out, in)"), (stored.t().contiguous().t(), "(in, out)")):
            if not torch.allclose(kernel(w, x, b), F.linear(x, w, b), rtol=1e-4, atol=1e-4):
                return f"its result differs from F.linear for a {out}x{n_in} matrix stored {layout}"
            w16, x16 = w.bfloat16(), x.bfloat16()  # bf16: the same sums in fp32 over the bf16 values
            if not kernel.takes(w16):
                continue
            b16 = b.bfloat16() if b is not None else None
            want = F.linear(x16.float(), w16.float(), b16.float() if b16 is not None else None)
            if not torch.allclose(kernel(w16, x16, b16).float(), want, rtol=1e-2, atol=1e-2):
                return f"its bf16 result differs from F.linear for a {out}x{n_in} matrix stored {layout}"
    return _self_check_quantized(kernel, g)


def _self_check_glue(kernel: Kernel) -> str | None:
    """A decode step's glue (the norms, the MLP's activations, whose vector code the compiler shapes for this CPU)
    against torch on one small shape (leftover lanes included), in fp32."""
    g = torch.Generator().manual_seed(1)
    n_in, out = 53, 67
    x, w, b = torch.randn(n_in, generator=g), torch.rand(n_in, generator=g) + 0.5, torch.randn(n_in, generator=g)
    if not (torch.allclose(kernel.norm(x, w, None, 1e-5, True), w * x * torch.rsqrt(x.pow(2).mean() + 1e-5),
                           rtol=1e-4, atol=1e-5)
            and torch.allclose(kernel.norm(x, w, b, 1e-5, False), F.layer_norm(x, (n_in,), w, b, 1e-5),
                               rtol=1e-4, atol=1e-5)):
        return "its one-row norm differs from torch's"
    wf, wg, bf = torch.randn(out, n_in, generator=g), torch.randn(out, n_in, generator=g), torch.randn(out, generator=g)
    f = F.linear(x, wf, bf)
    for act, want in [("swiglu", F.silu(F.linear(x, wg)) * f), ("gelu_tanh", F.gelu(f, approximate="tanh")),
                      ("gelu", F.gelu(f))]:
        got = kernel.bind_mlp(wf, bf, act, wg if act == "swiglu" else None)(x)
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            return f"its MLP activation {act} differs from torch's"
    return None


def _self_check_quantized(kernel: Kernel, g: torch.Generator) -> str | None:
    """The int8 and int4 products, by every path this CPU runs, against F.linear of the dequantized weight
    and the input as the kernel quantizes it (`quantize_input`; model.quant_linear's format)."""
    from scratchllm.model.quant_linear import dequantize

    for out, n_in, group in [(67, 64, 32), (9, 96, 96), (5, 128, 64), (6, 160, 32)]:
        x, b = torch.randn(n_in, generator=g), torch.randn(out, generator=g)
        xq = quantize_input(x)
        q8 = torch.randint(-127, 128, (out, n_in), generator=g, dtype=torch.int8)
        s8 = torch.rand(out, 1, generator=g) + 0.1
        q4 = torch.randint(0, 256, (out, n_in // 2), generator=g, dtype=torch.uint8)
        s4 = torch.rand(out, n_in // group, generator=g) + 0.1
        for isa in kernel.isas:
            if not torch.allclose(kernel.bind_q8(q8, s8, b, isa)(x), F.linear(xq, dequantize(q8, s8), b),
                                  rtol=1e-3, atol=1e-3):
                return f"its int8 result ({isa}) differs from F.linear for a {out}x{n_in} matrix"
            for z in (None, torch.randint(0, 16, (out, n_in // group), generator=g, dtype=torch.uint8)):
                want = F.linear(xq, dequantize(q4, s4, z, bits=4), b)
                z_k = None if z is None else to_kernel_layout(z, 1)
                got = kernel.bind_q4(to_kernel_layout(q4, 4), to_kernel_layout(s4, 1), z_k, group, b, isa)(x)
                if not torch.allclose(got, want, rtol=1e-3, atol=1e-3):
                    return f"its int4 result ({isa}) differs from F.linear for a {out}x{n_in} matrix, group {group}"
    return None


@functools.lru_cache(maxsize=1)
def _build() -> tuple[Kernel | None, str]:
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        return None, f"turned off by {DISABLE_ENV}"
    cc = compiler()
    if cc is None:
        return None, "no C compiler (set CC, or install cc/gcc/clang)"
    errors = []
    for flags in FLAG_SETS:
        try:
            path = library_path(cc, flags)
        except OSError as e:  # the source file missing from an installation
            return None, f"cannot read {SOURCE}: {e}"
        built = not path.exists()
        if built:
            err = _compile(cc, flags, path)
            if err:
                errors.append(err)
                continue
        try:
            kernel = Kernel(path)
        except (OSError, AttributeError) as e:
            errors.append(f"{path} did not load: {e}")
            continue
        err = _self_check(kernel) or _self_check_glue(kernel)
        if err:
            errors.append(err)
            continue
        if built:  # a new build: this CPU's libraries of older builds are no longer used
            prune([library_path(cc, f) for f in FLAG_SETS])
        return kernel, f"compiled C kernel {path}"
    return None, "; ".join(errors)


def load() -> Kernel | None:
    """The kernel, built and checked on first call (then cached for the process); None where unavailable."""
    return _build()[0]


def status() -> str:
    """One line: where the kernel was loaded from, or why it is not used."""
    kernel, why = _build()
    return why if kernel is not None else f"not used: {why}"
