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
import warnings
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
from scratchllm.errors import UserError

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
        `files`: more files for the checkpoint, name -> function that writes it at the path given.

        In a job of several processes every rank calls this: the ranks' RNG states are gathered, an FSDP
        model's sharded weights and optimizer state are written by every rank (`save_sharded`) and its
        whole weights gathered to rank 0, which alone writes the folder; all return its path."""
        folder = self.run_dir / CHECKPOINTS / step_name(step)
        if _world() > 1:
            if folder.name not in self.saved:
                self._save_multi(folder, step, model, optimizer, state, tokenizer, val_loss, files)
            elif _rank() == 0:
                self._point(folder, val_loss)
            return folder
        if folder.name not in self.saved or not folder.exists():
            self._write(folder, step, model, optimizer, state, tokenizer, val_loss, files)
        # else: saved at this step already (e.g. an evaluation step that is also the last)
        self._point(folder, val_loss)
        return folder

    def _save_multi(self, folder: Path, step: int, model: Any, optimizer: Any, state: dict[str, Any] | None,
                    tokenizer: Any, val_loss: float | None, files: dict[str, Any] | None) -> None:
        """Every rank's part of a save in a job of several processes (see `save`)."""
        from scratchllm.train import distributed

        state = dict(state or {})
        rngs = distributed.gather_objects(rng_state())
        state["rng_ranks"] = rngs
        extra = dict(files or {})
        if is_sharded(model):
            staging = self.run_dir / CHECKPOINTS / f".tmp-sharded-{folder.name}"
            names = save_sharded(staging, model, optimizer)
            whole = consolidated(model)
            state["sharded"] = {"world_size": len(rngs), "files": names}
            for name in names:
                extra[name] = _mover(staging / name)
            model, optimizer = whole, None
        error: BaseException | None = None
        if distributed.is_main():
            try:
                self._write(folder, step, model, optimizer, state, tokenizer, val_loss, extra)
                self._point(folder, val_loss)
            except BaseException as e:  # the others must not wait for a folder that never comes
                error = e
        ok = distributed.broadcast_object(error is None)
        if error is not None:
            raise error
        if not ok:
            raise CheckpointError(f"rank 0 could not save checkpoint {folder}; see its error above")
        self.saved.add(folder.name)

    def _write(self, folder: Path, step: int, model: Any, optimizer: Any, state: dict[str, Any] | None,
               tokenizer: Any, val_loss: float | None, files: dict[str, Any] | None) -> None:
        """Write the checkpoint folder (this process alone)."""
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
            if folder.exists():  # left by an earlier attempt beyond the point this run resumed from
                trash = folder.with_name(f".trash-{folder.name}")
                shutil.rmtree(trash, ignore_errors=True)
                os.rename(folder, trash)
            save_checkpoint(folder, model, state=state, tokenizer=tokenizer, extra_files=extra)
            self.saved.add(folder.name)
        except OSError as e:
            still = f"{previous} is still the latest good checkpoint" if previous else "no checkpoint was kept"
            raise CheckpointError(f"could not save checkpoint {folder} ({e.strerror or e}); {still}; "
                                  f"free disk space or fix permissions, then resume with --resume") from None

    def _point(self, folder: Path, val_loss: float | None) -> None:
        """Move `latest` to `folder` (and `best`, if `val_loss` is the best yet), then prune."""
        try:
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
            raise CheckpointError(f"could not save checkpoint {folder} ({e.strerror or e}); "
                                  f"free disk space or fix permissions, then resume with --resume") from None
        self.prune()

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
            sharded = state.get("sharded")
            check_training_state(state, path, optimizer=optimizer is not None and sharded is None)
            rng = check_rng_state(state["rng"], path) if "rng" in state else None
            if "rng_ranks" in state:  # a job of several processes: this rank's own, if the job had as many
                ranks = state["rng_ranks"]
                if not isinstance(ranks, list):
                    raise bad_field(path, "rng_ranks", ranks, "a list of each rank's RNG states")
                if len(ranks) == _world():
                    rng = check_rng_state(ranks[_rank()], path)
                elif _rank() > 0:
                    rng = None  # another number of processes: these ranks keep the fresh seed (see restore)
            if sharded is not None:
                if not (isinstance(sharded, dict) and isinstance(sharded.get("files"), list)
                        and all(isinstance(n, str) for n in sharded["files"])):
                    raise bad_field(path, "sharded", sharded, "an object with the sharded state's files")
                load_sharded(folder, model, optimizer)
            elif is_sharded(model):
                load_whole_into_sharded(folder, model, optimizer, state)
            else:
                load_weights(model, folder)
                if optimizer is not None:
                    load_optimizer(optimizer, folder, state)
            return state, rng

        folder, (state, rng) = first_good(cands, attempt, where=self.run_dir / CHECKPOINTS, stop_on_mismatch=True)
        if rng is not None:
            set_rng_state(rng)
        if _rank() == 0 and self._pointer_or_none(LATEST) != folder:
            write_pointer(self.run_dir, LATEST, folder)  # point past the damaged one
        return folder, state


# --- jobs of several processes (train.distributed) --------------------------------------------------------
def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_sharded(model: Any) -> bool:
    """Whether `model`'s parameters are FSDP shards (DTensors); checked by type name, so that a single
    process imports nothing distributed."""
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def _mover(src: Path) -> Any:
    def move(path: Path) -> None:
        os.replace(src, path)

    return move


# The sharded state: torch.distributed.checkpoint (DCP) files beside model.safetensors in the checkpoint
# folder: each rank's `__<rank>_0.distcp` (its shards of the weights and AdamW moments, as raw tensor
# bytes) and DCP's index of them, `sharded.metadata`. DCP reads them back into any number of ranks
# (it re-slices the shards), or into one process. Every file is in state.json's manifest and checked
# before it is read; the index is a pickle, read by an unpickler that builds only DCP's own metadata
# classes (`_MetadataUnpickler`), so loading runs no other code.
SHARDED_METADATA = "sharded.metadata"


def _storage(kind: str, path: Path) -> Any:
    import pickle

    from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

    class Writer(FileSystemWriter):
        def _get_metadata_path(self, rank: int | None = None) -> Any:
            return self.fs.concat_path(self.path, SHARDED_METADATA)

    class Reader(FileSystemReader):
        def _get_metadata_path(self, rank: int | None = None) -> Any:
            return self.fs.concat_path(self.path, SHARDED_METADATA)

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            from torch.distributed.checkpoint.metadata import StorageMeta

            with open(self._get_metadata_path(), "rb") as f:
                try:
                    metadata = _MetadataUnpickler(f).load()
                except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
                    raise CheckpointError(f"checkpoint file {path / SHARDED_METADATA} is not DCP metadata "
                                          f"({e}); the file is damaged") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Writer(str(path), single_file_per_rank=True, thread_count=1) if kind == "w" else Reader(str(path))


class _MetadataUnpickler:
    """pickle.Unpickler that builds only what DCP's metadata holds: its dataclasses, torch.Size, dtypes and
    layouts, paths and plain containers; anything else in the file is an error, not code run."""

    ALLOWED_MODULES = ("torch.distributed.checkpoint.",)

    def __init__(self, f: Any) -> None:
        import pickle

        allowed = self.ALLOWED_MODULES

        class Restricted(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                import collections

                import torch

                if module.startswith(allowed) or module == "torch.distributed.checkpoint":
                    return super().find_class(module, name)
                if module == "torch" and (name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)):
                    return getattr(torch, name)
                if module == "collections" and name == "OrderedDict":
                    return collections.OrderedDict
                if (module, name) in (("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
                                      ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
                                      ("torch.serialization", "_get_layout")):  # a layout by its name
                    return super().find_class(module, name)
                raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP's metadata")

        self.inner = Restricted(f)

    def load(self) -> Any:
        return self.inner.load()


def save_sharded(staging: Path, model: Any, optimizer: Any) -> list[str]:
    """Every rank writes its shards of `model`'s weights and `optimizer`'s state into `staging` (DCP);
    returns the file names written there (all ranks')."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from scratchllm.train import distributed

    if distributed.is_main():
        shutil.rmtree(staging, ignore_errors=True)  # left by a save that was killed
    distributed.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=_storage("w", staging))
    except OSError as e:
        raise CheckpointError(f"could not write the sharded state to {staging} ({e.strerror or e}); free disk "
                              f"space or fix permissions, then resume with --resume") from None
    distributed.barrier()
    return sorted(p.name for p in staging.iterdir() if not p.name.startswith("."))


def consolidated(model: Any) -> Any:
    """A module holding `model`'s whole weights (gathered from the FSDP shards; on rank 0, on the CPU),
    for the checkpoint's model.safetensors that one process loads. Called by every rank."""
    import torch
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # a frozen parameter's full tensor can be a view into a larger buffer, which safetensors refuses: copy it
    full = {k: v if v.untyped_storage().nbytes() == v.nbytes else v.clone() for k, v in full.items()}
    # tied weights (the head and the token embedding) are one tensor again, so safetensors saves one name
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first and name in full and first[id(p)] in full:
            full[name] = full[first[id(p)]]
        first.setdefault(id(p), name)

    class Consolidated(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = getattr(model, "config", None)

        def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return dict(full)

    return Consolidated()


def load_sharded(folder: Path, model: Any, optimizer: Any) -> None:
    """Load a checkpoint's sharded state (DCP) into `model` and `optimizer`: FSDP shards on any number
    of ranks, or the whole model in one process (a plain model reads model.safetensors for its weights)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    if not is_sharded(model):
        load_weights(model, folder)  # the consolidated weights, every name and shape checked
    if optimizer is None and not is_sharded(model):
        return
    model_sd, optim_sd = get_state_dict(model, optimizer if optimizer is not None else [])
    wanted: dict[str, Any] = {"model": model_sd} if is_sharded(model) else {}
    if optimizer is not None:
        wanted["optim"] = optim_sd
    try:
        with warnings.catch_warnings():  # one process reading a sharded checkpoint is what it is for
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(wanted, storage_reader=_storage("r", folder))
    except CheckpointError:
        raise
    except (RuntimeError, ValueError, KeyError, AssertionError) as e:
        raise CheckpointMismatch(f"the sharded state in {folder} does not fit this model or optimizer "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); resume with the "
                                 f"same model and optimizer settings") from None
    set_state_dict(model, optimizer if optimizer is not None else [], model_state_dict=wanted.get("model", {}),
                   optim_state_dict=wanted.get("optim", {}),
                   options=StateDictOptions(strict=is_sharded(model)))


def load_whole_into_sharded(folder: Path, model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """An ordinary checkpoint (one process, or DDP) into an FSDP model: every rank reads the whole
    weights and AdamW moments and keeps its shards."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from scratchllm.checkpoint.folder import MODEL_FILE, check_tensors

    full = load_file(str(folder / MODEL_FILE))
    ours = dict(model.named_parameters())
    for name, q in model.named_parameters(remove_duplicate=False):  # a tied weight is saved under one name
        if name not in ours and name in full:
            first = next(n for n, o in ours.items() if o is q)
            full.setdefault(first, full.pop(name))
    try:
        buffers = dict(model.named_buffers())
        check_tensors(ours, {k: v for k, v in full.items() if k not in buffers}, str(folder / MODEL_FILE))
    except UserError as e:
        raise CheckpointMismatch(str(e)) from None
    set_model_state_dict(model, {k: full[k] for k in ours}, options=StateDictOptions(full_state_dict=True,
                                                                                     strict=False))
    if optimizer is None:
        return
    p = folder / OPTIMIZER_FILE
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {p} is missing (a weights-only checkpoint cannot resume training)")
    flat = optimizer_from_safe(load_file(str(p)), state["optimizer"])
    # the optimizer's parameter index -> name: its groups list the parameters in the order they were
    # given, the same order (named_parameters) for the plain model and this sharded one
    names = {id(q): n for n, q in model.named_parameters()}
    order = [names[id(q)] for g in optimizer.param_groups for q in g["params"]]
    by_name = {"state": {order[i]: v for i, v in flat["state"].items()},
               "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in flat["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))
