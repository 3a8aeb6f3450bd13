"""`load_any(path)`: a model from whatever folder a user names, for every command that takes one.

    runs/<name>/ or a checkpoint folder      scratchllm's own (checkpoint.load_model)
    a Hugging Face model folder              config.json with a model_type (interop.hf)
    OpenAI's GPT-2 release folder            hparams.json + a *.index checkpoint (interop.openai,
                                             imported only when such a folder is given)
    a folder of LoRA adapters alone          adapters.json + adapters.safetensors (checkpoint.save_adapters):
                                             its base (load_any of the path adapters.json names) with
                                             the adapters added and merged

Each gives (model in eval mode, tokenizer or None, meta). meta always has `source` (the path),
`format` ("scratchllm", "hf" or "openai") and `generation`: the end-of-text and begin token ids and
the chat template where the source has them. A scratchllm checkpoint keeps these in
`generation.json` (GENERATION_FILE) beside its tokenizer, written by `interop.importer`. An adapters
folder gives its base's meta with `source` the adapters folder and `lora`: the adapters' settings,
the folder, the base and `merged`.

Not here: reading each format (`checkpoint`, `interop.hf`, `interop.openai`), writing checkpoints.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError

# A checkpoint's generation settings: {"eos_token_id", "bos_token_id", "chat_template"} (converted models) and
# "prompt_template" ("alpaca" or "chat", `generate.templates`; written by `scratchllm finetune instruct`).
GENERATION_FILE = "generation.json"
# OpenAI's reader (interop.openai): folder -> (ModelConfig, state dict in our names, tokenizer); the
# module also names the weights' SOURCE and LICENSE. Imported only for such a folder.
OPENAI_READER = "scratchllm.interop.openai:read_openai_gpt2"


def detect(path: str | os.PathLike) -> str:
    """What a folder holds: "hf", "openai", "adapters" (LoRA adapters alone) or "scratchllm" (a run or
    checkpoint folder; errors about a folder that is none of these come from the checkpoint reader,
    which names what to pass)."""
    from scratchllm.checkpoint.folder import ADAPTERS_CONFIG, MODEL_FILE
    from scratchllm.interop import hf

    p = Path(path)
    if p.is_dir():
        if (p / ADAPTERS_CONFIG).is_file() and not (p / MODEL_FILE).exists():
            return "adapters"
        if hf.is_hf_folder(p):
            return "hf"
        if (p / "hparams.json").is_file() and any(p.glob("*.index")):  # interop.openai.is_openai_gpt2's rule
            return "openai"
        hf_only = (hf.PYTORCH, hf.PYTORCH_INDEX, hf.SAFETENSORS_INDEX)
        if not (p / hf.CONFIG).exists() and (any((p / f).is_file() for f in hf_only)
                                             or ((p / hf.SAFETENSORS).is_file() and not (p / "state.json").exists())):
            return "hf"  # HF weights without their config.json: read_hf says that is what is missing
    return "scratchllm"


def read_generation(folder: Path) -> dict[str, Any]:
    """generation.json of a checkpoint folder, or {}."""
    p = folder / GENERATION_FILE
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{p} is not valid JSON; the checkpoint is damaged") from None
    if not isinstance(d, dict):
        raise UserError(f"{p} holds a JSON {type(d).__name__}, expected an object; the checkpoint is damaged")
    return d


def read_openai(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """OpenAI's GPT-2 folder through interop.openai (imported here, only for such a folder)."""
    from scratchllm.interop.hf import build_model

    module_name, _, name = OPENAI_READER.partition(":")
    try:
        module = importlib.import_module(module_name)
        reader = getattr(module, name)
    except (ImportError, AttributeError):
        raise UserError(f"{folder} is OpenAI's GPT-2 release format, which this scratchllm cannot read yet "
                        f"({OPENAI_READER} is missing)") from None
    config, sd, tokenizer = reader(folder)
    model = build_model(config, sd, str(folder))
    generation = {}
    if tokenizer is not None and "<|endoftext|>" in getattr(tokenizer, "special_tokens", {}):
        generation["eos_token_id"] = tokenizer.special_tokens["<|endoftext|>"]
    return model, tokenizer, {"source": str(folder), "format": "openai", "model_type": "gpt2",
                              "generation": generation,
                              "license": getattr(module, "LICENSE", "Modified MIT License (OpenAI GPT-2)")}


def base_path(folder: Path, base: str) -> Path:
    """The base model an adapters folder names: the path as given (relative to the working folder), else
    relative to the adapters folder."""
    p = Path(base).expanduser()
    if p.exists() or p.is_absolute() or not (folder / p).exists():
        return p
    return folder / p


def read_adapters_folder(folder: str | os.PathLike, base: str | None = None,
                         device: Any = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, meta): the base model (`base`, else the one adapters.json names, read by
    `load_any`) with the folder's LoRA adapters added and merged (plain nn.Linear layers)."""
    from scratchllm.checkpoint.folder import (
        ADAPTERS_CONFIG,
        STATE_FILE,
        CheckpointMismatch,
        load_adapters,
        read_adapters,
        verify_checkpoint,
    )
    from scratchllm.model.lora import add_lora, merge_lora

    folder = Path(folder)
    if (folder / STATE_FILE).exists():
        verify_checkpoint(folder)
    config = read_adapters(folder)
    given = base if base is not None else config.get("base")
    if given is None:
        raise UserError(f"{folder / ADAPTERS_CONFIG} names no base model; give the model the adapters were trained "
                        f"on with --base")
    source = base_path(folder, given)
    if not source.exists():
        raise UserError(f"the base model {given} of the adapters in {folder} does not exist; give the model they "
                        f"were trained on with --base (e.g. scratchllm lora merge {folder} --base BASE --out DIR)")
    if source.resolve() == folder.resolve():
        raise UserError(f"{folder / ADAPTERS_CONFIG} names its own folder as the base model; give the model the "
                        f"adapters were trained on with --base")
    model, tokenizer, meta = load_any(source, device)
    try:
        add_lora(model, config, freeze=False)
    except UserError as e:
        raise CheckpointMismatch(f"the adapters in {folder} do not fit the base model {given}: {e}") from None
    load_adapters(model, folder)
    merge_lora(model)
    lora = {**config, "base": str(source), "folder": str(folder), "merged": True}
    return model, tokenizer, {**meta, "source": str(folder), "lora": lora}


def load_any(path: str | os.PathLike, device: Any = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer or None, meta) from a run/checkpoint folder, a HF folder, OpenAI's GPT-2 folder or
    a folder of LoRA adapters (put on their base and merged)."""
    from scratchllm.checkpoint import load_model

    p = Path(path)
    kind = detect(p)
    if kind == "adapters":
        model, tokenizer, meta = read_adapters_folder(p, device=device)
    elif kind == "hf":
        from scratchllm.interop.hf import read_hf

        model, tokenizer, meta = read_hf(p)
    elif kind == "openai":
        model, tokenizer, meta = read_openai(p)
    else:
        model, tokenizer, meta = load_model(p, device)
        folder = Path(meta.get("checkpoint", p))
        meta = {**meta, "source": str(p), "format": "scratchllm", "generation": read_generation(folder)}
    return model.to(device).eval(), tokenizer, meta
