"""`import_model(path, out)`: any model `interop.load` reads, as an ordinary scratchllm checkpoint folder.

The folder is what training writes (`checkpoint.save_checkpoint`: model.safetensors, config.json,
tokenizer.scratchllm.json, state.json with the manifest, written atomically), plus:

    generation.json    end-of-text / begin token ids and chat template of the source (interop.load)
    MODEL_CARD.md      where the weights came from, their licence, the architecture and size

so `generate`, `train --init-from` and `export` read it like any checkpoint. The licence comes
from the source: a Hugging Face folder's README.md front matter (`license:`), OpenAI's GPT-2
release (Modified MIT), else "unknown" with a note to check the source.

Not here: reading the formats (`interop.hf`, `interop.openai`), downloading.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError

CARD_FILE = "MODEL_CARD.md"


def source_license(path: Path, meta: dict[str, Any]) -> str:
    """The licence the source states: README.md's front matter `license:`, else meta's, else unknown."""
    readme = path / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8", errors="replace")
        front = re.match(r"---\s*\n(.*?)\n---", text, re.S)
        found = re.search(r"^license:\s*(\S.*)$", front.group(1), re.M) if front else None
        if found:
            return found.group(1).strip().strip("'\"")
    return meta.get("license") or "unknown: check the source's terms before you share this model"


def model_card(path: Path, model: Any, tokenizer: Any, meta: dict[str, Any], license: str) -> str:
    from scratchllm.evaluate.card import derived_lines

    c = model.config
    n = sum(p.numel() for p in model.parameters())
    tok = (f"{type(tokenizer).__name__}, {tokenizer.vocab_size:,} tokens" if tokenizer is not None
           else "none (the source has no tokenizer files)")
    kind = f", {meta['model_type']}" if meta.get("model_type") else ""
    return (f"# {path.name} (imported)\n\n"
            f"- Source: `{path}` ({meta['format']} format{kind})\n"
            f"- Licence: {license}\n"
            f"- Model: {n:,} parameters; {c.n_layer} layers, {c.n_head} heads, {c.n_embd} dims, "
            f"context {c.context_length}, vocabulary {c.vocab_size:,}; {c.norm}, {c.mlp}, {c.position} positions\n"
            f"- Tokenizer: {tok}\n"
            f"- Generation settings (generation.json): "
            f"{', '.join(sorted(meta.get('generation', {}))) or 'none'}\n\n"
            f"Converted by `scratchllm import`; the weights are the source's, unchanged (names and layouts "
            f"translated by scratchllm.model.weights).\n\n" + derived_lines("imported", path, path.name))


def import_model(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write `path` (HF folder, OpenAI GPT-2 folder, or scratchllm run/checkpoint) as a checkpoint at `out`."""
    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.interop.load import GENERATION_FILE, load_any

    src, out = Path(path), Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new folder for the imported checkpoint (nothing was written)")
    if not src.exists():
        raise UserError(f"{src} does not exist; pass a Hugging Face model folder, OpenAI's GPT-2 folder or a "
                        f"scratchllm run or checkpoint folder")
    model, tokenizer, meta = load_any(src)
    license = source_license(src, meta)
    generation = meta.get("generation", {})
    card = model_card(src, model, tokenizer, meta, license)
    state = {"imported": {"source": str(src.resolve()), "format": meta["format"], "license": license}}
    extra = {
        GENERATION_FILE: lambda p: p.write_text(json.dumps(generation, indent=1), encoding="utf-8"),
        CARD_FILE: lambda p: p.write_text(card, encoding="utf-8"),
    }
    return save_checkpoint(out, model, state=state, tokenizer=tokenizer, extra_files=extra)
