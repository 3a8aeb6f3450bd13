"""The one training loop: every kind of training in scratchllm runs through `train`.

`train(model, batches, loss_fn, config, eval_fn=..., hooks=..., run=...)` does the book's chapter 5
loop (`train_model_simple`) with what a real run needs: AdamW with decay on matrices only, warmup
and cosine/linear/constant schedules, gradient accumulation and clipping, bf16 autocast with fp32
master weights, optional torch.compile, periodic evaluation (loss and perplexity), tokens/s and
model FLOPs utilisation, a progress bar, JSONL metrics and a loss plot, checkpoints, exact resume,
Ctrl-C that saves, a time budget, and a clear stop on a NaN or infinite loss.

Pretraining passes `lm_loss` and random windows of tokens; classification, instruction and
preference finetuning pass their own `loss_fn(model, batch) -> scalar loss` and batches.

Exact resume: a checkpoint holds the weights, AdamW's moments, the step, the torch and Python RNG
states and the batch iterator's position (`batches.state_dict()`), and the learning rate is a pure
function of the step, so on CPU a resumed run computes the same losses, bit for bit.

Not here: the run folder (`train.run`), what to train on (`train.pretrain`).
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from scratchllm.errors import UserError
from scratchllm.runtime import autocast, keep_freed_memory, pick_device, set_threads
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
    # why the loop ended: "max_steps", "max_seconds", "interrupted", "data", "hook"
    stop_reason: str = ""
    # folder of the last checkpoint saved or restored
    checkpoint: str | None = None
    # every evaluation of this process: dicts with step, elapsed, tokens and the losses
    history: list[dict[str, Any]] = field(default_factory=list)
    # a hook sets this to end training after the current step
    should_stop: bool = False

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("history", "stop_reason", "should_stop", "checkpoint"):
            d.pop(k)
        return d


# --- pieces the loop uses, small and testable -----------------------------------------------------
def lm_loss(model: Any, batch: Any) -> Any:
    """Next-token cross-entropy of a GPT on an (inputs, targets) batch: the pretraining loss."""
    x, y = batch
    _, loss = model(x, y)
    return loss


def _head_loss_sum(model: Any, h: Any, y: Any) -> Any:
    """Summed cross-entropy of the LM head on hidden states h (N, C) against targets y (N,)."""
    import torch.nn.functional as F

    logits = model.lm_head(h)  # (N, vocab)
    return F.cross_entropy(logits.float(), y, ignore_index=-100, reduction="sum")


def chunked_lm_loss(model: Any, batch: Any, chunk_tokens: int = 1024) -> Any:
    """`lm_loss` without ever holding all the logits: the head and the loss run on `chunk_tokens`
    positions at a time under activation checkpointing, so only one chunk's (N, vocab) logits exist
    at once, in the forward and in the backward pass (the head is recomputed per chunk).

    With GPT-2's 50,257-token vocabulary the logits, their log-softmax and their gradient are three
    (B*T, vocab) fp32 tensors: 4.9 GB at batch 8 x 1,024; this keeps them to a few hundred MB. Equal
    to `lm_loss` up to float rounding (tested). Needs a model with `features` and `lm_head` (GPT).
    """
    from torch.utils.checkpoint import checkpoint

    x, y = batch
    h = model.features(x).flatten(0, 1)  # (B*T, n_embd)
    y = y.flatten()  # (B*T,)
    total = None
    for i in range(0, h.shape[0], chunk_tokens):
        part = checkpoint(_head_loss_sum, model, h[i:i + chunk_tokens], y[i:i + chunk_tokens], use_reentrant=False)
        total = part if total is None else total + part
    return total / (y != -100).sum().clamp(min=1)


def loss_for(model_config: Any) -> Callable[[Any, Any], Any]:
    """The pretraining loss for a model config: chunked when memory matters (gradient checkpointing on)."""
    return chunked_lm_loss if getattr(model_config, "gradient_checkpointing", False) else lm_loss


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


def flops_per_token(model: Any, seq_len: int) -> float:
    """Training FLOPs per token: 6 N plus attention 12 L d T (PaLM appendix B; nanoGPT's estimate_mfu).

    N counts parameters without the position embedding; forward and backward, no recomputation.

    >>> from types import SimpleNamespace as C
    >>> import torch
    >>> m = torch.nn.Linear(10, 10, bias=False); m.config = C(n_layer=2, n_embd=10)
    >>> flops_per_token(m, 4)
    1560.0
    """
    n = sum(p.numel() for p in model.parameters())
    for name in ("pos_emb", "wpe"):  # learned position embeddings are lookups, not matmuls
        emb = getattr(getattr(model, name, None), "weight", None)
        if emb is not None:
            n -= emb.numel()
    cfg = getattr(model, "config", None)
    attn = 12 * cfg.n_layer * cfg.n_embd * seq_len if cfg is not None and hasattr(cfg, "n_layer") else 0
    return float(6 * n + attn)


@functools.lru_cache(maxsize=8)
def measure_peak_flops(device: str = "cpu", precision: str = "fp32", n: int = 2048, reps: int = 3) -> float:
    """Measured FLOP/s of a large n x n matmul in `precision` on `device` (best of `reps`)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)  # private: must not move the global RNG (exact resume)
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


def resolve_precision(precision: str, device: Any) -> str:
    """"auto" -> bf16 where bf16 matmuls are native (CUDA GPUs that support it, CPUs with AVX512-BF16
    or AMX), else fp32 (see TrainConfig.precision)."""
    from scratchllm.runtime import fast_bf16_matmul

    if precision != "auto":
        return precision
    return "bf16" if fast_bf16_matmul(device) else "fp32"


def batch_eval_fn(splits: dict[str, Sequence[Any]], loss_fn: Callable[[Any, Any], Any] = lm_loss) -> Callable:
    """An `eval_fn` that returns `{"<split>_loss": mean loss}` over fixed batches per split."""

    def eval_fn(model: Any) -> dict[str, float]:
        device = next(model.parameters()).device
        out = {}
        for name, batches in splits.items():
            losses = [float(loss_fn(model, to_device(b, device))) for b in batches]
            out[f"{name}_loss"] = sum(losses) / max(1, len(losses))
        return out

    return eval_fn


def run_eval(model: Any, eval_fn: Callable, amp: Any) -> dict[str, float]:
    """Call `eval_fn` in eval mode without gradients; add perplexity for every loss."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), amp:
            out = dict(eval_fn(model))
    finally:
        model.train(was_training)
    for k in list(out):
        if k.endswith("_loss"):
            v = float(out[k])
            out[k] = v
            out[k[:-5] + "_ppl"] = math.exp(v) if v < 700 else float("inf")
    return out


class _Interrupt:
    """First Ctrl-C: finish the step, save, stop. Second: abort at once."""

    def __init__(self) -> None:
        self.flag = False
        self.old: Any = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        from tqdm import tqdm

        tqdm.write("interrupted: finishing this step and saving a checkpoint (Ctrl-C again to abort)")

    def __exit__(self, *exc: Any) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


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
    Returns the final `TrainState`; raises `TrainingDiverged` on a NaN or infinite loss.
    """
    import torch
    from tqdm import tqdm

    set_threads(config.threads)
    if config.keep_freed_memory and not getattr(getattr(model, "config", None), "gradient_checkpointing", False):
        keep_freed_memory()  # speed for memory; a run that checkpoints activations chose memory
    device = pick_device(config.device)
    precision = resolve_precision(config.precision, device)
    model.to(device)
    model.train()
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for the fp32 parts on GPUs that have them
    if optimizer is None:
        optimizer = build_optimizer(model, config, device)
    state = TrainState()
    if run is not None and config.resume:
        restored = run.restore(model, optimizer)
        if restored is not None:
            state = TrainState(step=int(restored["step"]), tokens=int(restored.get("tokens", 0)),
                               elapsed=float(restored.get("elapsed", 0.0)), best_val=restored.get("best_val"),
                               last_eval=restored.get("last_eval") or {}, checkpoint=restored["checkpoint"],
                               eval_step=int(restored.get("eval_step", -1)))
            if restored.get("data") is not None and hasattr(batches, "load_state_dict"):
                batches.load_state_dict(restored["data"])
            elif hasattr(batches, "state_dict"):
                warnings.warn("the checkpoint has no data position; batches restart from the beginning",
                              stacklevel=2)
            tqdm.write(f"resumed from {restored['checkpoint']} at step {state.step}")
    if state.step == 0:
        torch.manual_seed(config.seed)  # dropout's randomness; a resumed run restores the RNG instead
    amp = autocast(device, precision)
    fwd_model = torch.compile(model) if config.compile else model
    it: Iterator[Any] = iter(batches)
    peak = config.peak_flops
    if peak is None:
        peak = measure_peak_flops(str(device), precision)
    fpt: float | None = None

    def emit(event: str, info: dict[str, Any]) -> None:
        for h in hooks:
            h(event, state, info)

    def save(val_loss: float | None = None) -> None:
        if run is None:
            return
        data_pos = batches.state_dict() if hasattr(batches, "state_dict") else None
        folder = run.save(state.step, model, optimizer, {**state.to_json(), "data": data_pos}, val_loss=val_loss)
        state.checkpoint = str(folder)

    def evaluate() -> dict[str, Any]:
        metrics = run_eval(fwd_model, eval_fn, amp)
        if "val_loss" in metrics and (state.best_val is None or metrics["val_loss"] < state.best_val):
            state.best_val = metrics["val_loss"]
        state.last_eval = metrics
        state.eval_step = state.step
        rec = {"step": state.step, "tokens": state.tokens, "elapsed": round(state.elapsed, 3), **metrics}
        state.history.append(rec)
        if run is not None:
            run.log(rec)
            run.plot()
        parts = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith("_loss"))
        tqdm.write(f"step {state.step}: {parts}")
        emit("eval", rec)
        return metrics

    pbar = tqdm(total=config.max_steps, initial=state.step, disable=not config.progress, unit="step",
                dynamic_ncols=True, leave=False)
    emit("start", {})
    t_start = time.perf_counter()
    elapsed0 = state.elapsed
    window_t, window_tokens = t_start, state.tokens
    try:
        with _Interrupt() as interrupt:
            if eval_fn is not None and state.step == 0:
                evaluate()
            while True:
                state.elapsed = elapsed0 + time.perf_counter() - t_start
                if state.step >= config.max_steps:
                    state.stop_reason = "max_steps"
                    break
                if config.max_seconds is not None and state.elapsed >= config.max_seconds:
                    state.stop_reason = "max_seconds"
                    break
                lr = lr_at(state.step, config)
                set_lr(optimizer, lr)
                loss_sum = 0.0
                try:
                    for _ in range(config.grad_accum):
                        batch = to_device(next(it), device)
                        state.tokens += count_tokens(batch)
                        with amp:
                            loss = loss_fn(fwd_model, batch)
                        (loss / config.grad_accum).backward()
                        loss_sum += loss.detach().float()
                except StopIteration:
                    optimizer.zero_grad(set_to_none=True)
                    state.stop_reason = "data"
                    break
                loss_val = float(loss_sum) / config.grad_accum
                if not math.isfinite(loss_val):
                    where = f"the last good checkpoint is {state.checkpoint}" if state.checkpoint else \
                        "no checkpoint was saved"
                    raise TrainingDiverged(
                        f"loss became {loss_val} at step {state.step + 1}: training diverged; {where}. "
                        f"Lower train.lr (now {config.lr}), keep train.grad_clip on, or use precision fp32")
                grad_norm = None
                if config.grad_clip > 0:
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                pbar.update(1)
                state.elapsed = elapsed0 + time.perf_counter() - t_start
                if state.step % config.log_interval == 0 or state.step == 1:
                    now = time.perf_counter()
                    tok_s = (state.tokens - window_tokens) / max(now - window_t, 1e-9)
                    window_t, window_tokens = now, state.tokens
                    if fpt is None:
                        fpt = flops_per_token(model, batch[0].shape[-1] if isinstance(batch, (list, tuple)) else 1)
                    rec = {"step": state.step, "loss": loss_val, "lr": lr, "tokens": state.tokens,
                           "tok_s": round(tok_s, 1), "mfu": round(tok_s * fpt / peak, 5),
                           "elapsed": round(state.elapsed, 3)}
                    if grad_norm is not None:
                        rec["grad_norm"] = grad_norm
                    if run is not None:
                        run.log(rec)
                    pbar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                    emit("log", rec)
                val = None
                if eval_fn is not None and state.step % config.eval_interval == 0:
                    val = evaluate().get("val_loss")
                every = config.checkpoint_interval or config.eval_interval
                if state.step % every == 0:
                    save(val)
                if interrupt.flag:
                    state.stop_reason = "interrupted"
                    break
                if state.should_stop:
                    state.stop_reason = "hook"
                    break
            # the end (any reason but a divergence): a final evaluation and checkpoint
            if eval_fn is not None and state.eval_step != state.step and state.step > 0 \
                    and state.stop_reason != "interrupted":
                evaluate()
            if state.step > 0:
                save(state.last_eval.get("val_loss") if state.eval_step == state.step else None)
    finally:
        pbar.close()
    state.elapsed = elapsed0 + time.perf_counter() - t_start
    emit("end", {"stop_reason": state.stop_reason})
    return state
