"""The one training loop: every kind of training in scratchllm runs through `train`.

`train(model, batches, loss_fn, config, eval_fn=..., hooks=..., run=...)` does the book's chapter 5
loop (`train_model_simple`) with what a real run needs: AdamW with decay on matrices only, warmup
and cosine/linear/constant schedules over steps or a time budget (`train.optim`), gradient
accumulation and clipping, bf16 autocast with fp32 master weights, optional torch.compile, periodic
evaluation (loss and perplexity), tokens/s and model FLOPs utilisation, a progress bar, JSONL
metrics and a loss plot, checkpoints, exact resume, Ctrl-C and SIGTERM that save, a time budget,
and a clear stop on a NaN or infinite loss.

It reads as one story, in phases (the methods of `_Training`): restore (or start fresh), then each
step (forward and backward over `grad_accum` micro-batches, clip, optimizer step), log, eval and
checkpoint when due, until a stop; then the end (a last evaluation and checkpoint).

The loop knows nothing about the objective: `pretrain` passes `lm_loss` (`train.losses`) and random
windows of tokens; any other objective passes its own `loss_fn(model, batch) -> scalar loss` and
batches.

Exact resume: a checkpoint holds the weights, AdamW's moments, the step, the torch and Python RNG
states and the batch iterator's position (`batches.state_dict()`), and the learning rate is a pure
function of the step (unless it decays over seconds), so on CPU a resumed run computes the same
losses, bit for bit.

Nothing process-wide is set here: threads, the allocator, TF32 and the global seeds are the job's
(`runtime.setup_process`, called by `train.pretrain`). The one RNG the steps draw from (torch's, for
dropout) is seeded with `config.seed` at step 0 (or restored from the checkpoint) in a fork of the
caller's: two fresh runs draw the same dropout masks, and the caller's RNG states are as they were
when `train` returns. The peak FLOP/s for MFU is measured once per machine (`runtime.peak_flops`).

Many processes (`config.strategy` "ddp" or "fsdp", started by torchrun): the model is wrapped
(`train.distributed.wrap`), each rank takes its rows of each global batch, the micro-batches before
the last of an accumulation skip the gradient reduction, clipping uses the job's gradient norm, the
logged loss is the job's, and the ranks agree on when to stop (a signal or time budget seen by one is
acted on by all at the same step). Rank 0 alone prints and writes; every rank runs the evaluation.
With "none" (the default) none of this is imported or run.

Not here: the losses (`train.losses`), the FLOPs formula (`model.info`), the run folder
(`train.run`), what to train on (`train.pretrain`).
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from scratchllm.errors import Aborted, UserError
from scratchllm.runtime import autocast, eval_mode, peak_flops, pick_device
from scratchllm.train.losses import lm_loss
from scratchllm.train.optim import build_optimizer, lr_at, set_lr

Hook = Callable[[str, "TrainState", dict], None]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class TrainState:
    """Where training is: saved in every checkpoint (all but `history` and `stop_reason`)."""

    step: int = 0
    tokens: int = 0
    elapsed: float = 0.0
    best_val: float | None = None
    last_eval: dict[str, Any] = field(default_factory=dict)
    # the step `last_eval` was measured at (-1: never)
    eval_step: int = -1
    # why the loop ended: "max_steps", "max_seconds", "data", "hook", or a signal: "interrupted"
    # (SIGINT, Ctrl-C) or "terminated" (SIGTERM: timeout, Docker, Slurm); a checkpoint is saved for each
    stop_reason: str = ""
    # folder of the last checkpoint saved or restored
    checkpoint: str | None = None
    # every evaluation of this process: dicts with step, elapsed, tokens and the losses
    history: list[dict[str, Any]] = field(default_factory=list)
    # a hook sets this to end training after the current step
    should_stop: bool = False

    def checkpoint_state(self) -> dict[str, Any]:
        """The fields a checkpoint keeps, as a JSON-ready dict (what `restore` reads back)."""
        d = asdict(self)
        for k in ("history", "stop_reason", "should_stop", "checkpoint"):
            d.pop(k)
        return d


# --- pieces the loop uses, small and testable -----------------------------------------------------
def to_device(batch: Any, device: Any) -> Any:
    """Move every tensor in a (nested) tuple/list/dict batch to `device`."""
    if hasattr(batch, "to"):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def count_tokens(batch: Any) -> int:
    """Tokens in a batch: elements of the first tensor (inputs), or of `input_ids` in a dict.

    >>> import torch
    >>> count_tokens((torch.zeros(4, 8), torch.zeros(4, 8)))
    32
    """
    if isinstance(batch, dict):
        batch = batch.get("input_ids", next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    return int(batch.numel()) if hasattr(batch, "numel") else 0


def resolve_precision(precision: str, device: Any) -> str:
    """"auto" -> bf16 where bf16 matmuls are native (CUDA GPUs that support it, CPUs with AVX512-BF16
    or AMX), else fp32 (see TrainConfig.precision)."""
    from scratchllm.runtime import fast_bf16_matmul

    if precision != "auto":
        return precision
    return "bf16" if fast_bf16_matmul(device) else "fp32"


def batch_eval_fn(splits: dict[str, Sequence[Any]], loss_fn: Callable[[Any, Any], Any] = lm_loss) -> Callable:
    """An `eval_fn` that returns `{"<split>_loss": mean loss, "<split>_ppl": its exp}` over fixed batches
    per split (perplexity: the losses are next-token cross-entropies, as pretraining's and
    instruction tuning's are; other objectives' eval_fns report what means something for them)."""

    def eval_fn(model: Any) -> dict[str, float]:
        device = next(model.parameters()).device
        out = {}
        for name, batches in splits.items():
            losses = [float(loss_fn(model, to_device(b, device))) for b in batches]
            loss = sum(losses) / max(1, len(losses))
            out[f"{name}_loss"] = loss
            out[f"{name}_ppl"] = math.exp(loss) if loss < 700 else float("inf")
        return out

    return eval_fn


def run_eval(model: Any, eval_fn: Callable, amp: Any) -> dict[str, float]:
    """Call `eval_fn` in eval mode without gradients; every value as a float."""
    import torch

    with eval_mode(model), torch.no_grad(), amp:
        out = dict(eval_fn(model))
    return {k: float(v) for k, v in out.items()}


def model_flops_per_token(model: Any, seq_len: int) -> float | None:
    """`model.info.train_flops_per_token` of a model built from a `ModelConfig` (None for any other
    model: its FLOPs are unknown, and no MFU is logged)."""
    from scratchllm.config.model import ModelConfig
    from scratchllm.model.info import train_flops_per_token

    config = getattr(model, "config", None)
    return float(train_flops_per_token(config, seq_len)) if isinstance(config, ModelConfig) else None


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (timeout, Docker, Slurm, systemd) ask the loop to stop: it finishes
    the step, saves a checkpoint and returns with `stop_reason` "interrupted" or "terminated".
    A second signal of either kind aborts at once (`errors.Aborted`, a KeyboardInterrupt that names
    the signal, so the exit code follows it). Handlers are installed only
    in the main thread, and the previous ones are put back on exit."""

    REASONS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}

    def __init__(self) -> None:
        self.reason = ""
        self.old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in self.REASONS:
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.reason:
            raise Aborted(signum)
        self.reason = self.REASONS[signum]
        from tqdm import tqdm

        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        tqdm.write(f"{self.reason}: finishing this step and saving a checkpoint ({again} again to abort)")

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def _own_rng(device: Any) -> Iterator[None]:
    """Torch's and Python's global RNG states are given back on exit as they were on entry: what the
    loop seeds, draws (dropout) and restores from a checkpoint stays inside."""
    import torch

    python_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=None if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python_state)


# --- the loop ---------------------------------------------------------------------------------------
def train(model: Any, batches: Iterable[Any], loss_fn: Callable[[Any, Any], Any], config: Any, *,
          eval_fn: Callable[[Any], dict[str, float]] | None = None, hooks: Sequence[Hook] = (),
          run: Any = None, optimizer: Any = None) -> TrainState:
    """Train `model` on `batches` for `config.max_steps` optimizer steps (or `config.max_seconds`).

    - `loss_fn(model, batch) -> scalar tensor`; `batches` yields batches (tensors, tuples or dicts);
      if it has `state_dict`/`load_state_dict` its position is checkpointed for exact resume.
    - `eval_fn(model) -> {"val_loss": ..., ...}` runs every `config.eval_interval` steps and at the end.
    - `hooks`: callables `hook(event, state, info)` for events "start", "log", "eval", "end".
    - `run`: a `train.run.Run` for checkpoints and metrics; with `config.resume` training continues
      from its newest good checkpoint.
    Returns the final `TrainState` (its `stop_reason` says why it ended); raises `TrainingDiverged`
    on a NaN or infinite loss.
    """
    t = _Training(model, batches, loss_fn, config, eval_fn, hooks, run, optimizer)
    with _own_rng(t.device):
        t.restore()  # from the newest good checkpoint, or a fresh start seeded with config.seed
        t.begin()
        try:
            with StopSignals() as signals:  # Ctrl-C or SIGTERM: finish the step, save, stop
                if eval_fn is not None and t.state.step == 0:
                    t.evaluate()  # the untrained model: the first point of the loss curve
                while not t.limit_reached():  # max_steps, max_seconds
                    if not t.step():
                        break  # the data ran out
                    t.log()
                    val = t.evaluate().get("val_loss") if t.eval_due() else None
                    if t.checkpoint_due():
                        t.checkpoint(val)
                    reason = signals.reason or ("hook" if t.state.should_stop else "")
                    if t.dist is not None:
                        reason = t.agree(reason)  # every rank stops at the same step, or none does
                    if reason:
                        t.state.stop_reason = reason
                        break
                t.end()  # a last evaluation and checkpoint
        finally:
            t.pbar.close()
    return t.finish()


class _Training:
    """One call of `train`: what its phases share, and the phases, in the order they run."""

    def __init__(self, model: Any, batches: Iterable[Any], loss_fn: Callable[[Any, Any], Any], config: Any,
                 eval_fn: Callable | None, hooks: Sequence[Hook], run: Any, optimizer: Any) -> None:
        self.batches, self.loss_fn, self.config = batches, loss_fn, config
        self.eval_fn, self.hooks, self.run = eval_fn, hooks, run
        strategy = getattr(config, "strategy", "none")
        self.dist: Any = None  # train.distributed in a job of several processes
        self.rank, self.world = 0, 1
        if strategy == "none":
            import os

            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise UserError(f"this job runs as {os.environ['WORLD_SIZE']} processes but train.strategy is "
                                f"none; set train.strategy ddp or fsdp (or start one process)")
            self.device = pick_device(config.device)
        else:
            from scratchllm.train import distributed

            self.device = distributed.setup(strategy, config.device, config.dist_timeout)
            if distributed.world_size() > 1:
                self.dist = distributed
                self.rank, self.world = distributed.rank(), distributed.world_size()
        self.main = self.rank == 0
        self.precision = resolve_precision(config.precision, self.device)
        model.to(self.device)
        model.train()
        self.model = model
        self.wrapped = None  # the DDP or FSDP wrapper of a LossModule around `model`
        if self.dist is not None:
            if optimizer is not None and strategy == "fsdp":
                raise UserError("train.strategy fsdp builds its optimizer over the sharded parameters; "
                                "call train without an optimizer")
            if config.compile:
                model.compile()  # in place: the wrapper calls the compiled forward
            self.wrapped = self.dist.wrap(model, config, self.device)
        self.optimizer = optimizer if optimizer is not None else build_optimizer(model, config, self.device)
        self.amp = autocast(self.device, self.precision)
        self.state = TrainState()

    # --- restore ----------------------------------------------------------------------------------
    def restore(self) -> None:
        """Continue from the run's newest good checkpoint (with `config.resume`), or start fresh:
        step 0, and torch's RNG seeded for the dropout masks."""
        import torch
        from tqdm import tqdm

        restored = self.run.restore(self.model, self.optimizer) if self.run is not None and self.config.resume \
            else None
        if restored is None or (self.rank > 0 and restored.get("rng_ranks") is not None
                                and len(restored["rng_ranks"]) != self.world):
            # a resumed run has its RNG state from the checkpoint instead; in a job of several processes
            # each rank draws its own dropout masks (and keeps its seed when the process count changed)
            torch.manual_seed(self.config.seed + self.rank * 1_000_003 + (restored or {}).get("step", 0))
        if restored is None:
            return
        self.state = TrainState(step=int(restored["step"]), tokens=int(restored.get("tokens", 0)),
                                elapsed=float(restored.get("elapsed", 0.0)), best_val=restored.get("best_val"),
                                last_eval=restored.get("last_eval") or {}, checkpoint=restored["checkpoint"],
                                eval_step=int(restored.get("eval_step", -1)))
        if restored.get("data") is not None and hasattr(self.batches, "load_state_dict"):
            self.batches.load_state_dict(restored["data"])
        elif hasattr(self.batches, "state_dict"):
            warnings.warn("the checkpoint has no data position; batches restart from the beginning", stacklevel=3)
        if self.main:
            tqdm.write(f"resumed from {restored['checkpoint']} at step {self.state.step}")

    def begin(self) -> None:
        """What the steps need: the (compiled) model, the batch iterator, the peak FLOP/s, the clock."""
        import torch
        from tqdm import tqdm

        c = self.config
        self.fwd_model = torch.compile(self.model) if c.compile and self.dist is None else self.model
        self.it: Iterator[Any] = iter(self.batches)
        self.peak = c.peak_flops if c.peak_flops is not None else peak_flops(self.device, self.precision)
        self.flops_per_token: float | None = None  # from the first batch's length, at the first log
        self.pbar = tqdm(total=c.max_steps, initial=self.state.step, disable=not (c.progress and self.main),
                         unit="step", dynamic_ncols=True, leave=False)
        self.emit("start", {})
        self.t_start = time.perf_counter()
        self.elapsed0 = self.state.elapsed
        self.window_t, self.window_tokens = self.t_start, self.state.tokens

    def emit(self, event: str, info: dict[str, Any]) -> None:
        for h in self.hooks:
            h(event, self.state, info)

    def clock(self) -> float:
        """Seconds of training: this process's and those of the runs it resumed."""
        self.state.elapsed = self.elapsed0 + time.perf_counter() - self.t_start
        return self.state.elapsed

    def limit_reached(self) -> bool:
        """Whether `max_steps` or `max_seconds` is reached (and `stop_reason` says which)."""
        elapsed = self.clock()
        if self.state.step >= self.config.max_steps:
            self.state.stop_reason = "max_steps"
        elif self.config.max_seconds is not None and elapsed >= self.config.max_seconds:
            # several processes: rank 0's clock decides for all (`agree`)
            self.state.stop_reason = "max_seconds" if self.dist is None or self.main else ""
        if self.dist is not None and self.config.max_seconds is not None:
            self.state.stop_reason = self.agree(self.state.stop_reason)
        return bool(self.state.stop_reason)

    STOP_REASONS = ("", "hook", "max_seconds", "interrupted", "terminated")

    def agree(self, reason: str) -> str:
        """Several processes: the strongest stop reason any rank has (a signal, a hook, the time budget
        on rank 0), so that all ranks stop after the same step."""
        import torch

        code = torch.tensor([self.STOP_REASONS.index(reason) if reason in self.STOP_REASONS else 1])
        self.dist.all_reduce_max(code)
        return self.STOP_REASONS[int(code)]

    # --- step -------------------------------------------------------------------------------------
    def step(self) -> bool:
        """One optimizer step over `grad_accum` micro-batches; False (and no step) when the data ran out."""
        import torch

        c, state = self.config, self.state
        self.lr = lr_at(state.step, c, state.elapsed)
        set_lr(self.optimizer, self.lr)
        loss_sum = 0.0
        try:
            for i in range(c.grad_accum):
                batch = next(self.it)
                state.tokens += count_tokens(batch)  # the job's tokens: every rank counts the global batch
                if self.dist is None:
                    batch = to_device(batch, self.device)
                    with self.amp:
                        loss = self.loss_fn(self.fwd_model, batch)
                    (loss / c.grad_accum).backward()
                else:  # this rank's rows; gradients reduced after the last micro-batch only
                    batch = to_device(self.dist.local_rows(batch, self.rank, self.world), self.device)
                    with self.dist.no_sync(self.wrapped, skip=i < c.grad_accum - 1):
                        with self.amp:
                            loss = self.wrapped(self.loss_fn, batch)
                        (loss / c.grad_accum).backward()
                loss_sum += loss.detach().float()
        except StopIteration:
            self.optimizer.zero_grad(set_to_none=True)
            state.stop_reason = "data"
            return False
        if self.dist is not None:
            loss_sum = self.dist.mean_over_ranks(loss_sum)  # the job's loss (and a NaN anywhere is seen by all)
        self.loss = float(loss_sum) / c.grad_accum
        if not math.isfinite(self.loss):
            where = f"the last good checkpoint is {state.checkpoint}" if state.checkpoint else "no checkpoint was saved"
            raise TrainingDiverged(
                f"loss became {self.loss} at step {state.step + 1}: training diverged; {where}. "
                f"Lower train.lr (now {c.lr}), keep train.grad_clip on, or use precision fp32")
        self.grad_norm = None
        if c.grad_clip > 0 and self.dist is not None:  # the norm of the job's gradients (FSDP: of all shards)
            self.grad_norm = self.dist.clip_grad_norm(list(self.model.parameters()), c.grad_clip)
        elif c.grad_clip > 0:
            self.grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        self.pbar.update(1)
        self.clock()
        self.seq_len = batch[0].shape[-1] if isinstance(batch, (list, tuple)) else 1
        return True

    # --- log --------------------------------------------------------------------------------------
    def log(self) -> None:
        """Every `log_interval` steps (and after the first): loss, lr, tokens/s, MFU, gradient norm."""
        from scratchllm.model.info import mfu

        state = self.state
        if state.step % self.config.log_interval != 0 and state.step != 1:
            return
        now = time.perf_counter()
        tok_s = (state.tokens - self.window_tokens) / max(now - self.window_t, 1e-9)
        self.window_t, self.window_tokens = now, state.tokens
        if self.flops_per_token is None:
            self.flops_per_token = model_flops_per_token(self.model, self.seq_len)
        rec = {"step": state.step, "loss": self.loss, "lr": self.lr, "tokens": state.tokens, "tok_s": round(tok_s, 1)}
        if self.flops_per_token is not None:
            rec["mfu"] = round(mfu(tok_s, self.flops_per_token, self.peak * self.world), 5)  # the job's peak
        rec["elapsed"] = round(state.elapsed, 3)
        if self.grad_norm is not None:
            rec["grad_norm"] = self.grad_norm
        if self.run is not None:
            self.run.log(rec)
        self.pbar.set_postfix(loss=f"{self.loss:.4f}", lr=f"{self.lr:.2e}", tok_s=f"{tok_s:,.0f}")
        self.emit("log", rec)

    # --- eval -------------------------------------------------------------------------------------
    def eval_due(self) -> bool:
        return self.eval_fn is not None and self.state.step % self.config.eval_interval == 0

    def evaluate(self) -> dict[str, Any]:
        """Run `eval_fn` (eval mode, no gradients), track the best validation loss, log and report it."""
        from tqdm import tqdm

        state = self.state
        if self.wrapped is not None and self.dist.is_sharded(self.model):
            # FSDP: through the wrapper's forward, which gathers the root's weights (blocks gather their own)
            metrics = run_eval(self.wrapped, lambda w: w(lambda m: self.eval_fn(m)), self.amp)
        else:
            metrics = run_eval(self.fwd_model, self.eval_fn, self.amp)
        if "val_loss" in metrics and (state.best_val is None or metrics["val_loss"] < state.best_val):
            state.best_val = metrics["val_loss"]
        state.last_eval = metrics
        state.eval_step = state.step
        rec = {"step": state.step, "tokens": state.tokens, "elapsed": round(state.elapsed, 3), **metrics}
        state.history.append(rec)
        if self.run is not None:
            self.run.log(rec)
            self.run.plot()
        parts = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith("_loss"))
        if self.main:
            tqdm.write(f"step {state.step}: {parts}")
        self.emit("eval", rec)
        return metrics

    # --- checkpoint -------------------------------------------------------------------------------
    def checkpoint_due(self) -> bool:
        return self.state.step % (self.config.checkpoint_interval or self.config.eval_interval) == 0

    def checkpoint(self, val_loss: float | None = None) -> None:
        """Save weights, optimizer, state and the data position to the run folder (if there is one)."""
        if self.run is None:
            return
        data_pos = self.batches.state_dict() if hasattr(self.batches, "state_dict") else None
        folder = self.run.save(self.state.step, self.model, self.optimizer,
                               {**self.state.checkpoint_state(), "data": data_pos}, val_loss=val_loss)
        self.state.checkpoint = str(folder)

    # --- end --------------------------------------------------------------------------------------
    def end(self) -> None:
        """Any stop but a divergence: a last evaluation (skipped when a signal asks to stop quickly) and
        a last checkpoint."""
        state = self.state
        if self.eval_fn is not None and state.eval_step != state.step and state.step > 0 \
                and state.stop_reason not in ("interrupted", "terminated"):
            self.evaluate()
        if state.step > 0:
            self.checkpoint(state.last_eval.get("val_loss") if state.eval_step == state.step else None)

    def finish(self) -> TrainState:
        self.clock()
        self.emit("end", {"stop_reason": self.state.stop_reason})
        return self.state
