"""The main job: a `RunConfig` in, a trained model in `runs/<name>/` out.

`pretrain(config)` wires the pieces: the text pipeline (`data.prepare`: fetch, clean, train the
tokenizer, write token shards), the model (`model.GPT`), the one loop (`train.loop.train` with
`train.losses.loss_for` on random windows, evaluation on fixed windows of both splits), and around
them a sample before and after training (not after a SIGTERM: its grace period is short), the loss
plot, the model card and the `runs/latest` pointer that `scratchllm generate` follows.
`scratchllm train` is a thin layer over this.

Checks that fail early, before anything is written: the run folder must be writable, the data
long enough for the context, and the batch's activations must fit in the free memory. As the job
that owns the process it also makes the process-wide settings (`configure_process`: threads, the
allocator, TF32) and seeds the model's initialisation; the loop itself sets none of them.

Many processes (`train.strategy` ddp or fsdp under torchrun, `train.distributed`): every rank runs
this job; rank 0 picks and locks the run folder and prepares the data first, and alone prints,
samples, plots and writes the model card; the other ranks follow it.

Not here: the loop (`train.loop`), checkpoints (`checkpoint`, `train.checkpoint`), the data pipeline (`data`).
"""

from __future__ import annotations

import json
import math
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scratchllm.checkpoint import unwrap
from scratchllm.config.train import RunConfig
from scratchllm.errors import UserError
from scratchllm.files import write_atomic
from scratchllm.runtime import machine_summary, pick_device, seed_everything, setup_process
from scratchllm.train.checkpoint import Checkpoints
from scratchllm.train.lock import RUN_CONFIG_FILE, RunLock, claim_fresh_folder
from scratchllm.train.logging import write_model_card
from scratchllm.train.loop import TrainState, batch_eval_fn, resolve_precision, train
from scratchllm.train.losses import loss_for
from scratchllm.train.run import Run, ensure_writable


# --- checks -----------------------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def estimate_training_memory(model_config: Any, batch_size: int, precision: str = "fp32", device: str = "cpu") -> int:
    """Rough bytes one training step needs: weights, gradients, AdamW moments and saved activations.

    Per layer and token a pre-norm block keeps about 16 n_embd values (norm inputs, q/k/v, attention
    output, projections, the 4x MLP before and after the activation) plus, when attention is
    materialised (`model.layers.explicit_attention`: "explicit", or "auto" training in bf16 on a CPU
    up to 512 keys), n_head x T scores; the head keeps the logits and their softmax (2 x vocab).
    Weights, gradients and AdamW's two moments are 16 bytes per parameter (`model.info.num_params`).
    With gradient checkpointing only each block's input is kept, plus one block recomputed.
    (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models", sec. 4.)

    >>> from scratchllm.config.model import ModelConfig
    >>> round(estimate_training_memory(ModelConfig.preset("gpt2-small"), 8) / 2**30, 1)
    13.3
    """
    from scratchllm.model.info import num_params
    from scratchllm.model.layers import explicit_attention

    c = model_config
    t, h = c.context_length, c.n_embd
    explicit = explicit_attention(c.attention, str(device).split(":")[0], training=True, bf16=precision == "bf16",
                                  n_keys=t)
    per_layer = 16 * h + (2 * c.n_head * t if explicit else 0) + 2 * c.hidden_dim
    layers = (c.n_layer * h + per_layer) if c.gradient_checkpointing else c.n_layer * per_layer
    act_values = batch_size * t * (layers + 3 * c.vocab_size + 2 * h)
    act_bytes = act_values * (2 if precision == "bf16" else 4)
    return int(act_bytes + 16 * num_params(c))


def check_memory(run: RunConfig) -> None:
    device = pick_device(run.train.device)
    per_process = max(1, run.train.batch_size // _processes())  # each process holds its share of the batch
    need = estimate_training_memory(run.model, per_process, resolve_precision(run.train.precision, device),
                                    device.type)
    have = available_memory()
    if have and need > 0.9 * have:
        hint = "" if run.model.gradient_checkpointing else ", or set model.gradient_checkpointing=true"
        raise UserError(
            f"train.batch_size {run.train.batch_size} at context {run.model.context_length} needs about "
            f"{need / 2**30:.1f} GiB to train, more than the {have / 2**30:.1f} GiB available; lower "
            f"train.batch_size (use train.grad_accum for the same effective batch) or model.context_length{hint}")


def configure_process(run: RunConfig) -> None:
    """The process-wide settings of a pretraining run (`runtime.setup_process`): `train.threads`,
    TF32 on CUDA, and freed memory kept in the process (`train.keep_freed_memory`) unless the model
    checkpoints activations: that run chose memory over speed."""
    keep = run.train.keep_freed_memory and not run.model.gradient_checkpointing
    setup_process(run.train.threads, keep_freed=keep, device=pick_device(run.train.device))


def resume_command(run: RunConfig, folder: Path, source: str | None = None) -> str:
    """The command that continues this run: `source` is how the settings were given (e.g.
    "--config configs/x.toml" or "--preset shakespeare-char"), when the caller knows it.

    >>> resume_command(RunConfig(runs_dir="/tmp/my runs"), Path("/tmp/my runs/demo-2"), "--preset shakespeare-char")
    "scratchllm train --preset shakespeare-char --runs_dir '/tmp/my runs' --name demo-2 --resume"
    """
    given = source or "--config <recipe>"
    return f"scratchllm train {given} --runs_dir {shlex.quote(run.runs_dir)} --name {shlex.quote(folder.name)} --resume"


def pick_run_folder(run: RunConfig) -> RunLock:
    """runs_dir/name, locked: `with pick_run_folder(run) as folder:` holds it for the life of the job.

    A new run never overwrites an old one (it becomes name-2, name-3, ...) and never shares a folder
    with a run in progress; `--resume` takes the named run's folder or says which pid holds it.
    """
    base = Path(run.runs_dir) / (run.name or "run")
    if run.train.resume:
        if not (base.is_dir() and Checkpoints(base).candidates()):
            raise UserError(f"nothing to resume: {base} has no checkpoint; start the run without --resume")
        return RunLock.acquire(base)
    return claim_fresh_folder(base)


def data_folder(run: RunConfig) -> Path:
    """Where the prepared data goes: runs_dir/data/<dataset>-<tokenizer><vocab>-<config hash>."""
    from scratchllm.data.prepare import config_hash

    d = run.data
    slug = Path(d.dataset).stem if ("/" in d.dataset or "." in d.dataset) else d.dataset
    tok = d.tokenizer
    return Path(run.runs_dir) / "data" / f"{slug}-{tok.kind}{tok.vocab_size or ''}-{config_hash(d)[:8]}"


# --- samples -------------------------------------------------------------------------------------------
def sample_text(model: Any, tokenizer: Any, prompt: str, sample: Any) -> str:
    """A sample from `model` after `prompt` with its own seeded generator (the training RNG is untouched)."""
    from scratchllm.generate import generate_text, make_generator

    device = next(model.parameters()).device
    try:
        tokenizer.encode(prompt, allowed_special="all")
    except UserError:
        prompt = ""  # e.g. a character the tokenizer never saw: start from the document boundary
    return generate_text(unwrap(model), tokenizer, prompt, sample,
                         generator=make_generator(sample.seed if sample.seed is not None else 0, device))


def _show(title: str, prompt: str, text: str) -> None:
    print(f"--- {title} ---\n{prompt}{text}\n" + "-" * (len(title) + 8))


# --- the job ----------------------------------------------------------------------------------------
# ModelConfig fields that change the computation without changing any tensor's shape: they must agree too.
SAME_MATH = ("norm", "mlp", "position", "rope_base", "tie_weights", "qk_norm", "rope_scaling")
INIT_HINT = ("give the run the source's [model] settings (and its tokenizer: data.tokenizer, e.g. the "
             "tokenizer.scratchllm.json of `scratchllm import`)")


def load_init(run: RunConfig) -> Any:
    """The model `run.init_from` names (interop.load.load_any), its options checked against the run's
    before anything is written; None without init_from or when resuming."""
    from scratchllm.interop.load import load_any

    if run.init_from is None or run.train.resume:
        return None
    source, _, _ = load_any(run.init_from)
    for field in SAME_MATH:
        a, b = getattr(source.config, field, None), getattr(run.model, field, None)
        if a != b:
            raise UserError(f"init_from {run.init_from}: its model.{field} is {a!r}, this run's is {b!r}; "
                            f"{INIT_HINT}")
    return source


def init_from(model: Any, source: Any, path: str) -> None:
    """Copy `source`'s weights into `model`: every tensor there with the same shape, nothing extra."""
    import torch

    from scratchllm.checkpoint import check_tensors

    theirs, ours = source.state_dict(), model.state_dict()
    check_tensors(ours, theirs, f"init_from {path}", INIT_HINT)
    with torch.no_grad():
        for name, t in ours.items():
            t.copy_(theirs[name])
    print(f"initialised from {path}")


def pretrain(run: RunConfig, *, progress: bool = True, source: str | None = None,
             hooks: Sequence[Any] = ()) -> TrainState:
    """Prepare the data, build the model, train, sample, and leave everything in the run folder.

    `source`: how the settings were given on the command line ("--config PATH" or "--preset NAME"),
    for the command that continues a stopped run (`resume_command`). `hooks`: more `train.loop` hooks
    (a sweep's reports to its pruner).
    """
    init = load_init(run)  # a bad init_from is an error before any folder is made
    if run.train.strategy == "none":
        with pick_run_folder(run) as folder:  # locked until the job ends, however it ends
            return pretrain_in(folder, run, progress=progress, source=source, init=init, hooks=hooks)
    from scratchllm.train import distributed

    # rank 0 alone claims and locks the folder, then tells the others which it is
    with (distributed.job(run.train.strategy, run.train.device, run.train.dist_timeout),
          distributed.claimed_folder(lambda: pick_run_folder(run)) as folder):
        return pretrain_in(folder, run, progress=progress and distributed.is_main(), source=source, init=init,
                           hooks=hooks)


def pretrain_in(folder: Path, run: RunConfig, *, progress: bool = True, source: str | None = None,
                init: Any = None, hooks: Sequence[Any] = ()) -> TrainState:
    """`pretrain` in a run folder this process has locked; `init`: a model to copy the weights of."""
    from scratchllm.data.datasets import EvalBatches, RandomWindowBatches, need_tokens
    from scratchllm.data.prepare import prepare
    from scratchllm.model import GPT

    t0 = time.perf_counter()
    main = _is_main()
    if main:
        ensure_writable(Path(run.runs_dir))
    say = print if main else _quiet

    if not main:
        _barrier()  # the other ranks wait for rank 0's prepared data, then read it from the cache
    prepared = prepare(run.data, data_folder(run), progress=progress and main)
    if main:
        _barrier()
    tok = prepared.tokenizer
    if run.model.vocab_size != tok.vocab_size:
        run = run.override({"model.vocab_size": tok.vocab_size})
    ctx = run.model.context_length
    need_tokens(len(prepared.train), ctx, "the training split")
    need_tokens(len(prepared.val), ctx, "the validation split")
    if run.train.epochs is not None:
        per_step = run.train.batch_size * run.train.grad_accum * ctx
        steps = max(1, math.ceil(run.train.epochs * len(prepared.train) / per_step))
        run = run.override({"train.max_steps": steps})
        say(f"{run.train.epochs:g} epochs of {len(prepared.train):,} training tokens = {steps:,} steps")
    check_memory(run)
    configure_process(run)

    if main:
        ensure_writable(folder)
    tc = run.train
    seed_everything(tc.seed)
    model = GPT(run.model)
    if init is not None:
        init_from(model, init, run.init_from)
    say(f"model: {model.num_params():,} parameters ({run.model.n_layer} layers, {run.model.n_head} heads, "
          f"{run.model.n_embd} dims, context {ctx}); data: {len(prepared.train):,} train / "
          f"{len(prepared.val):,} val tokens; run folder: {folder}" + _processes_note(tc))
    if not tc.resume and run.sample.max_new_tokens and main:
        _show("sample before training", run.prompt, sample_text(model, tok, run.prompt, run.sample))

    batches = RandomWindowBatches(prepared.train, tc.batch_size, ctx, seed=tc.seed)
    eval_fn = batch_eval_fn({
        "train": list(EvalBatches(prepared.train, tc.batch_size, ctx, tc.eval_batches, "the training split")),
        "val": list(EvalBatches(prepared.val, tc.batch_size, ctx, tc.eval_batches, "the validation split")),
    })
    def record_config(event: str, state: TrainState, info: dict) -> None:
        # at "start", after a resume's checkpoint is restored: a resume that fails leaves the old config
        if event == "start" and main:
            write_atomic(folder / RUN_CONFIG_FILE, json.dumps(run.to_dict(), indent=1))

    hooks = [record_config, *hooks]
    # (FSDP's weights are shards: its samples come from the consolidated checkpoint at the end)
    if tc.sample_interval and run.sample.max_new_tokens and main and tc.strategy != "fsdp":
        def sample_hook(event: str, state: TrainState, info: dict) -> None:
            if event == "eval" and state.step and state.step % tc.sample_interval == 0:
                from tqdm import tqdm

                tqdm.write(f"--- sample at step {state.step} ---\n{run.prompt}"
                           f"{sample_text(model, tok, run.prompt, run.sample)}")

        hooks.append(sample_hook)
    out = Run(folder, keep_last=tc.keep_last, tokenizer=tok, tensorboard=tc.tensorboard, title=run.name,
              meta={"run_config": run.to_dict(), "data_dir": str(prepared.dir)}, main=main)
    try:
        state = train(model, batches, loss_for(run.model), tc, eval_fn=eval_fn, hooks=hooks, run=out)
    finally:
        out.close()
    if not main:
        return state
    out.plot()
    write_atomic(Path(run.runs_dir) / "latest", folder.name + "\n")

    if run.sample.max_new_tokens and state.stop_reason != "terminated":  # SIGTERM: the grace period is short
        sampler = model
        if tc.strategy == "fsdp" and _processes() > 1 and state.checkpoint:  # the consolidated weights
            from scratchllm.checkpoint import load_model

            sampler = load_model(state.checkpoint)[0]
        _show("sample after training", run.prompt, sample_text(sampler, tok, run.prompt, run.sample))
    write_model_card(folder, card_info(run, folder, prepared, model, state, time.perf_counter() - t0))
    final = state.last_eval
    losses = "  ".join(f"{k} {v:.4f}" for k, v in final.items() if k.endswith("_loss"))
    print(f"{state.stop_reason}: step {state.step}, {state.tokens:,} tokens, {state.elapsed:.0f} s of training; "
          f"{losses}\nsaved {state.checkpoint}; plot {folder / 'loss.png'}; card {folder / 'MODEL_CARD.md'}")
    if state.stop_reason in ("interrupted", "terminated"):
        print(f"continue with: {resume_command(run, folder, source)}")
    return state


def _is_main() -> bool:
    from scratchllm.runtime import is_rank_zero

    return is_rank_zero()


def _processes() -> int:
    from scratchllm.config.train import processes

    return processes()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _quiet(*args: Any, **kwargs: Any) -> None:
    """print for ranks other than 0: nothing."""


def _processes_note(tc: Any) -> str:
    n = _processes()
    return f"; {n} processes ({tc.strategy}), {tc.batch_size // n} rows of each batch per process" if n > 1 else ""


def card_info(run: RunConfig, folder: Path, prepared: Any, model: Any, state: TrainState,
              seconds: float) -> dict[str, Any]:
    """What the model card says about this run."""
    import torch

    from scratchllm.evaluate.card import data_provenance, training_compute

    data = data_provenance(run.data.dataset)
    meta = prepared.meta
    data.update({"train tokens": meta.get("tokens", {}).get("train"), "val tokens": meta.get("tokens", {}).get("val"),
                 "split": meta.get("split"), "prepared in": str(prepared.dir)})
    report = None
    rp = Path(prepared.dir) / "clean_report.json"
    if rp.is_file():
        report = json.loads(rp.read_text(encoding="utf-8"))
    tok = prepared.tokenizer
    return {
        "name": folder.name, "data": data, "clean_report": report,
        "tokenizer": {"kind": tok.kind, "vocab_size": tok.vocab_size, "file": "tokenizer.scratchllm.json"},
        "config": run.to_dict(), "hardware": machine_summary(),
        "precision": resolve_precision(run.train.precision, pick_device(run.train.device)),
        "train_seconds": round(state.elapsed, 1),
        "steps": state.step, "tokens": state.tokens, "parameters": model.num_params(),
        "final": {k: v for k, v in state.last_eval.items()}, "checkpoint": state.checkpoint,
        "compute": training_compute(unwrap(model).config, state.tokens, state.elapsed, torch.get_num_threads(),
                                    pick_device(run.train.device).type, run.model.context_length),
    }
