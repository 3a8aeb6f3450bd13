"""Training's side of checkpoints: optimizer and RNG state, which checkpoints to keep, restore for resume.

A checkpoint folder and its integrity checks are `scratchllm.checkpoint` (below training, so that
generation and the other commands read checkpoints without importing training). Here training adds
to each checkpoint:

    optimizer.safetensors   the optimizer's per-parameter tensors (AdamW moments), as plain tensors
    state.json              + step, tokens seen, elapsed time, losses, data position, the Python and
                              torch RNG states (JSON, base64), the optimizer's scalars and groups

and decides which to keep: the last `keep_last` plus the best by validation loss (`Checkpoints`).
`Checkpoints.restore` loads the newest good checkpoint for `--resume`: a damaged one is skipped
with a warning naming its file, and if none is good ONE error names each file tried. Every
training field of state.json is checked before use, so an edited value is a clear error naming
the file and field, never a traceback. A model of another shape is named as such, with the tensor.

Not here: when to save (the loop decides), the folder format and pointers (`checkpoint`),
metrics and plots (`train.logging`).
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

from scratchllm.checkpoint.folder import (
    STATE_FILE,
    CheckpointError,
    CheckpointMismatch,
    bad_field,
    is_int,
    is_number,
    load_weights,
    read_state,
    save_checkpoint,
    step_name,
    verify_checkpoint,
)
from scratchllm.checkpoint.load import first_good
from scratchllm.checkpoint.pointers import (
    BEST,
    CHECKPOINTS,
    LATEST,
    candidates,
    checkpoints,
    read_pointer,
    write_pointer,
)

OPTIMIZER_FILE = "optimizer.safetensors"


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


def _py_state_to_json(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def _py_state_from_json(s: Any) -> tuple:
    if not (isinstance(s, list) and len(s) == 3 and isinstance(s[1], list)):
        raise TypeError("not [version, [numbers], gauss]")
    return (s[0], tuple(s[1]), s[2])


# --- checks on training's fields of state.json (it is not in the manifest: a hand edit shows only here) ---
def _rng_bytes(value: Any, path: Path, field: str) -> Any:
    import numpy as np
    import torch

    if not isinstance(value, str):
        raise bad_field(path, field, value, "the RNG state's bytes in base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise bad_field(path, field, value, "the RNG state's bytes in base64") from None
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())


def check_rng_state(d: Any, path: Path) -> dict[str, Any]:
    """The RNG states of state.json, each tried on a fresh generator: {"python": tuple, "torch": tensor, ...}."""
    import torch

    if not isinstance(d, dict):
        raise bad_field(path, "rng", d, "an object with the python and torch RNG states")
    try:
        py = _py_state_from_json(d.get("python"))
        random.Random().setstate(py)
    except (TypeError, ValueError, IndexError, OverflowError):
        raise bad_field(path, "rng.python", d.get("python"),
                        "Python's random state [version, [625 whole numbers], null]") from None
    t = _rng_bytes(d.get("torch"), path, "rng.torch")
    try:
        torch.Generator().set_state(t)
    except RuntimeError:
        raise bad_field(path, "rng.torch", d.get("torch"), "torch's CPU RNG state in base64") from None
    out: dict[str, Any] = {"python": py, "torch": t}
    if "cuda" in d:
        if not isinstance(d["cuda"], list):
            raise bad_field(path, "rng.cuda", d["cuda"], "a list of CUDA RNG states in base64")
        out["cuda"] = [_rng_bytes(s, path, f"rng.cuda.{i}") for i, s in enumerate(d["cuda"])]
    return out


def set_rng_state(d: dict[str, Any]) -> None:
    """Set the global RNGs from `check_rng_state`'s result."""
    import torch

    random.setstate(d["python"])
    torch.set_rng_state(d["torch"])
    if "cuda" in d and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(d["cuda"])


def check_training_state(state: dict[str, Any], path: Path, *, optimizer: bool) -> None:
    """Each training field of state.json has the type resume needs, else one error naming file and field."""
    if "step" not in state:
        raise CheckpointError(f"checkpoint file {path} has no field 'step'; the file was edited or damaged")
    checks = {
        "tokens": (lambda v: is_int(v) and v >= 0, "a whole number >= 0"),
        "eval_step": (is_int, "a whole number"),
        "elapsed": (lambda v: is_number(v) and v >= 0, "a number of seconds >= 0"),
        "best_val": (lambda v: v is None or is_number(v), "a number or null"),
        "last_eval": (lambda v: v is None or isinstance(v, dict), "an object of metrics"),
        "data": (lambda v: v is None or (isinstance(v, dict) and all(is_int(x) for x in v.values())),
                 "null or an object of whole numbers (the data position)"),
    }
    for name, (ok, expected) in checks.items():
        if name in state and not ok(state[name]):
            raise bad_field(path, name, state[name], expected)
    if optimizer:
        meta = state.get("optimizer")
        if not isinstance(meta, dict):
            raise bad_field(path, "optimizer", meta, "an object with the optimizer's param_groups and scalars")
        groups = meta.get("param_groups")
        if not (isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                 and all(is_int(i) for i in g["params"]) for g in groups)):
            raise bad_field(path, "optimizer.param_groups", groups, "a list of groups, each with a list of params")
        scalars = meta.get("scalars", {})
        if not (isinstance(scalars, dict) and all(k.isdigit() and isinstance(v, dict) for k, v in scalars.items())):
            raise bad_field(path, "optimizer.scalars", scalars, "an object of parameter index -> values")


def load_optimizer(optimizer: Any, folder: Path, state: dict[str, Any]) -> None:
    """Load optimizer.safetensors and state.json's optimizer scalars into `optimizer`."""
    from safetensors.torch import load_file

    p = Path(folder) / OPTIMIZER_FILE
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {p} is missing (a weights-only checkpoint cannot resume training)")
    try:
        tensors = load_file(str(p))
    except Exception as e:  # safetensors raises several types for a bad header or data
        raise CheckpointError(f"checkpoint file {p} is corrupted or truncated ({e})") from None
    bad = [k for k in tensors if len(k.split(".", 2)) != 3 or not k.split(".", 2)[1].isdigit()]
    if bad:
        raise CheckpointError(f"checkpoint file {p} holds {bad[0]!r}, not an optimizer state tensor "
                              f"(state.<index>.<name>); the file is damaged")
    try:
        optimizer.load_state_dict(optimizer_from_safe(tensors, state["optimizer"]))
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointMismatch(f"the optimizer state in {p} does not fit this model's parameters ({e}); "
                                 f"resume with the same model and optimizer settings") from None


# --- the checkpoints of one run: save, keep, restore -------------------------------------------------------
class Checkpoints:
    """The checkpoints of one run folder: save (keep last K + best), find, restore with fallback."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 2) -> None:
        self.run_dir = Path(run_dir)
        self.keep_last = keep_last
        self.saved: set[str] = set()  # checkpoint names written by this object (this process)

    @property
    def latest(self) -> Path | None:
        return read_pointer(self.run_dir, LATEST)

    @property
    def best(self) -> Path | None:
        return read_pointer(self.run_dir, BEST)

    def _pointer_or_none(self, name: str) -> Path | None:
        """A pointer while saving: a damaged one is about to be replaced, so it counts as none."""
        try:
            return read_pointer(self.run_dir, name)
        except CheckpointError:
            return None

    def save(self, step: int, model: Any, *, optimizer: Any = None, state: dict[str, Any] | None = None,
             tokenizer: Any = None, val_loss: float | None = None,
             files: dict[str, Any] | None = None) -> Path:
        """Save after `step` steps, move `latest` (and `best` if `val_loss` improves), prune old ones.
        `files`: more files for the checkpoint, name -> function that writes it at the path given."""
        folder = self.run_dir / CHECKPOINTS / step_name(step)
        state = dict(state or {})
        state.setdefault("step", step)
        state["val_loss"] = val_loss
        state["rng"] = rng_state()
        extra = dict(files or {})
        if optimizer is not None:
            tensors, state["optimizer"] = optimizer_to_safe(optimizer)

            def write_optimizer(path: Path) -> None:
                from safetensors.torch import save_file

                save_file(tensors, str(path))

            extra[OPTIMIZER_FILE] = write_optimizer
        previous = self._pointer_or_none(LATEST)
        try:
            if folder.name in self.saved and folder.exists():
                pass  # saved at this step already (e.g. an evaluation step that is also the last)
            else:
                if folder.exists():  # left by an earlier attempt beyond the point this run resumed from
                    trash = folder.with_name(f".trash-{folder.name}")
                    shutil.rmtree(trash, ignore_errors=True)
                    os.rename(folder, trash)
                save_checkpoint(folder, model, state=state, tokenizer=tokenizer, extra_files=extra)
                self.saved.add(folder.name)
            write_pointer(self.run_dir, LATEST, folder)
            if val_loss is not None and not math.isnan(val_loss):
                best = self._pointer_or_none(BEST)
                best_val = None
                if best is not None:
                    try:
                        best_val = read_state(best).get("val_loss")
                    except CheckpointError:
                        best_val = None
                if best_val is None or math.isnan(best_val) or val_loss < best_val:
                    write_pointer(self.run_dir, BEST, folder)
        except OSError as e:
            still = f"{previous} is still the latest good checkpoint" if previous else "no checkpoint was kept"
            raise CheckpointError(f"could not save checkpoint {folder} ({e.strerror or e}); {still}; "
                                  f"free disk space or fix permissions, then resume with --resume") from None
        self.prune()
        return folder

    def prune(self) -> None:
        """Delete all but the newest `keep_last` checkpoints, keeping `best` and `latest`."""
        keep = {p.name for p in checkpoints(self.run_dir)[: self.keep_last]}
        for name in (LATEST, BEST):
            ptr = self._pointer_or_none(name)
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
        return candidates(self.run_dir)

    def restore(self, model: Any, optimizer: Any = None) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest good checkpoint into `model` (and `optimizer`) and set the RNG states.

        A damaged checkpoint is skipped (a warning names its file) and the next older one tried; if
        none is good, one CheckpointError names each file tried. A model or optimizer of another
        shape is a CheckpointMismatch at once. Returns (folder, state), or None if the run has no
        checkpoint.
        """
        cands = self.candidates()
        if not cands:
            return None

        def attempt(folder: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
            state = verify_checkpoint(folder)
            path = folder / STATE_FILE
            check_training_state(state, path, optimizer=optimizer is not None)
            rng = check_rng_state(state["rng"], path) if "rng" in state else None
            load_weights(model, folder)
            if optimizer is not None:
                load_optimizer(optimizer, folder, state)
            return state, rng

        folder, (state, rng) = first_good(cands, attempt, where=self.run_dir / CHECKPOINTS, stop_on_mismatch=True)
        if rng is not None:
            set_rng_state(rng)
        if self._pointer_or_none(LATEST) != folder:
            write_pointer(self.run_dir, LATEST, folder)  # point past the damaged one
        return folder, state
