"""Finding and loading a trained model, for every command that reads one (generate, evaluate, serve, interop).

- `latest_run(runs_dir)`: the run folder `runs/latest` names (the most recent `scratchllm train`).
- `resolve_checkpoint(folder)` / `find_checkpoints(folder)`: what a user's folder holds, a checkpoint
  folder or a run folder (its checkpoints, `latest` first); a runs folder, a file or an empty folder
  is one clear error that says what to pass instead.
- `load_model(folder)`: (model, tokenizer, meta) rebuilt from config.json, model.safetensors and the
  tokenizer, never executing pickled code. A LoRA checkpoint's adapters are merged into the weights
  (plain nn.Linear layers: what generation and export want) unless `merge=False`.
- `first_good(candidates, attempt)`: the one fallback rule, shared with training's restore: try each
  checkpoint in turn; skipped ones become warnings once a good one is found; when none is good, ONE
  error names each file tried and what is wrong with it.

Not here: optimizer and RNG state, resume (`train.checkpoint`); the folder format (`checkpoint.folder`).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from scratchllm.checkpoint.folder import (
    ADAPTERS_CONFIG,
    ADAPTERS_FILE,
    CONFIG_FILE,
    MASKS_FILE,
    MODEL_FILE,
    QUANT_CONFIG,
    STATE_FILE,
    STEP_RE,
    TOKENIZER_FILE,
    CheckpointError,
    CheckpointMismatch,
    load_weights,
    read_adapters,
    read_quantization,
    verify_checkpoint,
)
from scratchllm.checkpoint.pointers import CHECKPOINTS, LATEST, candidates, read_name
from scratchllm.errors import UserError

T = TypeVar("T")
RUN_HINT = "pass a run folder (runs/<name>) or a checkpoint folder"


def first_good(cands: list[Path], attempt: Callable[[Path], T], *, where: Path,
               stop_on_mismatch: bool = False) -> tuple[Path, T]:
    """(folder, attempt(folder)) for the first candidate `attempt` accepts.

    A `CheckpointError` moves on to the next candidate; the ones skipped are warned about once a
    good one is found. If none is good, one CheckpointError names each file tried and its fault.
    `stop_on_mismatch`: a sound checkpoint that does not fit (CheckpointMismatch) ends the search
    at once (its older siblings would not fit either).
    """
    errors: list[CheckpointError] = []
    for folder in cands:
        try:
            result = attempt(folder)
        except CheckpointError as e:
            if stop_on_mismatch and isinstance(e, CheckpointMismatch):
                raise
            errors.append(e)
            continue
        for e in errors:
            warnings.warn(f"{e}; using the previous good checkpoint {folder}", stacklevel=3)
        return folder, result
    if not errors:
        raise CheckpointError(f"{where} holds no checkpoint")
    if len(errors) == 1:
        raise errors[0]
    tried = " ".join(f"({i}) {e}" for i, e in enumerate(errors, 1))
    raise CheckpointError(f"no good checkpoint in {where}: none of the {len(errors)} tried can be loaded: {tried}")


# --- what a folder holds ----------------------------------------------------------------------------
def _is_run_folder(p: Path) -> bool:
    """A run folder has checkpoints/ or a `latest` pointer naming a step (a runs folder's names a run)."""
    if (p / CHECKPOINTS).is_dir():
        return True
    try:
        name = read_name(p / LATEST)
    except CheckpointError:
        return False
    return name is not None and STEP_RE.match(name) is not None


def runs_in(folder: Path) -> list[Path]:
    """The run folders directly inside `folder`, by name."""
    try:
        return sorted(c for c in folder.iterdir() if c.is_dir() and _is_run_folder(c))
    except OSError:
        return []


def find_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoints to try for a user's folder: itself (a checkpoint folder) or a run's, `latest` first."""
    p = Path(folder)
    if not p.exists():
        raise UserError(f"{p} does not exist; {RUN_HINT}")
    if p.is_file() and p.name == LATEST:  # `runs/latest` (names a run) or `runs/X/latest` (names a step)
        p = p.parent if _is_run_folder(p.parent) else latest_run(p.parent)
    if not p.is_dir():
        raise UserError(f"{p} is a file, not a folder; {RUN_HINT}")
    if _is_run_folder(p):
        found = candidates(p)
        if not found:
            raise UserError(f"run folder {p} holds no checkpoint yet ({p / CHECKPOINTS} is empty); "
                            f"train it (or resume it) until it saves one")
        return found
    if any((p / f).is_file() for f in (MODEL_FILE, STATE_FILE, CONFIG_FILE)):
        return [p]
    runs = runs_in(p)
    if runs or (p / LATEST).is_file():
        names = ", ".join(str(r) for r in runs[:5]) + (", ..." if len(runs) > 5 else "")
        example = runs[0] if runs else p / "<name>"
        listed = f" (here: {names})" if runs else ""
        raise UserError(f"{p} is a runs folder, not a run: pass one of the runs in it{listed}, "
                        f"e.g. -m {example}")
    raise UserError(f"{p} holds no checkpoint (no {MODEL_FILE}, no {CHECKPOINTS}/ folder); {RUN_HINT}")


def resolve_checkpoint(folder: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its `latest`)."""
    return find_checkpoints(folder)[0]


def latest_run(runs_dir: str | os.PathLike = "runs") -> Path:
    """The run folder `runs_dir/latest` names (the most recent `scratchllm train`).

    Without that pointer, the run whose `latest` checkpoint pointer changed last. The pointer must
    name a folder directly inside `runs_dir`; anything else is an error naming the pointer file.
    """
    runs = Path(runs_dir)
    ptr = runs / LATEST
    name = read_name(ptr)
    if name is not None:
        if name in (".", "..") or name != Path(name).name or "\\" in name:
            raise CheckpointError(f"pointer file {ptr} holds {name[:60]!r}, not the name of a run folder in "
                                  f"{runs}; fix or delete it")
        if not (runs / name).is_dir():
            raise CheckpointError(f"pointer file {ptr} names run {name!r}, which is not a folder in {runs}; "
                                  f"pass a run folder (-m {runs}/<name>) or delete {ptr}")
        return runs / name
    found = sorted((p for p in runs.glob(f"*/{LATEST}") if p.is_file()), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1].parent
    raise UserError(f"no trained run in {runs}/; train one first with "
                    f"`scratchllm train --config configs/shakespeare-bpe.toml`, or pass a checkpoint folder")


# --- loading ------------------------------------------------------------------------------------------
def read_model(folder: Path, device: Any = "cpu", merge: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, meta) from one checkpoint folder, its files checked first.

    A LoRA checkpoint's model comes merged (plain linear layers), or with `merge=False` with its LoRA
    layers; meta["lora"] is then its adapters.json. A quantized checkpoint's model has its quantized
    layers (`model.quant_linear`); meta["quantization"] is its quantization.json.
    """
    from scratchllm.config.model import ModelConfig
    from scratchllm.model.lora import merge_lora
    from scratchllm.tokenizer.base import load as load_tokenizer

    if (folder / ADAPTERS_CONFIG).is_file() and not (folder / MODEL_FILE).exists():
        raise CheckpointError(f"{folder} holds LoRA adapters alone, not a model; read it with a command that takes "
                              f"any model folder (generate -m, export, lora merge), which loads its base model")
    meta = (verify_checkpoint(folder, only=(MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE, ADAPTERS_FILE, ADAPTERS_CONFIG,
                                        QUANT_CONFIG, MASKS_FILE))
            if (folder / STATE_FILE).exists() else {})
    cfg_path = folder / CONFIG_FILE
    try:
        cfg = ModelConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {cfg_path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint file {cfg_path} is corrupted (not valid JSON)") from None
    except (UserError, TypeError, AttributeError) as e:  # valid JSON of the wrong shape or values
        raise CheckpointError(f"checkpoint file {cfg_path} does not describe a model ({e})") from None
    quantized = (folder / QUANT_CONFIG).is_file()
    # LoRA layers and pruning masks are added to a model with real tensors; everything else is built empty
    empty = quantized or not ((folder / ADAPTERS_CONFIG).is_file() or (folder / MASKS_FILE).exists())
    model = build_model(cfg, quantized=quantized, empty=empty)
    load_weights(model, folder)
    if model.config.position == "rope" and model.rope_cos.is_meta:  # built on the meta device (quantized)
        model.init_rope()
    meta = {k: v for k, v in meta.items() if k not in ("rng", "optimizer")}
    if (folder / QUANT_CONFIG).is_file():
        meta["quantization"] = read_quantization(folder)
    if (folder / ADAPTERS_CONFIG).is_file():
        meta["lora"] = {**read_adapters(folder), "merged": merge}
        if merge:
            merge_lora(model)
    try:
        tok = load_tokenizer(folder) if (folder / TOKENIZER_FILE).is_file() else None
    except UserError as e:
        raise CheckpointError(str(e)) from None
    meta["checkpoint"] = str(folder)
    return model.to(device).eval(), tok, meta


def build_model(config: Any, quantized: bool = False, empty: bool = False) -> Any:
    """A GPT of `config` for a checkpoint to fill. With `empty` (always for a quantized checkpoint) it is
    built on the meta device without initialisation (`skip_init`): no memory, no random numbers to
    throw away; `load_weights` then gives it the file's tensors themselves (memory-mapped, copy-on-write:
    nothing is copied), a quantized one after its quantized layers. The RoPE tables are computed after.
    Peak memory then follows the file (a quantized one's, not the fp32 model it was made from)."""
    import torch

    from scratchllm.model import GPT

    if not (quantized or empty):
        return GPT(config)
    with skip_init(), torch.device("meta"):
        return GPT(config)


# torch.nn.init's functions, which `skip_init` turns into no-ops.
INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
                  "trunc_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def skip_init():
    """Within the block, torch.nn.init leaves tensors as they are: a model built here is not randomly
    initialised (its weights are about to be replaced). On the meta device this also keeps torch from
    importing its Python reference kernels, which costs seconds the first time."""
    import torch.nn.init as init

    saved = {name: getattr(init, name) for name in INIT_FUNCTIONS}
    try:
        for name in INIT_FUNCTIONS:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def load_model(folder: str | os.PathLike, device: Any = "cpu", merge: bool = True) -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, meta) from a run or checkpoint folder: config.json + model.safetensors + tokenizer.

    For a run folder, a damaged latest checkpoint falls back to the previous good one (with a
    warning); if none is good, one error names each file tried. `meta` is state.json (step, tokens
    seen, losses, run config) or {} if absent, plus `checkpoint`: the folder loaded. The model is in
    eval mode. The tokenizer is None if the folder has none. A LoRA checkpoint's adapters are merged
    into the weights unless `merge=False` (then the model keeps its LoRA layers); meta["lora"] says so.
    """
    p = Path(folder)
    _, loaded = first_good(find_checkpoints(p), lambda ck: read_model(ck, device, merge), where=p / CHECKPOINTS)
    return loaded
