"""Helpers for the evaluation tests: a byte-level tokenizer, tiny GPTs and a bigram model whose
log-probabilities the test sets."""

from pathlib import Path

import torch
from torch import nn

from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT
from scratchllm.tokenizer.bpe import BPETokenizer


def byte_tokenizer() -> BPETokenizer:
    """256 single-byte tokens and <|endoftext|> (id 256): ids are the text's UTF-8 bytes."""
    return BPETokenizer([bytes([i]) for i in range(256)], [], special_tokens={"<|endoftext|>": 256})


def tiny_gpt(seed: int = 0, context: int = 16, vocab: int = 257) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=vocab, context_length=context, n_layer=2, n_head=2, n_embd=32)).eval()


def save_tiny(folder: Path, seed: int = 0, context: int = 16, card: bool = True) -> Path:
    """A tiny GPT with the byte tokenizer as a checkpoint folder (with a model card, as a run has)."""
    from scratchllm.checkpoint import save_checkpoint

    out = save_checkpoint(folder, tiny_gpt(seed, context), tokenizer=byte_tokenizer(), state={"step": 0})
    if card:
        (out / "MODEL_CARD.md").write_text(f"# model card: {folder.name}\n\n## Not fit for\n\n- anything\n",
                                           encoding="utf-8")
    return out


class Bigram(nn.Module):
    """Logits of the next token = table[current token]: each log-probability is known by hand."""

    def __init__(self, table: torch.Tensor, context: int = 64) -> None:
        super().__init__()
        self.table = nn.Parameter(table.float())
        self.config = ModelConfig(vocab_size=table.shape[0], context_length=context, n_layer=1, n_head=1, n_embd=8)

    def forward(self, idx):
        return self.table[idx]  # (B, T, vocab)

    def logp(self, prev: int, nxt: int) -> float:
        return float(torch.log_softmax(self.table[prev].detach().double(), -1)[nxt])
