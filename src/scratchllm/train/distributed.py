"""Scale-out: one training job on many processes (GPUs, nodes), through PyTorch's own engine.

`torchrun --nproc-per-node N -m scratchllm train ...` (or `scratchllm train --nproc N`) starts N
copies of the job; torchrun gives each its `RANK`, `LOCAL_RANK`, `WORLD_SIZE` and the rendezvous
address. Here each copy:

- joins the process group (`setup`): gloo on the CPU, NCCL on CUDA with the device `cuda:LOCAL_RANK`,
  and a timeout (`train.dist_timeout`) so that a collective waiting on a dead rank fails instead of
  hanging (torchrun ends the others when one process exits with an error);
- wraps the model (`wrap`): `ddp` (DistributedDataParallel: every rank holds the whole model, the
  gradients are all-reduced, averaged) or `fsdp` (FSDP2, `torch.distributed.fsdp.fully_shard`: each
  transformer block and then the rest are sharded across ranks; parameters all-gathered for the
  forward and backward, gradients reduce-scattered, optimizer state sharded; optional
  `MixedPrecisionPolicy` and `CPUOffloadPolicy`). Both wrap a `LossModule`, so that any loss function
  (one that calls `model.features`, say) runs inside the wrapper's forward, where DDP prepares its
  gradient reduction and FSDP gathers the root's parameters;
- takes its rows of each batch (`local_rows`): `train.batch_size` is the micro-batch of the whole job,
  and rank r of N takes rows [r*B/N, (r+1)*B/N). Every rank draws the same global batches, so the data
  position in a checkpoint is the job's, and a run resumes with any number of processes;
- skips the gradient reduction on all but the last micro-batch of an accumulation (`no_sync`:
  DDP's `no_sync()`, FSDP's `set_requires_gradient_sync(False)`);
- clips by the global gradient norm (`clip_grad_norm`: under FSDP each rank holds a shard of each
  gradient, and the norm is reduced across ranks before clipping).

The logged loss is the job's (the mean over ranks, `mean_over_ranks`); rank 0 alone writes logs,
plots and the model card (`is_main`), every rank runs the same evaluation. A job's run folder is
claimed and locked by rank 0 alone, which tells the others which it is (`claimed_folder`); ranks
other than 0 print nothing (`only_main_prints`). Nothing here is imported
when `train.strategy` is "none": a single process pays no import or call for it.

References: PyTorch's DDP notes (https://pytorch.org/docs/stable/notes/ddp.html), FSDP2
(https://pytorch.org/docs/stable/distributed.fsdp.fully_shard.html), torchrun
(https://pytorch.org/docs/stable/elastic/run.html), torchtitan's use of both.
Not here: sharded checkpoints (`train.checkpoint`), the loop (`train.loop`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from scratchllm.config.train import STRATEGIES
from scratchllm.errors import ConfigError, UserError


# --- who am I ---------------------------------------------------------------------------------------
def launched() -> bool:
    """True in a process started by torchrun (or any launcher that sets WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Rank 0 (or a single process): the one that logs, plots, writes checkpoints' shared files and cards."""
    return rank() == 0


def active() -> bool:
    """A process group of more than one process is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def device_for(name: str) -> torch.device:
    """The device of this rank: `cuda:LOCAL_RANK` when CUDA is asked for (or "auto" finds it), else the CPU."""
    from scratchllm.runtime import pick_device

    dev = pick_device(name)
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} has no GPU: this node has {torch.cuda.device_count()}; "
                            f"start at most that many processes per node (torchrun --nproc-per-node)")
        return torch.device("cuda", local)
    if dev.type == "mps":
        raise UserError("train.strategy ddp/fsdp runs on CPUs (gloo) or CUDA GPUs (NCCL), not MPS; "
                        "use --device cpu or train.strategy none")
    return dev


def setup(strategy: str, device: str = "auto", timeout: float = 300.0) -> torch.device:
    """Join the job's process group (once per process) and return this rank's device.

    Gloo for the CPU, NCCL for CUDA (`cuda:LOCAL_RANK` becomes the current device). `timeout`: seconds
    a collective may wait for the other ranks before it fails (a dead rank then ends the job instead
    of hanging it). Without torchrun's environment the job is one process: no group is made.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"train.strategy {strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
    dev = device_for(device)
    if dist.is_initialized() or not launched():
        return dev
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout),
                            device_id=dev if dev.type == "cuda" else None)
    return dev


# What a collective raises when another rank died or hangs (gloo's and NCCL's words, and the timeout's).
LOST = ("Connection reset", "Connection closed", "connection closed", "Broken pipe", "Timed out", "timed out",
        "Timeout", "NCCL communicator was aborted", "DistNetworkError")


def lost_contact(e: BaseException) -> UserError | None:
    """A UserError for a collective that failed because another rank died or hangs (None for other errors)."""
    text = str(e)
    if not (isinstance(e, dist.DistError) or any(word in text for word in LOST)):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    if len(first) > 160:
        first = first[:157] + "..."
    return UserError(f"rank {rank()} lost contact with another process of this job ({first}); it failed, was "
                     f"stopped or hangs. Continue "
                     f"from the last checkpoint with --resume")


def teardown(done: bool = False) -> None:
    """Leave the process group (at the end of the job). `done` (the job's block ended without an error): every rank
    first waits for the others to finish, so none leaves while another still works with it. Measured on the tests'
    2-process FSDP jobs, whose rank 0 writes its outputs last: without the barrier about 1 run in 4 of those tests
    had a rank abort at exit ("terminate called without an active exception", after every file was written); with
    it, none in 16 jobs.
    After an error there is no barrier: a rank that died would hold the others until the timeout."""
    if dist.is_available() and dist.is_initialized():
        if done:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def claimed_folder(claim: Callable[[], Any]) -> Iterator[Path]:
    """`with claimed_folder(claim) as folder:` the job's run folder on every rank.

    Rank 0 (or a single process) calls `claim()`, which returns the folder's lock (`train.lock.RunLock`:
    a new folder, or the one to resume), holds it for the `with` block and sends the folder's path to
    the other ranks, which take no lock (one folder, one writer; `train.run.Run(main=False)`). When
    rank 0's claim fails (a busy or unwritable folder), the others stop with a line that points at
    rank 0's error."""
    if not active():
        with claim() as folder:
            yield folder
        return
    if is_main():
        lock = None
        try:
            lock = claim()
        finally:  # the others wait for the path; an error is sent as None
            broadcast_object(str(lock.folder) if lock is not None else None)
        with lock as folder:
            yield folder
        return
    path = broadcast_object(None)
    if path is None:
        raise UserError("rank 0 could not claim the run folder; see its error")
    yield Path(path)


@contextlib.contextmanager
def job(strategy: str, device: str, timeout: float) -> Iterator[None]:
    """`with job(strategy, device, timeout):` a torchrun job's process group for the block (`setup`), torn down
    however the block ends; a lost peer (a rank that died) becomes its one clear error (`lost_contact`)."""
    setup(strategy, device, timeout)
    done = False
    try:
        yield
        done = True
    except RuntimeError as e:
        lost = lost_contact(e)
        if lost is None:
            raise
        raise lost from None
    finally:
        teardown(done)


@contextlib.contextmanager
def only_main_prints() -> Iterator[None]:
    """On ranks other than 0: what the job prints goes nowhere and warnings are not shown (rank 0 says
    each once); errors still reach stderr. On rank 0, nothing changes."""
    if is_main():
        yield
        return
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- the model --------------------------------------------------------------------------------------
class LossModule(nn.Module):
    """`forward(fn, *args) = fn(model, *args)`: DDP and FSDP wrap this, so any function of the model
    (a loss that calls `model.features`, an evaluation) runs inside the wrapper's forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.model, *args)


def wrap(model: nn.Module, config: Any, device: torch.device) -> nn.Module:
    """`model` inside a LossModule wrapped for `config.strategy` ("ddp" or "fsdp"); `model` itself stays
    the module the optimizer, checkpoints and samples see (under FSDP its parameters become DTensor
    shards). Call with the model on `device`, before the optimizer is built."""
    outer = LossModule(model)
    if config.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(outer, device_ids=ids)
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    from scratchllm.runtime import torch_dtype

    mp = MixedPrecisionPolicy()
    if config.fsdp_param_dtype != "fp32":
        # parameters all-gathered and computed in this dtype; gradients reduced in fp32 (the sharded
        # fp32 parameters stay the optimizer's master weights)
        mp = MixedPrecisionPolicy(param_dtype=torch_dtype(config.fsdp_param_dtype), reduce_dtype=torch.float32)
    # (pinned memory, for fast copies to the GPU, needs one: a CPU job's offload copies nothing)
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if config.fsdp_cpu_offload else OffloadPolicy()
    kw = {"mp_policy": mp, "offload_policy": offload}
    # FSDP shards contiguous parameters only: an imported GPT-2's Conv1D matrices (transposed views of the
    # file, interop.hf) are copied into nn.Linear's layout first (this rank keeps only its shard of them)
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_contiguous():
                p.data = p.data.contiguous()
    blocks = getattr(model, "blocks", None)
    for block in blocks if blocks is not None else ():
        fully_shard(block, reshard_after_forward=config.fsdp_reshard_after_forward, **kw)
    # the root: embeddings, final norm, head (tied weights stay one parameter); kept gathered after the
    # forward, since the backward needs it first
    fully_shard(outer, reshard_after_forward=False, **kw)
    return outer


def inner(wrapped: nn.Module) -> nn.Module:
    """The model a wrapper holds (DDP's `.module`, then the LossModule's `.model`)."""
    m = getattr(wrapped, "module", wrapped)
    return m.model if isinstance(m, LossModule) else m


def is_sharded(model: nn.Module) -> bool:
    """Whether `model`'s parameters are FSDP shards (DTensors)."""
    from scratchllm.train.checkpoint import is_sharded as sharded

    return sharded(model)


@contextlib.contextmanager
def no_sync(wrapped: nn.Module, skip: bool) -> Iterator[None]:
    """With `skip`, this backward keeps its gradients local (no all-reduce or reduce-scatter): the
    micro-batches of an accumulation before the last."""
    if not skip:
        yield
        return
    if hasattr(wrapped, "no_sync"):  # DDP
        with wrapped.no_sync():
            yield
        return
    wrapped.set_requires_gradient_sync(False)  # FSDP2
    try:
        yield
    finally:
        wrapped.set_requires_gradient_sync(True)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Clip to `max_norm` by the norm of all gradients of the job; returns that norm (before clipping).

    Under FSDP each gradient is a DTensor shard: its norm is a partial value reduced across ranks
    (`full_tensor`), so every rank scales by the same global factor."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0, error_if_nonfinite=False, foreach=None)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


# --- data and metrics ---------------------------------------------------------------------------------
def local_rows(batch: Any, r: int, n: int) -> Any:
    """Rank `r` of `n`'s rows of a global batch: rows [r*B/n, (r+1)*B/n) of every tensor (tuples, lists,
    dicts nested). B must divide by n (`TrainConfig` checks batch_size; a batch source of its own must
    yield such batches). A batch whose rows belong together in another way (DPO's: the chosen rows,
    then the rejected rows of the same pairs) says how it splits: its own `local_rows(r, n)`."""
    if hasattr(batch, "local_rows"):
        return batch.local_rows(r, n)
    if hasattr(batch, "shape") and hasattr(batch, "__getitem__"):
        b = batch.shape[0]
        if b % n:
            raise UserError(f"a batch of {b} rows cannot be split evenly across {n} processes; make "
                            f"train.batch_size a multiple of the number of processes")
        k = b // n
        return batch[r * k:(r + 1) * k]
    if isinstance(batch, (list, tuple)):
        return type(batch)(local_rows(x, r, n) for x in batch)
    if isinstance(batch, dict):
        return {key: local_rows(v, r, n) for key, v in batch.items()}
    return batch


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over all ranks (the job's loss from each rank's part)."""
    t = value.detach().float().reshape(1).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t[0] / dist.get_world_size()


def all_reduce_max(t: torch.Tensor) -> None:
    """`t` becomes its element-wise maximum over ranks (in place)."""
    dist.all_reduce(t, op=dist.ReduceOp.MAX)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (e.g. the run folder rank 0 chose)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if not active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
