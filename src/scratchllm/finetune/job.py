"""The finetuning job: a trained model in, a finetuned run folder out, for every method.

`finetune(config, method)` does what every method shares, in order:
1. load the model to start from (`config.init_from`, through `interop.load.load_any`: a run, a
   checkpoint folder, a Hugging Face or OpenAI folder) with its tokenizer;
2. ask the method for its `Plan` (`finetune.classify.plan`, `finetune.instruct.plan`,
   `finetune.dpo.plan`): the model to train (perhaps with a new head), batches, the loss, the
   evaluation, what to keep in each checkpoint, and the report to write at the end;
3. choose what trains: `config.trainable` (all, the last blocks, the head), or with `config.lora.r`
   LoRA adapters on a frozen base (`model.lora`); whatever the method created (a new head) always
   trains;
4. train with the one loop (`train.loop.train`) in a locked run folder (`train.run.Run`):
   checkpoints, exact resume (`--resume`), Ctrl-C and SIGTERM that save, metrics and the loss plot;
5. run the method's report (test metrics, responses, plots), then write the model card (which names
   the source model and its licence) and point `runs/latest` at the run.

Many processes (`train.strategy` ddp or fsdp, under torchrun or `--nproc`): every rank does steps 1-3
alike, the loop gives each its rows of every batch, and rank 0 alone claims the run folder
(`train.distributed.claimed_folder`), prints and does step 5; LoRA trains with ddp (`check_strategy`).

A method is a loss plus batches for the loop, as DESIGN.md asks: nothing here knows about labels,
prompts or preferences. Not here: the methods (`finetune.classify`, `finetune.instruct`,
`finetune.dpo`), the loop (`train.loop`), LoRA's layer (`model.lora`).
"""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError
from scratchllm.files import write_atomic

# Each method's module (with `plan(config, model, tokenizer, source_meta) -> Plan`) and config class.
METHODS: dict[str, tuple[str, str]] = {
    "classify": ("scratchllm.finetune.classify", "ClassifyConfig"),
    "instruct": ("scratchllm.finetune.instruct", "InstructConfig"),
    "dpo": ("scratchllm.finetune.dpo", "DPOConfig"),
}
REPORT_FILE = "report.json"


@dataclass
class Plan:
    """What a finetuning method hands the job (see the module doc)."""

    # The model to train: the loaded one, perhaps with a new head.
    model: Any
    # Training batches: endless, resumable (`finetune.batches.ExampleBatches`).
    batches: Any
    # loss_fn(model, batch) -> scalar tensor, as `train.loop.train` takes it.
    loss_fn: Callable[[Any, Any], Any]
    # eval_fn(model) -> {"val_loss": ..., ...} run every train.eval_interval steps; None: no evaluation.
    eval_fn: Callable[[Any], dict[str, float]] | None = None
    # Modules the method created (e.g. "lm_head" for a classifier): they train whatever `trainable` says.
    new_modules: tuple[str, ...] = ()
    # JSON kept in every checkpoint's state.json under "task" (labels, pooling, template...): what the
    # commands that read the finetuned model need to use it.
    meta: dict[str, Any] = field(default_factory=dict)
    # More files in every checkpoint: name -> function that writes it at the path given.
    files: dict[str, Callable[[Path], None]] = field(default_factory=dict)
    # report(model, folder) -> metrics: run once after training (test split, responses, plots); its
    # metrics go to report.json and the model card.
    report: Callable[[Any, Path], dict[str, Any]] | None = None
    # What the model card says about the data (name, source, sizes of the splits).
    data: dict[str, Any] = field(default_factory=dict)


def config_class(method: str) -> type:
    """The config dataclass of `method` (ClassifyConfig, InstructConfig, DPOConfig)."""
    from scratchllm.config import finetune as cfg

    if method not in METHODS:
        raise UserError(f"unknown finetuning method {method!r}; choose one of {', '.join(METHODS)}")
    return getattr(cfg, METHODS[method][1])


def _plan_function(method: str) -> Callable[..., Plan]:
    return importlib.import_module(METHODS[method][0]).plan


# --- what trains ------------------------------------------------------------------------------------
def set_trainable(model: Any, config: Any, new_modules: tuple[str, ...] = ()) -> list[str]:
    """Freeze and unfreeze as `config` says (module doc, step 3); add LoRA adapters when config.lora.r > 0.
    Returns the names of the layers given adapters (empty without LoRA)."""
    adapted: list[str] = []
    policy = config.trainable
    for p in model.parameters():
        p.requires_grad_(policy == "all" and config.lora.r == 0)
    if config.lora.r > 0:
        from scratchllm.model.lora import add_lora

        adapted = add_lora(model, config.lora)  # the adapters' own parameters train
    elif policy == "last-blocks":
        n = min(config.trainable_blocks, len(model.blocks))
        for block in list(model.blocks)[-n:]:
            block.requires_grad_(True)
        model.norm_f.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    elif policy == "head":
        model.lm_head.requires_grad_(True)
    for name in new_modules:
        model.get_submodule(name).requires_grad_(True)
    return adapted


def count_trainable(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, each shared tensor counted once."""
    seen: dict[int, Any] = {}
    for p in model.parameters():
        seen[id(p)] = p
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total


def steps_for(train: Any, batches_per_epoch: int) -> int:
    """Optimizer steps for train.epochs passes over the training split (or train.max_steps without epochs)."""
    if train.epochs is None:
        return train.max_steps
    return max(1, math.ceil(train.epochs * batches_per_epoch / train.grad_accum))


# --- the job -----------------------------------------------------------------------------------------
def run_name(config: Any, method: str) -> str:
    """The run folder's name: config.name, or the method and the data's name (classify-sms-spam)."""
    if config.name:
        return config.name
    return f"{method}-{Path(config.data).stem}" if config.data else method


def check_strategy(config: Any) -> None:
    """LoRA trains with train.strategy none or ddp, not fsdp: the adapters train under FSDP, but its
    checkpoints (the consolidated weights one process loads, `train.checkpoint`) keep no LoRA layers
    apart from the base weights yet. DDP is what LoRA needs anyway: the trainable state is small."""
    if config.train.strategy == "fsdp" and config.lora.r > 0:
        raise UserError("LoRA (lora.r > 0) trains with train.strategy ddp, not fsdp (FSDP's checkpoints do not "
                        "keep the adapters apart from the base weights): use --train.strategy ddp, or fsdp "
                        "without --lora")


def finetune(config: Any, method: str, *, progress: bool = True) -> Any:
    """Finetune `config.init_from` with `method` ("classify", "instruct", "dpo"); returns the loop's
    final `TrainState`. Everything it writes is in runs_dir/<name> (see the module doc).

    Many processes (`train.strategy` ddp or fsdp under torchrun, `train.distributed`): every rank
    loads the model and makes the plan (the same data, split and batches: the loop gives each rank
    its rows of every global batch); rank 0 alone claims and locks the run folder, prints, and
    writes the metrics, the plot, the report and the model card."""
    if not config.init_from:
        raise UserError("name the model to finetune: --init-from PATH (a run such as runs/shakespeare-bpe, a "
                        "checkpoint folder, a Hugging Face folder or OpenAI's GPT-2 folder); "
                        "`scratchllm download gpt2` fetches GPT-2")
    check_strategy(config)
    tc = config.train
    if tc.strategy == "none":
        return _finetune(config, method, progress)
    from scratchllm.train import distributed

    with distributed.job(tc.strategy, tc.device, tc.dist_timeout), distributed.only_main_prints():
        return _finetune(config, method, progress)


def _finetune(config: Any, method: str, progress: bool) -> Any:
    from scratchllm.interop.load import load_any
    from scratchllm.runtime import is_rank_zero, pick_device, seed_everything, setup_process
    from scratchllm.train.distributed import claimed_folder
    from scratchllm.train.lock import RunLock, claim_fresh_folder
    from scratchllm.train.run import ensure_writable

    name = run_name(config, method)
    base = Path(config.runs_dir) / name
    if config.train.resume and not base.is_dir():
        raise UserError(f"nothing to resume: {base} does not exist; start the run without --resume")
    model, tokenizer, source_meta = load_any(config.init_from)
    if tokenizer is None:
        raise UserError(f"{config.init_from} has no tokenizer; finetuning needs the tokenizer the model was "
                        f"trained with (import the model with `scratchllm import`, which brings it along)")
    tc = config.train
    setup_process(tc.threads, keep_freed=tc.keep_freed_memory, device=pick_device(tc.device))
    seed_everything(tc.seed)  # the split, a new head's initialisation
    plan = _plan_function(method)(config, model, tokenizer, source_meta)  # bad data fails here, nothing written
    main = is_rank_zero()
    if main:
        ensure_writable(Path(config.runs_dir))
    adapted = set_trainable(plan.model, config, plan.new_modules)
    trainable, total = count_trainable(plan.model)
    steps = steps_for(tc, plan.batches.batches_per_epoch)
    tc = tc.replace(max_steps=steps, epochs=None) if tc.epochs is not None else tc
    lora = f", LoRA r={config.lora.r} on {len(adapted)} layers" if adapted else ""
    print(f"finetune {method}: {config.init_from} -> {name}; {trainable:,} of {total:,} parameters train"
          f"{lora}; {plan.batches.batches_per_epoch} batches per epoch, {steps} steps" + _processes_note(tc))

    def claim() -> Any:
        return RunLock.acquire(base) if config.train.resume else claim_fresh_folder(base)

    with claimed_folder(claim) as folder:  # rank 0 locks it; the other ranks of a job are told which it is
        return _train_in(folder, config, method, plan, tc, tokenizer, source_meta, progress, main)


def _processes_note(tc: Any) -> str:
    from scratchllm.config.train import processes

    n = processes()
    return f"; {n} processes ({tc.strategy}), {tc.batch_size // n} rows of each batch per process" if n > 1 else ""


def _trained_model(plan: Plan, state: Any) -> Any:
    """The model the report runs: the trained one, or under FSDP (its weights are shards across the
    ranks) the consolidated weights of the last checkpoint, loaded whole in this process."""
    from scratchllm.train.distributed import is_sharded

    if not state.checkpoint or not is_sharded(plan.model):
        return plan.model
    from scratchllm.checkpoint import load_model

    return load_model(state.checkpoint)[0]


def _train_in(folder: Path, config: Any, method: str, plan: Plan, tc: Any, tokenizer: Any,
              source_meta: dict[str, Any], progress: bool, main: bool = True) -> Any:
    import torch

    from scratchllm.checkpoint import unwrap
    from scratchllm.evaluate.card import FINETUNE_NOTE, data_provenance, training_compute
    from scratchllm.runtime import machine_summary, pick_device
    from scratchllm.train.lock import RUN_CONFIG_FILE
    from scratchllm.train.logging import write_model_card
    from scratchllm.train.loop import resolve_precision, train
    from scratchllm.train.run import Run

    t0 = time.perf_counter()
    tc = tc.replace(progress=tc.progress and progress)

    def record_config(event: str, state: Any, info: dict) -> None:
        if event == "start" and main:  # after a resume's checkpoint is restored: a failed resume leaves the old one
            write_atomic(folder / RUN_CONFIG_FILE, json.dumps({"method": method, **config.to_dict()}, indent=1))

    out = Run(folder, keep_last=tc.keep_last, tokenizer=tokenizer, tensorboard=tc.tensorboard, title=folder.name,
              files=plan.files,
              meta={"init_from": config.init_from, "method": method, "finetune_config": config.to_dict(),
                    "task": plan.meta}, main=main)
    try:
        state = train(plan.model, plan.batches, plan.loss_fn, tc, eval_fn=plan.eval_fn, hooks=[record_config],
                      run=out)
    finally:
        out.close()
    if not main:  # the other ranks of a job: rank 0 reports
        return state
    out.plot()
    write_atomic(Path(config.runs_dir) / "latest", folder.name + "\n")
    results: dict[str, Any] = {}
    if plan.report is not None and state.stop_reason != "terminated":  # SIGTERM: the grace period is short
        results = plan.report(_trained_model(plan, state), folder) or {}
        write_atomic(folder / REPORT_FILE, json.dumps(results, indent=1))
    source = {"path": config.init_from, "format": source_meta.get("format"),
              "licence": source_meta.get("license") or source_meta.get("licence")}
    write_model_card(folder, {
        "name": folder.name, "kind": "finetuned", "method": method,
        "summary": f"A GPT finetuned with scratchllm ({method}) from {config.init_from}.",
        "source": {k: v for k, v in source.items() if v}, "data": {**data_provenance(config.data), **plan.data},
        "tokenizer": {"kind": getattr(tokenizer, "kind", type(tokenizer).__name__),
                      "vocab_size": tokenizer.vocab_size},
        "config": {"method": method, **config.to_dict()}, "hardware": machine_summary(),
        "precision": resolve_precision(tc.precision, pick_device(tc.device)),
        "train_seconds": round(state.elapsed, 1), "steps": state.step, "tokens": state.tokens,
        "parameters": count_trainable(plan.model)[1], "final": dict(state.last_eval), "results": results,
        "checkpoint": state.checkpoint,
        "compute": training_compute(unwrap(plan.model).config, state.tokens, state.elapsed, torch.get_num_threads(),
                                    pick_device(tc.device).type, note=FINETUNE_NOTE),
    })
    final = "  ".join(f"{k} {v:.4f}" for k, v in state.last_eval.items() if isinstance(v, float))
    print(f"{state.stop_reason}: step {state.step}, {time.perf_counter() - t0:.0f} s; {final}\n"
          f"saved {state.checkpoint}; plot {folder / 'loss.png'}; card {folder / 'MODEL_CARD.md'}")
    if state.stop_reason in ("interrupted", "terminated"):
        print(f"continue with: scratchllm finetune {method} ... --name {folder.name} --runs_dir {config.runs_dir} "
              f"--resume")
    return state
