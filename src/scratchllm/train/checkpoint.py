"""Checkpoints that never lose work: folders of safetensors + JSON, written atomically.

A run folder (`runs/<name>/`) holds:

    checkpoints/step-0000500/   model.safetensors   weights (safetensors: loading runs no code)
                                config.json         the ModelConfig, enough to rebuild the model
                                optimizer.safetensors   AdamW moments as plain tensors
                                state.json          step, tokens seen, RNG states, data position,
                                                    optimizer scalars, run config, sizes and sha256
                                                    of every file above
                                tokenizer.scratchllm.json
    latest                      name of the newest good checkpoint (one line)
    best                        name of the checkpoint with the lowest validation loss

`runs/latest` names the most recent run, so `scratchllm generate` finds it without flags.

How a save stays atomic: every file is written into a hidden temporary folder beside the
checkpoints and fsynced, the folder is renamed into place, and only then is the `latest` pointer
replaced (temp file, fsync, rename). A crash, SIGKILL or full disk at any moment leaves `latest`
naming a complete checkpoint. Loading checks each file's size and sha256 against state.json and
names the file that is wrong; `restore` falls back to the previous good checkpoint.

Not here: when to save (the loop decides), metrics and plots (`train.logging`).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError
from scratchllm.files import fsync_dir, sha256_file, write_atomic
from scratchllm.tokenizer.base import TOKENIZER_FILE

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CHECKPOINTS = "checkpoints"
STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(UserError):
    """A checkpoint file is missing, truncated or corrupted (the message names it)."""


# --- small file helpers -----------------------------------------------------------------------
def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def step_name(step: int) -> str:
    """Folder name of the checkpoint after `step` optimizer steps.

    >>> step_name(500)
    'step-0000500'
    """
    return f"step-{step:07d}"


# --- optimizer and RNG state as tensors + JSON (never pickle) ---------------------------------
def optimizer_to_safe(optimizer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split `optimizer.state_dict()` into tensors (for safetensors) and JSON scalars.

    Keys are `state.<param index>.<name>`; non-tensor per-parameter values and the param groups
    go to the JSON part.
    """
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_safe(tensors: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `optimizer_to_safe`: a state dict for `optimizer.load_state_dict`."""
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = t
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def rng_state() -> dict[str, Any]:
    """Python's and torch's global RNG states as JSON (torch's bytes in base64)."""
    import torch

    out: dict[str, Any] = {
        "python": _py_state_to_json(random.getstate()),
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }
    if torch.cuda.is_available():
        out["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(d: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(_py_state_from_json(d["python"]))
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(d["torch"]), dtype=np.uint8).copy()))
    if "cuda" in d and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(
            [torch.from_numpy(np.frombuffer(base64.b64decode(s), dtype=np.uint8).copy()) for s in d["cuda"]])


def _py_state_to_json(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def _py_state_from_json(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


# --- saving -------------------------------------------------------------------------------------
def unwrap(model: Any) -> Any:
    """The plain module under torch.compile's wrapper."""
    return getattr(model, "_orig_mod", model)


def save_checkpoint(folder: Path, model: Any, *, optimizer: Any = None, state: dict[str, Any] | None = None,
                    tokenizer: Any = None) -> Path:
    """Write a complete checkpoint at `folder` atomically (temp folder, fsync, rename).

    `state` is any JSON-serialisable dict (step, tokens, data position...); RNG states, optimizer
    scalars and a manifest of file sizes and sha256 are added. Raises OSError (e.g. disk full) with
    nothing left behind; `folder` must not exist yet.
    """
    from safetensors.torch import save_file, save_model

    folder = Path(folder)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=parent))
    try:
        m = unwrap(model)
        save_model(m, str(tmp / MODEL_FILE))
        cfg = getattr(m, "config", None)
        cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg_dict, indent=2), encoding="utf-8")
        full_state = dict(state or {})
        full_state["rng"] = rng_state()
        if optimizer is not None:
            tensors, scalars = optimizer_to_safe(optimizer)
            save_file(tensors, str(tmp / OPTIMIZER_FILE))
            full_state["optimizer"] = scalars
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
        files = {}
        for p in sorted(tmp.iterdir()):
            if p.name.startswith("."):
                p.unlink()
                continue
            fsync_file(p)
            files[p.name] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
        full_state["files"] = files
        with open(tmp / STATE_FILE, "w", encoding="utf-8") as f:
            json.dump(full_state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, folder)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# --- loading ------------------------------------------------------------------------------------
def read_state(folder: Path) -> dict[str, Any]:
    """state.json of a checkpoint (a clear CheckpointError naming the file if it is bad)."""
    p = Path(folder) / STATE_FILE
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {p} is missing; the checkpoint is incomplete")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint file {p} is corrupted or truncated (not valid JSON)") from None


def verify_checkpoint(folder: Path, deep: bool = True, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Check the files of a checkpoint (all, or `only` these) against state.json; return the state.

    `deep=False` checks sizes only (fast); `deep=True` also checks sha256.
    """
    folder = Path(folder)
    state = read_state(folder)
    for name, info in state.get("files", {}).items():
        if only is not None and name not in only:
            continue
        p = folder / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {p} is missing")
        if p.stat().st_size != info["size"]:
            raise CheckpointError(f"checkpoint file {p} is truncated or corrupted "
                                  f"({p.stat().st_size} bytes, expected {info['size']})")
        if deep and sha256_file(p) != info["sha256"]:
            raise CheckpointError(f"checkpoint file {p} is corrupted (its sha256 does not match state.json)")
    return state


def load_weights(model: Any, folder: Path) -> None:
    """Load model.safetensors into `model` (strict), errors naming the file."""
    from safetensors.torch import load_model as st_load_model

    p = Path(folder) / MODEL_FILE
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {p} is missing")
    try:
        st_load_model(unwrap(model), str(p), strict=True)
    except Exception as e:  # safetensors raises several types for a bad header or data
        raise CheckpointError(f"checkpoint file {p} cannot be loaded into this model ({e})") from None


def load_optimizer(optimizer: Any, folder: Path, state: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    p = Path(folder) / OPTIMIZER_FILE
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {p} is missing (a weights-only checkpoint cannot resume training)")
    try:
        tensors = load_file(str(p))
    except Exception as e:
        raise CheckpointError(f"checkpoint file {p} is corrupted or truncated ({e})") from None
    try:
        optimizer.load_state_dict(optimizer_from_safe(tensors, state["optimizer"]))
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state in {p} does not fit this model's parameters ({e}); "
                              f"resume with the same model and optimizer settings") from None


def checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders of a run, newest (highest step) first."""
    d = Path(run_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.is_dir() and STEP_RE.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_RE.match(p.name).group(1)), reverse=True)


def read_pointer(run_dir: Path, name: str = "latest") -> Path | None:
    p = Path(run_dir) / name
    if not p.is_file():
        return None
    target = p.read_text(encoding="utf-8").strip()
    if not target:
        return None
    return Path(run_dir) / CHECKPOINTS / target


class Checkpoints:
    """The checkpoints of one run folder: save (keep last K + best), find, restore with fallback."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.saved: set[str] = set()  # checkpoint names written by this object (this process)

    @property
    def latest(self) -> Path | None:
        return read_pointer(self.run_dir, "latest")

    @property
    def best(self) -> Path | None:
        return read_pointer(self.run_dir, "best")

    def save(self, step: int, model: Any, *, optimizer: Any = None, state: dict[str, Any] | None = None,
             tokenizer: Any = None, val_loss: float | None = None) -> Path:
        """Save after `step` steps, move `latest` (and `best` if `val_loss` improves), prune old ones."""
        folder = self.run_dir / CHECKPOINTS / step_name(step)
        state = dict(state or {})
        state.setdefault("step", step)
        state["val_loss"] = val_loss
        previous = self.latest
        try:
            if folder.name in self.saved and folder.exists():
                pass  # saved at this step already (e.g. an evaluation step that is also the last)
            else:
                if folder.exists():  # left by an earlier attempt beyond the point this run resumed from
                    trash = folder.with_name(f".trash-{folder.name}")
                    shutil.rmtree(trash, ignore_errors=True)
                    os.rename(folder, trash)
                save_checkpoint(folder, model, optimizer=optimizer, state=state, tokenizer=tokenizer)
                self.saved.add(folder.name)
            write_atomic(self.run_dir / "latest", folder.name + "\n")
            if val_loss is not None and val_loss == val_loss:
                best = self.best
                best_val = None
                if best is not None and best.is_dir():
                    try:
                        best_val = read_state(best).get("val_loss")
                    except CheckpointError:
                        best_val = None
                if best_val is None or val_loss < best_val:
                    write_atomic(self.run_dir / "best", folder.name + "\n")
        except OSError as e:
            still = f"{previous} is still the latest good checkpoint" if previous else "no checkpoint was kept"
            raise CheckpointError(f"could not save checkpoint {folder} ({e.strerror or e}); {still}; "
                                  f"free disk space or fix permissions, then resume with --resume") from None
        self.prune()
        return folder

    def prune(self) -> None:
        """Delete all but the newest `keep_last` checkpoints, keeping `best` and `latest`."""
        keep = {p.name for p in checkpoints(self.run_dir)[: self.keep_last]}
        for ptr in (self.latest, self.best):
            if ptr is not None:
                keep.add(ptr.name)
        for p in checkpoints(self.run_dir):
            if p.name not in keep:
                # rename first so a crash mid-delete leaves no half-deleted folder under a step name
                trash = p.with_name(f".trash-{p.name}")
                try:
                    os.rename(p, trash)
                except OSError:
                    continue
                shutil.rmtree(trash, ignore_errors=True)
        for p in (self.run_dir / CHECKPOINTS).glob(".t*"):
            shutil.rmtree(p, ignore_errors=True)

    def candidates(self) -> list[Path]:
        """`latest` first, then older checkpoints newest first (the order to try on resume)."""
        out = []
        latest = self.latest
        if latest is not None:
            out.append(latest)
        for p in checkpoints(self.run_dir):
            if latest is None or int(STEP_RE.match(p.name).group(1)) < int(STEP_RE.match(latest.name).group(1)):
                out.append(p)
        return out

    def restore(self, model: Any, optimizer: Any = None) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest good checkpoint into `model` (and `optimizer`) and set RNG states.

        A bad checkpoint gives a warning naming the file and the next older one is tried.
        Returns (folder, state), or None if the run has no checkpoint.
        """
        for folder in self.candidates():
            try:
                state = verify_checkpoint(folder)
                load_weights(model, folder)
                if optimizer is not None:
                    load_optimizer(optimizer, folder, state)
            except CheckpointError as e:
                warnings.warn(f"{e}; falling back to the previous checkpoint", stacklevel=2)
                continue
            if "rng" in state:
                set_rng_state(state["rng"])
            if self.latest is None or self.latest.name != folder.name:
                write_atomic(self.run_dir / "latest", folder.name + "\n")  # point past the bad one
            return folder, state
        if checkpoints(self.run_dir):
            raise CheckpointError(f"no good checkpoint in {self.run_dir / CHECKPOINTS}: every one is corrupted")
        return None


# --- for other commands: find and load a trained model -------------------------------------------
def latest_run(runs_dir: str | os.PathLike = "runs") -> Path:
    """The run folder `runs_dir/latest` names (the most recent `scratchllm train`)."""
    runs = Path(runs_dir)
    ptr = runs / "latest"
    if ptr.is_file():
        name = ptr.read_text(encoding="utf-8").strip()
        if name and (runs / name).is_dir():
            return runs / name
    found = sorted((p for p in runs.glob("*/latest") if p.is_file()), key=lambda p: p.stat().st_mtime)
    if found:
        return found[-1].parent
    raise UserError(f"no trained run in {runs}/; train one first with "
                    f"`scratchllm train --config configs/shakespeare-bpe.toml`, or pass a checkpoint folder")


def resolve_checkpoint(folder: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder or a run folder (its `latest`)."""
    p = Path(folder)
    if (p / MODEL_FILE).is_file():
        return p
    if (p / "latest").is_file() or (p / CHECKPOINTS).is_dir():
        cands = Checkpoints(p).candidates()
        if cands:
            return cands[0]
    if not p.exists():
        raise UserError(f"{p} does not exist; pass a run folder (runs/<name>) or a checkpoint folder")
    raise UserError(f"{p} holds no checkpoint (no {MODEL_FILE}, no latest pointer)")


def load_model(folder: str | os.PathLike, device: Any = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, meta) from a run or checkpoint folder: config.json + model.safetensors + tokenizer.

    For a run folder, a corrupted latest checkpoint falls back to the previous good one (with a
    warning). `meta` is state.json (step, tokens seen, losses, run config) or {} if absent.
    The model is in eval mode. The tokenizer is None if the folder has none.
    """
    from scratchllm.config.model import ModelConfig
    from scratchllm.model import GPT
    from scratchllm.tokenizer import load as load_tokenizer

    p = Path(folder)
    if any((p / f).is_file() for f in (MODEL_FILE, STATE_FILE, CONFIG_FILE)) and not (p / "latest").exists():
        cands = [p]  # a checkpoint folder
    else:
        cands = Checkpoints(p).candidates() or [resolve_checkpoint(p)]
    last_error: CheckpointError | None = None
    for ck in cands:
        try:
            meta = (verify_checkpoint(ck, only=(MODEL_FILE, CONFIG_FILE, TOKENIZER_FILE))
                    if (ck / STATE_FILE).exists() else {})
            cfg_path = ck / CONFIG_FILE
            try:
                cfg = ModelConfig.from_dict(json.loads(cfg_path.read_text(encoding="utf-8")))
            except FileNotFoundError:
                raise CheckpointError(f"checkpoint file {cfg_path} is missing") from None
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"checkpoint file {cfg_path} is corrupted (not valid JSON)") from None
            model = GPT(cfg)
            load_weights(model, ck)
            tok = load_tokenizer(ck) if (ck / TOKENIZER_FILE).is_file() else None
        except CheckpointError as e:
            last_error = e
            if len(cands) > 1:
                warnings.warn(f"{e}; trying the previous checkpoint", stacklevel=2)
            continue
        meta = {k: v for k, v in meta.items() if k not in ("rng", "optimizer")}
        meta["checkpoint"] = str(ck)
        return model.to(device).eval(), tok, meta
    assert last_error is not None
    raise last_error
