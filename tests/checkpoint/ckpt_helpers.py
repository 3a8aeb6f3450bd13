"""Tiny checkpoints for the checkpoint tests, written with the package's own writer (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from scratchllm.checkpoint import LATEST, save_checkpoint, step_name, write_pointer
from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT
from scratchllm.tokenizer.char import CharTokenizer

TEXT = "to be or not to be, that is the question\n"


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    tok = CharTokenizer.train(TEXT)
    return GPT(ModelConfig.preset("tiny", **{"vocab_size": tok.vocab_size, "n_embd": 32, **overrides})).eval()


def make_run(run_dir: Path, steps=(2, 4), **overrides) -> dict[int, GPT]:
    """A run folder with one checkpoint per step (each a different model) and `latest` at the last."""
    tok = CharTokenizer.train(TEXT)
    models = {}
    for s in steps:
        models[s] = tiny_model(seed=s, **overrides)
        folder = run_dir / "checkpoints" / step_name(s)
        save_checkpoint(folder, models[s], state={"step": s, "tokens": 10 * s}, tokenizer=tok)
        write_pointer(run_dir, LATEST, folder)
    return models


def edit_state(folder: Path, **fields) -> Path:
    """Change fields of a checkpoint's state.json as a hand edit would (the manifest is untouched)."""
    p = folder / "state.json"
    state = json.loads(p.read_text())
    state.update(fields)
    p.write_text(json.dumps(state))
    return p
