"""One checkpoint folder: its files, how it is written atomically, and the checks on reading it.

    step-0000500/   model.safetensors          weights (safetensors: loading runs no code)
                    config.json                the ModelConfig, enough to rebuild the model
                    tokenizer.scratchllm.json  the tokenizer (if the run has one)
                    optimizer.safetensors      training's extra files (written by `train.checkpoint`)
                    adapters.safetensors       a LoRA model's adapters (`model.lora`), plain names
                    adapters.json              their settings: r, alpha, dropout, the layers' names
                    quantization.json          a quantized model's scheme (`model.quant_linear`): bits,
                                               group_size, symmetric, the layers' names, the embedding
                    state.json                 step and any JSON the writer adds, plus `files`: the size
                                               and sha256 of every file above (the manifest)

A model with LoRA layers keeps in model.safetensors exactly what the plain model it adapts holds
(the base weights under their plain names: a plain GPT loads it), and its adapters beside it;
`load_weights` wraps a plain model's layers as adapters.json says, or loads into its LoRA layers.
`save_adapters` writes a folder of the adapters alone (plus the base model's path), which
`interop.load.load_any` puts on that base. A quantized model (`compress.quantize`) keeps its integers,
scales and zero points in model.safetensors under its layers' names (`X.qweight`, `X.scales`, ...) and
its scheme in quantization.json (and in state.json as `quantization`); `load_weights` gives a plain
model the quantized layers quantization.json names before loading.

How a save stays atomic: every file is written into a hidden temporary folder beside the target
and fsynced, then the folder is renamed into place. A crash, SIGKILL or full disk at any moment
leaves either no folder or a complete one. Reading checks each file's size and sha256 against the
manifest, checks state.json's own fields (it is not in the manifest, so a hand edit shows only
there), and checks every weight's shape against the model before loading; each error is one
`CheckpointError` line naming the file (and field or tensor).

Not here: the run folder's pointers and list of checkpoints (`checkpoint.pointers`), finding and
loading a model for other commands (`checkpoint.load`), optimizer and RNG state, retention and
resume (`train.checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError
from scratchllm.files import fsync_dir, sha256_file
from scratchllm.tokenizer.base import TOKENIZER_FILE

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
ADAPTERS_FILE = "adapters.safetensors"
ADAPTERS_CONFIG = "adapters.json"
QUANT_CONFIG = "quantization.json"
MASKS_FILE = "masks.safetensors"  # pruning masks (model.masks), one packed uint8 tensor per masked layer
STEP_RE = re.compile(r"^step-([0-9]+)\Z")  # a checkpoint folder's name; ASCII digits only
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

__all__ = ["ADAPTERS_CONFIG", "ADAPTERS_FILE", "CONFIG_FILE", "MODEL_FILE", "QUANT_CONFIG", "STATE_FILE", "STEP_RE",
           "TOKENIZER_FILE", "CheckpointError", "CheckpointMismatch", "load_adapters", "load_weights",
           "read_adapters", "read_state", "save_adapters", "save_checkpoint", "step_name", "unwrap",
           "verify_checkpoint"]


class CheckpointError(UserError):
    """A checkpoint file is missing, truncated, corrupted or edited (the message names it)."""


class CheckpointMismatch(CheckpointError):
    """A sound checkpoint that does not fit the model it is loaded into (the message names the tensor)."""


def step_name(step: int) -> str:
    """Folder name of the checkpoint after `step` optimizer steps.

    >>> step_name(500)
    'step-0000500'
    """
    return f"step-{step:07d}"


def unwrap(model: Any) -> Any:
    """The plain module under torch.compile's wrapper."""
    return getattr(model, "_orig_mod", model)


# --- writing ----------------------------------------------------------------------------------------
def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(folder: str | os.PathLike, model: Any, *, state: dict[str, Any] | None = None,
                    tokenizer: Any = None, extra_files: dict[str, Callable[[Path], None]] | None = None) -> Path:
    """Write a complete checkpoint at `folder` atomically (temp folder, fsync, rename).

    `state` is any JSON-serialisable dict (step, tokens, data position...); the manifest of file
    sizes and sha256 is added as `files`. `extra_files` maps a file name to a function that writes
    that file at the path it is given (training's optimizer state). A model with LoRA layers saves
    its base weights in model.safetensors and its adapters beside them; a quantized one its scheme in
    quantization.json and state.json; a pruned one (`model.masks`) its masks in masks.safetensors.
    Raises OSError (e.g. disk full) with nothing left behind; `folder` must not exist yet.
    """
    from safetensors.torch import save_model

    from scratchllm.model.lora import base_linears, has_lora
    from scratchllm.model.masks import has_masks
    from scratchllm.model.quant_linear import is_quantized, quant_config

    m = unwrap(model)
    quantization = quant_config(m) if is_quantized(m) else None
    if quantization is not None:
        state = {**(state or {}), "quantization": quantization}

    def write(tmp: Path) -> None:
        with base_linears(m):
            save_model(m, str(tmp / MODEL_FILE))
        if has_lora(m):
            write_adapters(tmp, m)
        if quantization is not None:
            (tmp / QUANT_CONFIG).write_text(json.dumps(quantization, indent=1), encoding="utf-8")
        if has_masks(m):
            write_masks(tmp, m)
        cfg = getattr(m, "config", None)
        cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg_dict, indent=2), encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_FILE)
        for name, write_extra in (extra_files or {}).items():
            write_extra(tmp / name)

    return write_folder(folder, write, state)


def write_masks(folder: Path, model: Any) -> None:
    """masks.safetensors: each masked layer's mask, its bits packed (`model.masks.pack_mask`)."""
    from safetensors.torch import save_file

    from scratchllm.model.masks import masks, pack_mask

    save_file({name: pack_mask(mask) for name, mask in masks(model).items()}, str(folder / MASKS_FILE))


def load_masks(model: Any, folder: Path) -> None:
    """masks.safetensors into `model`: each named layer a linear layer of the model, each mask unpacked to its
    weight's shape and attached (`model.masks.attach_mask`: pruned weights zero, kept zero by training)."""
    from safetensors import safe_open
    from torch import nn

    from scratchllm.model.masks import attach_mask, unpack_mask

    p = folder / MASKS_FILE
    try:
        with safe_open(str(p), framework="pt") as f:
            packed = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises several types for a bad header or data
        raise CheckpointError(f"checkpoint file {p} is corrupted or truncated ({e})") from None
    for name, bits in packed.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            layer = None
        if not isinstance(layer, nn.Linear):
            raise CheckpointMismatch(f"the pruning masks differ: {p} holds a mask for {name!r}, which is not a "
                                     f"linear layer of this model")
        try:
            mask = unpack_mask(bits, tuple(layer.weight.shape))
        except ValueError as e:
            raise CheckpointMismatch(f"the pruning masks differ: {name} in {p}: {e}") from None
        attach_mask(layer, mask)


def write_adapters(folder: Path, model: Any, base: str | None = None) -> None:
    """adapters.safetensors (the LoRA tensors) and adapters.json (their settings; `base` if given) in `folder`."""
    from safetensors.torch import save_file

    from scratchllm.model.lora import adapter_config, adapter_state

    save_file({k: v.contiguous() for k, v in adapter_state(model).items()}, str(folder / ADAPTERS_FILE))
    config = adapter_config(model) | ({"base": base} if base is not None else {})
    (folder / ADAPTERS_CONFIG).write_text(json.dumps(config, indent=1), encoding="utf-8")


def save_adapters(model: Any, folder: str | os.PathLike, base: str) -> Path:
    """A folder of `model`'s LoRA adapters alone (adapters.safetensors, adapters.json naming `base`, the
    base model's path as given, and state.json's manifest), written atomically like a checkpoint."""
    from scratchllm.model.lora import has_lora

    m = unwrap(model)
    if not has_lora(m):
        raise UserError("the model has no LoRA adapters to save; it was trained without --lora")
    return write_folder(folder, lambda tmp: write_adapters(tmp, m, base), {})


def write_folder(folder: str | os.PathLike, write: Callable[[Path], None], state: dict[str, Any] | None) -> Path:
    """The atomic save every checkpoint-like folder shares: `write(tmp)` fills a hidden temporary folder
    beside `folder`; each file is fsynced and listed in state.json's manifest (`state` plus `files`);
    then the folder is renamed into place. Any error removes the temporary folder and is raised."""
    folder = Path(folder)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=parent))
    try:
        write(tmp)
        files = {}
        for p in sorted(tmp.iterdir()):
            if p.name.startswith("."):  # a writer's own temporary file
                p.unlink()
                continue
            _fsync_file(p)
            files[p.name] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
        full_state = {**(state or {}), "files": files}
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


# --- reading --------------------------------------------------------------------------------------------
def bad_field(path: Path, field: str, value: Any, expected: str) -> CheckpointError:
    """The one error for an edited or damaged JSON field: file, field, what it holds, what it should."""
    shown = json.dumps(value) if not isinstance(value, (dict, list)) else f"a JSON {type(value).__name__}"
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return CheckpointError(f"checkpoint file {path}: field {field!r} is {shown}, expected {expected}; "
                           f"the file was edited or damaged")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A JSON number (NaN and infinities are allowed: a loss can be either)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_state(state: Any, path: Path) -> dict[str, Any]:
    """The checks on the fields the format defines: the manifest, `step`, `val_loss`."""
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint file {path} holds a JSON {type(state).__name__}, expected an object; "
                              f"the file was edited or damaged")
    if "step" in state and not (is_int(state["step"]) and state["step"] >= 0):
        raise bad_field(path, "step", state["step"], "a whole number >= 0")
    if state.get("val_loss") is not None and not is_number(state["val_loss"]):
        raise bad_field(path, "val_loss", state["val_loss"], "a number or null")
    files = state.get("files", {})
    if not isinstance(files, dict):
        raise bad_field(path, "files", files, "an object of file name -> {size, sha256}")
    for name, info in files.items():
        field = f"files.{name}"
        if name != Path(name).name or name in (".", "..", STATE_FILE):
            raise bad_field(path, field, name, "a file name inside the checkpoint folder")
        if not isinstance(info, dict):
            raise bad_field(path, field, info, "an object {size, sha256}")
        if not (is_int(info.get("size")) and info["size"] >= 0):
            raise bad_field(path, f"{field}.size", info.get("size"), "a whole number of bytes")
        if not (isinstance(info.get("sha256"), str) and SHA256_RE.match(info["sha256"])):
            raise bad_field(path, f"{field}.sha256", info.get("sha256"), "64 hex digits")
    return state


def read_json_object(p: Path, missing: str = "") -> dict[str, Any]:
    """A checkpoint's JSON file as a dict, or one CheckpointError naming it: missing (then `missing`, what
    that means), not JSON, or not an object."""
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise CheckpointError(f"checkpoint file {p} is missing{missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint file {p} is corrupted or truncated (not valid JSON)") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"checkpoint file {p} holds a JSON {type(d).__name__}, expected an object; "
                              f"the file was edited or damaged")
    return d


def read_state(folder: str | os.PathLike) -> dict[str, Any]:
    """state.json of a checkpoint, its format fields checked (a clear CheckpointError naming the file)."""
    p = Path(folder) / STATE_FILE
    return validate_state(read_json_object(p, "; the checkpoint is incomplete"), p)


def verify_checkpoint(folder: str | os.PathLike, deep: bool = True,
                      only: tuple[str, ...] | None = None) -> dict[str, Any]:
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


def _shape(shape: Any) -> str:
    return "[" + ", ".join(str(int(n)) for n in shape) + "]"


def load_weights(model: Any, folder: str | os.PathLike) -> None:
    """Load model.safetensors (and a LoRA checkpoint's adapters) into `model`: every tensor present, every
    shape equal, else one clear error.

    A damaged file is a `CheckpointError`; a sound file for a differently shaped model is a
    `CheckpointMismatch` naming the first tensor that differs and both shapes. When the folder has
    adapters.json, a model without LoRA layers gets them first (the layers it names, as `add_lora`,
    nothing frozen); a model with LoRA layers (training's resume) must have the same ones. A LoRA
    model loads unmerged. When the folder has quantization.json, a plain model gets the quantized layers
    it names first (`model.quant_linear.quantized_structure`). When it has masks.safetensors (a pruned
    model), the masks are attached after the weights (`load_masks`).
    """
    from scratchllm.model.lora import adapter_config, add_lora, base_linears, has_lora, lora_layers
    from scratchllm.model.quant_linear import QuantScheme, is_quantized, quantized_structure

    folder = Path(folder)
    m = unwrap(model)
    if (folder / QUANT_CONFIG).exists() and not is_quantized(m):
        q = read_quantization(folder)
        import torch

        # a model on the meta device (`checkpoint.load.build_model`) gets empty layers there too: the file's
        # tensors are assigned to them, nothing is allocated twice
        on_meta = any(t.is_meta for t in m.parameters())
        try:
            with torch.device("meta") if on_meta else contextlib.nullcontext():
                quantized_structure(m, QuantScheme(q["bits"], q["group_size"], q["symmetric"]), q["modules"],
                                    q["embedding"])
        except UserError as e:
            raise CheckpointMismatch(f"the quantized layers in {folder / QUANT_CONFIG} do not fit this model: "
                                     f"{e}") from None
    adapters = read_adapters(folder) if (folder / ADAPTERS_CONFIG).exists() else None
    if adapters is not None and not has_lora(m):
        try:
            add_lora(m, adapters, freeze=False)
        except UserError as e:
            raise CheckpointMismatch(f"the adapters in {folder / ADAPTERS_CONFIG} do not fit this model: {e}") from None
    elif adapters is not None:
        ours, where = adapter_config(m), folder / ADAPTERS_CONFIG
        only = sorted(set(ours["modules"]) ^ set(adapters["modules"]))
        if only:
            side = "the checkpoint" if only[0] in adapters["modules"] else "this model"
            raise CheckpointMismatch(f"the LoRA adapters differ: layer {only[0]} has one in {side} only ({where}); "
                                     f"use the --lora targets the checkpoint was made with")
        for key in ("r", "alpha"):
            if ours[key] != adapters[key]:
                raise CheckpointMismatch(f"the LoRA adapters differ: {key} is {adapters[key]} in the checkpoint "
                                         f"{where}, {ours[key]} in this model; use the --lora settings the "
                                         f"checkpoint was made with")
    elif has_lora(m):
        raise CheckpointMismatch(f"checkpoint {folder} has no LoRA adapters ({ADAPTERS_CONFIG}) but this model has "
                                 f"LoRA layers; load it into the plain model, then add LoRA")
    for layer in lora_layers(m).values():
        layer.unmerge()  # what is loaded next is the base weight
    with base_linears(m):
        _load_base(m, folder / MODEL_FILE)
        if (folder / MASKS_FILE).exists():
            load_masks(m, folder)
    if adapters is not None:
        load_adapters(m, folder)


def _load_base(m: Any, p: Path) -> None:
    """model.safetensors at `p` into the plain model `m`, every name and shape checked."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from safetensors.torch import load_model as st_load_model
    from torch import nn

    from scratchllm.model.quant_linear import is_quantized

    if not p.is_file():
        raise CheckpointError(f"checkpoint file {p} is missing")
    try:
        with safe_open(str(p), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except Exception as e:  # safetensors raises several types for a bad header
        raise CheckpointError(f"checkpoint file {p} is corrupted or truncated ({e})") from None
    ours = m.state_dict()
    for name, tensor in ours.items():  # in the model's order: the first difference is the telling one
        shape = shapes.get(name)
        if shape is not None and tuple(tensor.shape) != shape:
            raise CheckpointMismatch(
                f"the model shapes differ: {name} has shape {_shape(shape)} in the checkpoint {p}, "
                f"{_shape(tensor.shape)} in this model; use the model settings the checkpoint was made "
                f"with (its {CONFIG_FILE})")
    try:
        if any(t.is_meta for t in ours.values()):  # built empty (`checkpoint.load.build_model`)
            missing, unexpected = _assign_file(m, load_file(str(p)))
        elif is_quantized(m):  # no shared tensors to restore, and GPT.load_state_dict's re-tying is for nn.Linear heads
            missing, unexpected = nn.Module.load_state_dict(m, load_file(str(p)), strict=False)
        else:
            missing, unexpected = st_load_model(m, str(p), strict=False)
    except Exception as e:
        raise CheckpointError(f"checkpoint file {p} cannot be loaded ({e})") from None
    if missing or unexpected:
        what = [f"{len(missing)} tensors this model has are not in it (first {sorted(missing)[0]})"] if missing else []
        what += ([f"{len(unexpected)} tensors in it are not in this model (first {sorted(unexpected)[0]})"]
                 if unexpected else [])
        raise CheckpointMismatch(f"the model shapes differ: checkpoint {p} does not fit this model: "
                                 f"{'; '.join(what)}; use the model settings the checkpoint was made with "
                                 f"(its {CONFIG_FILE})")


def _assign_file(m: Any, sd: dict) -> tuple[list[str], list[str]]:
    """Give the model `m`, built on the meta device, the tensors `sd` of its file themselves (memory-mapped
    copy-on-write by safetensors: the file never changes, the model's writes go to its own pages);
    (missing, unexpected) names as `load_state_dict` says them.

    A tensor the model holds under two names (a tied head), which the file keeps once, goes to both;
    a tensor of another dtype than the model's (a bf16 file) becomes the model's, as copying into a
    built model would make it."""
    from torch import nn

    from scratchllm.model.quant_linear import is_quantized

    ours = m.state_dict(keep_vars=True)  # the parameters themselves: a tied one is one object
    names: dict[int, list[str]] = {}
    for name, t in ours.items():
        names.setdefault(id(t), []).append(name)
    for group in names.values():
        present = [n for n in group if n in sd]
        for name in group:
            if present and name not in sd:
                sd[name] = sd[present[0]]
    sd = {k: v.to(ours[k].dtype) if k in ours and v.dtype != ours[k].dtype else v for k, v in sd.items()}
    # GPT.load_state_dict ties the head again; a quantized model's layers are not nn.Linear heads
    load = nn.Module.load_state_dict if is_quantized(m) else type(m).load_state_dict
    return load(m, sd, strict=False, assign=True)


# --- LoRA adapters ----------------------------------------------------------------------------------------
def read_adapters(folder: str | os.PathLike) -> dict[str, Any]:
    """adapters.json of a folder, each field checked: r, alpha, dropout, modules (and base, if present)."""
    p = Path(folder) / ADAPTERS_CONFIG
    d = read_json_object(p)
    checks = {
        "r": (lambda v: is_int(v) and v > 0, "a whole number > 0"),
        "alpha": (lambda v: is_number(v) and 0 < v < float("inf"), "a number > 0"),
        "dropout": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "modules": (lambda v: isinstance(v, list) and v and all(isinstance(n, str) and n for n in v),
                    "a list of layer names"),
    }
    for name, (ok, expected) in checks.items():
        if name not in d or not ok(d[name]):
            raise bad_field(p, name, d.get(name), expected)
    if "base" in d and not (isinstance(d["base"], str) and d["base"]):
        raise bad_field(p, "base", d["base"], "the base model's path")
    unknown = sorted(set(d) - {*checks, "base"})
    if unknown:
        raise bad_field(p, unknown[0], d[unknown[0]], "no such field (r, alpha, dropout, modules, base)")
    return d


def read_quantization(folder: str | os.PathLike) -> dict[str, Any]:
    """quantization.json of a folder, each field checked: bits, group_size, symmetric, modules, embedding."""
    from scratchllm.model.quant_linear import QuantScheme

    p = Path(folder) / QUANT_CONFIG
    d = read_json_object(p)
    checks = {
        "bits": (lambda v: v in (8, 4) and is_int(v), "8 or 4"),
        "group_size": (lambda v: v is None or (is_int(v) and v > 0), "a whole number > 0 or null"),
        "symmetric": (lambda v: isinstance(v, bool), "true or false"),
        "modules": (lambda v: isinstance(v, list) and v and all(isinstance(n, str) and n for n in v),
                    "a list of layer names"),
        "embedding": (lambda v: v in (None, "tied", "own"), '"tied", "own" or null'),
    }
    for name, (ok, expected) in checks.items():
        if name not in d or not ok(d[name]):
            raise bad_field(p, name, d.get(name), expected)
    unknown = sorted(set(d) - set(checks))
    if unknown:
        raise bad_field(p, unknown[0], d[unknown[0]], f"no such field ({', '.join(checks)})")
    try:
        QuantScheme(d["bits"], d["group_size"], d["symmetric"])
    except UserError as e:
        raise CheckpointError(f"checkpoint file {p} holds a scheme scratchllm does not read ({e}); the file was "
                              f"edited or damaged") from None
    return d


def load_adapters(model: Any, folder: str | os.PathLike) -> None:
    """adapters.safetensors into the model's LoRA layers: the same names, every shape equal."""
    import torch
    from safetensors import safe_open

    from scratchllm.model.lora import adapter_state

    p = Path(folder) / ADAPTERS_FILE
    if not p.is_file():
        raise CheckpointError(f"checkpoint file {p} is missing")
    ours = adapter_state(unwrap(model))
    try:
        with safe_open(str(p), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (not a dict)
            for name, tensor in ours.items():
                if name not in shapes:
                    raise CheckpointMismatch(f"the LoRA adapters differ: {name} is not in {p}; the file does not "
                                             f"match its {ADAPTERS_CONFIG}")
                if shapes[name] != tuple(tensor.shape):
                    raise CheckpointMismatch(f"the LoRA adapters differ: {name} has shape {_shape(shapes[name])} in "
                                             f"{p}, {_shape(tensor.shape)} in this model; the file does not match "
                                             f"its {ADAPTERS_CONFIG}")
            extra = sorted(set(shapes) - set(ours))
            if extra:
                raise CheckpointMismatch(f"the LoRA adapters differ: {p} holds {extra[0]!r}, which this model has no "
                                         f"place for; the file does not match its {ADAPTERS_CONFIG}")
            with torch.no_grad():
                for name, tensor in ours.items():
                    tensor.copy_(f.get_tensor(name))
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises several types for a bad header or data
        raise CheckpointError(f"checkpoint file {p} is corrupted or truncated ({e})") from None


def check_tensors(expected: Mapping[str, Any], got: Mapping[str, Any], source: str, hint: str = "") -> None:
    """Every tensor of `expected` (a model's state dict: only names and shapes are read, so the meta
    device will do) is in `got` with its shape, and `got` has nothing else; else one UserError naming
    the tensor and `source`, ending in `hint` (what to do), if given."""
    tail = f"; {hint}" if hint else ""
    for name, want in expected.items():
        if name not in got:
            raise UserError(f"{source}: tensor {name!r} is missing (the model has it){tail}")
        if tuple(got[name].shape) != tuple(want.shape):
            raise UserError(f"{source}: tensor {name!r} has shape {list(got[name].shape)} there, "
                            f"{list(want.shape)} in the model{tail}")
    extra = sorted(set(got) - set(expected))
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UserError(f"{source}: tensor {extra[0]!r} has no place in the model{more}{tail}")
