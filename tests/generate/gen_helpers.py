"""Test helpers for generation: tiny real models, a byte-level tokenizer and a scripted model.

The scripted model has the GPT's generation interface (config, lm_head, new_kv_cache, forward with
kv_cache / position_ids / attention_mask / last_only) but ignores its input: call n returns logits
that make `script[row][n]` the argmax, so tests can force any output (stop strings, emoji, EOS).
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT, KVCache
from scratchllm.tokenizer.bpe import BPETokenizer


def byte_tokenizer(extra: list[bytes] = ()) -> BPETokenizer:
    """256 single-byte tokens, then `extra` multi-byte tokens, then <|endoftext|>."""
    vocab = [bytes([i]) for i in range(256)] + list(extra)
    return BPETokenizer(vocab, [], special_tokens={"<|endoftext|>": len(vocab)})


def tiny_model(seed: int = 0, dtype=torch.float64, **overrides) -> GPT:
    """A 2-layer model with large random weights (so greedy output varies), in float64 so that
    cached and uncached paths agree exactly on argmax."""
    cfg = ModelConfig.preset("tiny", **{"init_std": 0.3, "context_length": 64, **overrides})
    torch.manual_seed(seed)
    return GPT(cfg).to(dtype).eval()


class ScriptedModel(nn.Module):
    def __init__(self, scripts: list[list[int]], vocab_size: int = 300, context_length: int = 64) -> None:
        super().__init__()
        self.config = ModelConfig.preset("tiny", vocab_size=vocab_size, context_length=context_length)
        self.lm_head = nn.Linear(4, vocab_size, bias=False)
        self.scripts = scripts
        self.calls = 0

    def new_kv_cache(self, batch_size, max_len=None, dtype=None, device=None):
        return KVCache(1, batch_size, 1, max_len or self.config.context_length, 1)

    def forward(self, idx, targets=None, kv_cache=None, *, position_ids=None, attention_mask=None, last_only=False):
        b, t = idx.shape
        if kv_cache is not None:
            assert kv_cache.pos + t <= kv_cache.max_len
            kv_cache.advance(t)
        logits = torch.zeros(b, 1, self.config.vocab_size)
        for i in range(b):
            s = self.scripts[i]
            logits[i, 0, s[min(self.calls, len(s) - 1)]] = 10.0
        self.calls += 1
        return logits
