"""Training settings (`TrainConfig`) and a whole pretraining run (`RunConfig`).

`TrainConfig` is what the one training loop (`scratchllm.train.loop.train`) reads: optimizer,
schedule, precision, evaluation, checkpoints, stopping. Today that loop runs pretraining
(`train.pretrain`); the finetuning trainers planned on top of it (classification, instructions,
preferences) are to read the same settings rather than a copy.

`RunConfig` composes a pretraining run from TOML tables `[model] [data] [train] [sample]` plus a
few top-level keys (`name`, `runs_dir`, `preset`, `prompt`). A `preset` names one of the shipped
recipes (`scratchllm/recipes/*.toml`, also reachable as `configs/`); the TOML and `--key value`
flags are applied on top of it.

Defaults follow nanoGPT's `train.py` (AdamW betas 0.9/0.95, weight decay 0.1, clip 1.0,
warmup then cosine to lr/10) unless a comment says otherwise. Not here: the loop itself.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scratchllm.config.base import Config, check, check_finite, load_toml, tomllib
from scratchllm.config.data import DataConfig
from scratchllm.config.model import ModelConfig
from scratchllm.config.sample import SampleConfig
from scratchllm.errors import ConfigError

OPTIMIZERS = ("adamw", "muon", "sgd")
# what train.distributed can do with many processes (checked here: that module imports torch.distributed)
STRATEGIES = ("none", "ddp", "fsdp")


def processes() -> int:
    """The processes of this job: torchrun's WORLD_SIZE (1 when started without it)."""
    import os

    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class TrainConfig(Config):
    # --- optimizer -------------------------------------------------------------------
    # "adamw" (Loshchilov & Hutter 2019), the standard; "muon": Muon (train.muon) for the matrices in
    # the transformer blocks, AdamW at `lr` for embeddings, head and gains; "sgd" for teaching/tests.
    optimizer: str = "adamw"
    # Peak learning rate; 6e-4 is GPT-3 small's (and nanoGPT's default for 124M).
    lr: float = 6e-4
    # Decoupled weight decay, applied to matrices (2-D weights) only, as GPT-2/nanoGPT do.
    weight_decay: float = 0.1
    # AdamW's first-moment (momentum) decay; 0.9 as Adam's paper, GPT-3 and nanoGPT.
    beta1: float = 0.9
    # 0.95 as GPT-3; nanoGPT uses 0.99 when tokens per step are few.
    beta2: float = 0.95
    # AdamW's denominator term that keeps an update finite where the second moment is ~0; 1e-8 is
    # torch's default (and nanoGPT's).
    eps: float = 1e-8
    # Clip the global gradient norm to this value; 0 turns clipping off.
    grad_clip: float = 1.0
    # Muon's peak learning rate (scaled by the same schedule as lr); 0.02 is Jordan et al.'s default.
    muon_lr: float = 0.02
    # Muon's Nesterov momentum; 0.95 as Jordan et al.
    muon_momentum: float = 0.95
    # Use the fused AdamW kernel where torch has one for the device (CPU since torch 2.4, CUDA).
    fused: bool = True
    # --- schedule --------------------------------------------------------------------
    # "cosine": linear warmup then cosine decay to min_lr; "linear": warmup then straight line to
    # min_lr; "constant": warmup then flat at lr (the book's chapter 5 run).
    schedule: str = "cosine"
    # Steps of linear warmup from 0 to lr; 100 is nanoGPT's Shakespeare recipe (its 124M run uses 2,000).
    warmup_steps: int = 100
    # Step at which the decay reaches min_lr; None means max_steps.
    decay_steps: int | None = None
    # What the decay runs over: "steps" (to decay_steps) or "seconds": progress is elapsed/max_seconds,
    # so the rate reaches min_lr when the time budget ends (warmup still counts steps). A time-based
    # schedule depends on the machine's speed, so a resumed run is not bit-exact.
    decay_over: Literal["steps", "seconds"] = "steps"
    # None means lr / 10 (Chinchilla's and nanoGPT's rule of thumb).
    min_lr: float | None = None
    # --- batches and length ------------------------------------------------------------
    # Sequences per micro-batch; 12 is nanoGPT's default (its CPU Shakespeare recipe too).
    batch_size: int = 12
    # Micro-batches summed into one optimizer step (effective batch = batch_size * grad_accum).
    grad_accum: int = 1
    # Optimizer steps to train for; 2,000 is nanoGPT's CPU Shakespeare recipe (max_iters).
    max_steps: int = 2000
    # Instead of max_steps: this many passes over the training split (the book counts epochs); the
    # job that knows the data size (train.pretrain) turns it into max_steps.
    epochs: float | None = None
    # Stop when this many seconds of wall time have passed (None: no budget). Counted across resumes.
    max_seconds: float | None = None
    # --- precision and speed ---------------------------------------------------------------
    # "auto": bf16 autocast where bf16 matmuls are native (CUDA with bf16 support; CPUs with AVX512-BF16
    # or AMX), fp32 elsewhere: there bf16 trains faster with the same losses (benchmarks/train_throughput.py;
    # figures in benchmarks/RESULTS.md). fp32 master weights always.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # torch.compile the model; off by default because on CPU it costs minutes and pays little for small models.
    compile: bool = False
    # "auto": CUDA, then Apple's MPS, then the CPU (runtime.pick_device); or name one: cpu, cuda, mps.
    device: str = "auto"
    # Intra-op threads; None leaves torch's default (one per core).
    threads: int | None = None
    # Keep freed memory in the process (glibc malloc settings, runtime.keep_freed_memory): large tensors
    # re-allocated every step then skip the page faults, which is faster for large models but keeps the
    # process at its high-water mark. Not applied when the model checkpoints activations: that run chose
    # memory over speed (both measured by benchmarks/train_throughput.py; figures in benchmarks/RESULTS.md).
    keep_freed_memory: bool = True
    # Seeds the model's initialisation and batch order (train.pretrain) and the dropout masks (the
    # loop); 1337 is nanoGPT's.
    seed: int = 1337
    # --- evaluation and logging --------------------------------------------------------------
    # Evaluate (train and validation loss over fixed batches) every this many steps, and at the end.
    eval_interval: int = 250
    # Batches per split in each evaluation (nanoGPT's CPU recipe: 20).
    eval_batches: int = 20
    # Print a text sample every this many steps (0: only before and after training).
    sample_interval: int = 0
    # Metrics line (JSONL) every this many steps.
    log_interval: int = 10
    # Peak FLOP/s for model FLOPs utilisation; None: a large matmul measured once per machine (runtime.peak_flops).
    peak_flops: float | None = None
    # A progress bar on the terminal (tqdm); the metrics file is written either way.
    progress: bool = True
    # Also write TensorBoard event files into the run folder (needs the tensorboard package); off
    # because metrics.jsonl and loss.png are always written and need nothing more.
    tensorboard: bool = False
    # --- checkpoints -----------------------------------------------------------------------
    # Save every this many steps; None means at every evaluation. Always saved at the end and on Ctrl-C.
    checkpoint_interval: int | None = None
    # Keep this many most recent checkpoints (plus the best by validation loss).
    keep_last: int = 2
    # Continue the run in the run folder from its latest good checkpoint.
    resume: bool = False
    # --- many processes (torchrun; train.distributed) -------------------------------------------
    # "none": one process. "ddp": DistributedDataParallel, every process holds the whole model and the
    # gradients are averaged; "fsdp": FSDP2 (fully_shard per block), weights, gradients and optimizer
    # state sharded across processes, for models whose training state does not fit one device. Start
    # the processes with torchrun (or `scratchllm train --nproc N`). batch_size stays the job's
    # micro-batch: each of N processes takes batch_size / N of its rows, so N changes the speed, not the math.
    strategy: str = "none"
    # FSDP: gather the parameters in this dtype for the forward and backward ("bf16": half the traffic and
    # memory of the gathered weights; gradients are still reduced in fp32 and the fp32 shards stay the
    # optimizer's master weights); "fp32" keeps everything fp32.
    fsdp_param_dtype: Literal["fp32", "bf16"] = "fp32"
    # FSDP: free each block's gathered weights after its forward and gather them again for the backward
    # (the memory FSDP exists to save); false keeps them, trading memory for one all-gather per block.
    fsdp_reshard_after_forward: bool = True
    # FSDP: keep the parameter shards, gradients and optimizer state in CPU memory, the optimizer step on
    # the CPU (CPUOffloadPolicy): fits larger models on small GPUs at the cost of copies every step.
    fsdp_cpu_offload: bool = False
    # Seconds a collective may wait for the other processes before the job fails: a process that died
    # or hangs ends the job with an error after this long instead of hanging it (torchrun then stops the
    # rest). 300 s leaves room for a slow checkpoint save on rank 0.
    dist_timeout: float = 300.0

    def __post_init__(self) -> None:
        check_finite(self, "train.")
        check(self.optimizer in OPTIMIZERS,
              f"train.optimizer {self.optimizer!r} is unknown; choose one of {', '.join(OPTIMIZERS)}")
        check(self.schedule in SCHEDULES,
              f"train.schedule {self.schedule!r} is unknown; choose one of {', '.join(SCHEDULES)}")
        check(self.lr > 0, f"train.lr must be positive, got {self.lr}")
        check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)")
        check(self.precision in ("auto", "fp32", "bf16"),
              f"train.precision {self.precision!r} is unknown; choose auto, fp32 or bf16")
        check(self.muon_lr > 0, f"train.muon_lr must be positive, got {self.muon_lr}")
        check(0 <= self.muon_momentum < 1, f"train.muon_momentum must be in [0, 1), got {self.muon_momentum}")
        check(self.eps > 0, f"train.eps must be positive, got {self.eps}")
        check(self.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 is off), got {self.grad_clip}")
        check(self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay_steps is not None:
            check(self.decay_steps > 0, f"train.decay_steps must be positive or none, got {self.decay_steps}")
        check(self.decay_over == "steps" or (self.decay_over == "seconds" and self.max_seconds is not None),
              f"train.decay_over {self.decay_over!r}: choose steps, or seconds together with train.max_seconds")
        if self.min_lr is not None:
            check(0 <= self.min_lr <= self.lr, f"train.min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
        check(self.batch_size > 0, f"train.batch_size must be a positive integer, got {self.batch_size}")
        check(self.grad_accum > 0, f"train.grad_accum must be a positive integer, got {self.grad_accum}")
        check(self.max_steps > 0, f"train.max_steps must be a positive integer, got {self.max_steps}")
        if self.epochs is not None:
            check(self.epochs > 0, f"train.epochs must be positive or none, got {self.epochs}")
        if self.max_seconds is not None:
            check(self.max_seconds > 0, f"train.max_seconds must be positive or none, got {self.max_seconds}")
        check(self.eval_interval > 0, f"train.eval_interval must be positive, got {self.eval_interval}")
        check(self.eval_batches > 0, f"train.eval_batches must be positive, got {self.eval_batches}")
        check(self.sample_interval >= 0, f"train.sample_interval must be >= 0, got {self.sample_interval}")
        check(self.log_interval > 0, f"train.log_interval must be positive, got {self.log_interval}")
        if self.checkpoint_interval is not None:
            check(self.checkpoint_interval > 0,
                  f"train.checkpoint_interval must be positive or none, got {self.checkpoint_interval}")
        check(self.keep_last >= 1, f"train.keep_last must be >= 1, got {self.keep_last}")
        if self.threads is not None:
            check(self.threads > 0, f"train.threads must be positive or none, got {self.threads}")
        check(self.strategy in STRATEGIES,
              f"train.strategy {self.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        check(self.fsdp_param_dtype in ("fp32", "bf16"),
              f"train.fsdp_param_dtype {self.fsdp_param_dtype!r} is unknown; choose fp32 or bf16")
        check(self.dist_timeout > 0, f"train.dist_timeout must be a positive number of seconds, got "
                                     f"{self.dist_timeout}")
        check(not (self.strategy == "fsdp" and self.optimizer == "muon"),
              "train.optimizer muon orthogonalises whole matrices, which FSDP shards across processes; "
              "use train.strategy ddp with muon, or adamw with fsdp")
        world = processes()
        check(world == 1 or self.batch_size % world == 0,
              f"train.batch_size {self.batch_size} must be a multiple of the {world} processes (each takes an "
              f"equal share of every batch)")

    @property
    def final_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr


@dataclass
class RunConfig(Config):
    """A whole pretraining run: model, data, training and sampling settings and where to save."""

    # Folder name under runs_dir; "" means the recipe's file name or the preset name.
    name: str = ""
    # Folder that holds the run folders (and the prepared data, runs_dir/data); `latest` names the last run.
    runs_dir: str = "runs"
    # Text the before/after samples start from ("" starts from the end-of-text token or a newline).
    prompt: str = "\n"
    # Start from these weights instead of a random initialisation: a run or checkpoint folder, a Hugging
    # Face model folder or OpenAI's GPT-2 folder (anything `scratchllm import` reads). The [model]
    # settings must describe the same shapes (the check names the first tensor that differs); None:
    # random initialisation. Ignored when resuming (the run's checkpoint wins).
    init_from: str | None = None
    # The model's shape and options (ModelConfig); its defaults are GPT-2 124M's shape.
    model: ModelConfig = field(default_factory=ModelConfig)
    # The corpus, its cleaning and the tokenizer (DataConfig).
    data: DataConfig = field(default_factory=DataConfig)
    # How to train: optimizer, schedule, precision, evaluation, checkpoints, stopping (TrainConfig).
    train: TrainConfig = field(default_factory=TrainConfig)
    # The samples printed before, during and after training (SampleConfig), with a run's own defaults:
    # 200 new tokens at temperature 0.8 with top-k 200 (nanoGPT's sample.py), seed 1337 so that samples
    # compare across runs.
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(max_new_tokens=200, temperature=0.8,
                                                                      top_k=200, seed=1337))

    def __post_init__(self) -> None:
        check("/" not in self.name and self.name not in (".", ".."),
              f"name {self.name!r} must be a plain folder name (no '/')")
        check(self.init_from is None or self.init_from.strip() != "",
              "init_from is empty; give a model folder to start from, or leave it unset")

    @classmethod
    def load(cls, config: str | Path | None = None, preset: str | None = None,
             overrides: dict[str, Any] | None = None) -> RunConfig:
        """The recipe `preset` (a shipped TOML, `recipes()`), then the TOML file `config` (which may
        name its own `preset`), then flag overrides. `--preset X` is exactly `--config configs/X.toml`."""
        data: dict[str, Any] = {}
        if config is not None:
            data = load_toml(config)
        preset = preset or data.pop("preset", None)
        data.pop("preset", None)
        merged: dict[str, Any] = {}
        if preset is not None:
            _deep_update(merged, recipe(preset))
        _deep_update(merged, data)
        if config is not None and not data.get("name"):
            merged["name"] = Path(config).stem
        if not merged.get("name"):
            merged["name"] = preset or "run"
        run = cls.from_dict(merged)
        if overrides:
            run = run.override(overrides)
        return run


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """Merge nested dicts: `src` wins.

    >>> d = {"model": {"n_layer": 2, "n_head": 2}}; _deep_update(d, {"model": {"n_layer": 4}}); d
    {'model': {'n_layer': 4, 'n_head': 2}}
    """
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = dict(v) if isinstance(v, dict) else v


def _recipe_files() -> dict[str, Any]:
    """The shipped recipes (package data `scratchllm/recipes/*.toml`, linked as `configs/`) by name."""
    folder = importlib.resources.files("scratchllm").joinpath("recipes")
    found = {f.name[: -len(".toml")]: f for f in folder.iterdir() if f.name.endswith(".toml")}
    return dict(sorted(found.items()))


def recipes() -> dict[str, str]:
    """Each shipped recipe's name and what it is (its first comment line), for `train --list-presets`."""
    out = {}
    for name, f in _recipe_files().items():
        first = next((ln for ln in f.read_text(encoding="utf-8").splitlines() if ln.startswith("#")), "")
        out[name] = first.lstrip("#").strip()
    return out


def recipe(name: str) -> dict[str, Any]:
    """The settings of shipped recipe `name` (what `--preset name` starts from)."""
    files = _recipe_files()
    if name not in files:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(files)} (scratchllm train "
                          f"--list-presets)")
    return tomllib.loads(files[name].read_text(encoding="utf-8"))
