"""Chapter 4, the book's GPTModel: embeddings, a stack of TransformerBlocks, a final LayerNorm, a head.

Parameter names follow the book (`tok_emb`, `pos_emb`, `trf_blocks`, `final_norm`, `out_head`), so
weights of `llms_from_scratch.ch04.GPTModel` load directly (drop its `att.mask` buffers);
`scratchllm.model.weights.from_book_gpt` maps them to the production GPT. The head is untied, as in
the book. The book's greedy loop for it, `generate_text_simple`, is
`scratchllm.generate.simple.generate_text_simple` (one copy in the package; it re-reads the whole
context for every new token, where the production engine keeps a KV cache).

Reference: Raschka 2024, ch. 4.
"""

from __future__ import annotations

import torch
from torch import nn

from scratchllm.config.model import ModelConfig
from scratchllm.steps.blocks import LayerNorm, TransformerBlock, check_book_options


class GPTModel(nn.Module):
    def __init__(self, config: ModelConfig, keep_attn_weights: bool = False) -> None:
        super().__init__()
        check_book_options(config)
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.context_length, config.n_embd)
        self.drop_emb = nn.Dropout(config.dropout)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(config, keep_attn_weights)
                                          for _ in range(config.n_layer)])
        self.final_norm = LayerNorm(config.n_embd, config.norm_eps)
        self.out_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab_size) logits."""
        t = in_idx.shape[1]
        tok = self.tok_emb(in_idx)  # (B, T, n_embd)
        pos = self.pos_emb(torch.arange(t, device=in_idx.device))  # (T, n_embd)
        x = self.drop_emb(tok + pos)
        x = self.trf_blocks(x)
        return self.out_head(self.final_norm(x))  # (B, T, vocab_size)

    def attention_maps(self) -> list[torch.Tensor | None]:
        """Each block's last attention weights (B, n_head, T, T), when built with keep_attn_weights."""
        return [block.att.last_attn_weights for block in self.trf_blocks]

