"""Helpers for the finetuning tests: a tiny base model saved as a checkpoint folder."""

from pathlib import Path

import torch

from scratchllm.checkpoint import save_checkpoint
from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT
from scratchllm.tokenizer.bpe import BPETokenizer

TINY = dict(vocab_size=50257, context_length=128, n_layer=2, n_head=2, n_embd=32)


def gpt2_tokenizer(shared_data: Path) -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(shared_data / "gpt2" / "encoder.json", shared_data / "gpt2" / "vocab.bpe")


def save_base(folder: Path, shared_data: Path, seed: int = 0, **changes) -> Path:
    """A tiny random GPT (GPT-2's vocabulary) and GPT-2's tokenizer as a checkpoint folder."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(**{**TINY, **changes}))
    return save_checkpoint(folder, model, tokenizer=gpt2_tokenizer(shared_data), state={"step": 0})
