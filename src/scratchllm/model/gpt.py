"""The GPT: token (+ learned position) embeddings, a stack of pre-norm blocks, a final norm, a head.

One model serves training, evaluation and generation through one entry point,
`forward(idx, targets=None, kv_cache=None, ...)`. With the default config it is GPT-2
(Radford et al. 2019) and loads its weights; config switches turn on the Llama-style options
(Llama 3.x, SmolLM2) and Qwen3's (QK-norm, a head size of its own).

Not here: training, sampling, weight-name translation (model.weights), the teaching versions
(scratchllm.steps).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scratchllm.config.model import ModelConfig
from scratchllm.errors import UserError
from scratchllm.model import functional as ops
from scratchllm.model.kv_cache import KVCache
from scratchllm.model.layers import Block, RMSNorm, embed_row, hooked, make_norm, norm_row, normed_product


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.context_length, config.n_embd) if config.position == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = make_norm(config)
        # (a classifier's head: n_classes outputs with a bias, as the book's chapter 6 `out_head`)
        self.lm_head = nn.Linear(config.n_embd, config.head_outputs, bias=config.n_classes is not None)
        if config.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        if config.position == "rope":
            self.init_rope()
        init_weights(self)

    def init_rope(self) -> None:
        """(Re)compute the RoPE tables (buffers, not saved) on the default device: at construction, and for
        a model built on the meta device once its weights are loaded (`checkpoint.load.build_model`)."""
        cos, sin = rope_tables(self.config)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    # ------------------------------------------------------------------------------------------
    def features(self, idx: torch.Tensor, kv_cache: KVCache | None = None, *,
                 position_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, normed: bool = True) -> torch.Tensor:
        """Final normalised hidden states (B, T, n_embd): what a language or classification head reads.

        idx: (B, T) token ids. kv_cache: continue after its `pos` filled positions (advanced here).
        position_ids: (B, T) positions, default pos .. pos+T-1 (left-padded batches pass their own).
        attention_mask: (B, pos+T) bool, True for real tokens, False for padding keys.
        normed=False: the residual stream before the final norm (a decode step puts that norm inside the
        head's product: `forward`).
        """
        b, t = idx.shape
        start = kv_cache.pos if kv_cache is not None else 0
        rope = None
        if position_ids is None:  # positions start .. start+T-1 for every row: slices, no gathers
            if start + t > self.config.context_length:
                raise UserError(f"a sequence of {start + t} tokens is longer than the model's context of "
                                f"{self.config.context_length}; shorten the input or slide a window")
            # a batch-1 decode step: the token's row (and its position's) in one C call where it applies
            one = kv_cache is not None and b * t == 1 and not self.training
            x = embed_row(self.tok_emb, self.pos_emb, idx, start) if one else None  # (1, 1, n_embd)
            if x is None:
                x = self.tok_emb(idx)  # (B, T, n_embd)
                if self.pos_emb is not None:
                    x = x + self.pos_emb.weight[start:start + t]
            if self.pos_emb is None:
                rope = (self.rope_cos[start:start + t], self.rope_sin[start:start + t])  # (T, head_dim)
        else:
            x = self.tok_emb(idx)  # (B, T, n_embd)
            if self.pos_emb is not None:
                x = x + self.pos_emb(position_ids)
            else:
                cos, sin = self.rope_cos[position_ids], self.rope_sin[position_ids]  # (B, T, head_dim)
                rope = (cos[:, None], sin[:, None])  # (B, 1, T, head_dim)
        x = self.drop(x) if self.training else x  # eval: no dropout call (decoding counts every op)
        mask = self._mask(t, start, attention_mask, idx.device)
        for i, block in enumerate(self.blocks):
            if self.config.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, mask, kv_cache, i, use_reentrant=False)
            else:
                x = block(x, rope, mask, kv_cache, i)
        if kv_cache is not None:
            kv_cache.advance(t)
        if not normed:
            return x
        if kv_cache is not None and b * t == 1 and not self.training:  # a batch-1 decode step: one C call
            return norm_row(self.norm_f, x)
        return self.norm_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                *, position_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                last_only: bool = False):
        """Logits (B, T, vocab) (a classifier's: (B, T, n_classes)), or (logits, loss) when `targets`
        (B, T) is given.

        The loss is the mean cross-entropy over target positions that are not -100 (torch's ignore
        index: a batch marks padding or prompt tokens so to leave them out). `last_only` computes the
        head for the last position only (B, 1, vocab): what generation needs.
        """
        if (kv_cache is not None and idx.numel() == 1 and targets is None and not self.training
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and not hooked(self.lm_head)):
            # a batch-1 decode step: the final norm inside the head's product, one C call where it applies
            x = self.features(idx, kv_cache, position_ids=position_ids, attention_mask=attention_mask, normed=False)
            return normed_product(self.norm_f, self.lm_head, x)  # (1, 1, vocab)
        h = self.features(idx, kv_cache, position_ids=position_ids, attention_mask=attention_mask)
        if last_only:
            h = h[:, -1:]
        logits = self.lm_head(h)  # (B, T, vocab)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    @staticmethod
    def _mask(t: int, start: int, attention_mask: torch.Tensor | None, device) -> torch.Tensor | None:
        """The attention mask blocks get: None for plain causal (or one new token), else bool (B|1, 1, T, S)."""
        if attention_mask is None:
            if start == 0 or t == 1:
                return None
            return ops.causal_mask(t, start + t, device=device)[None, None]  # (1, 1, T, S)
        allowed = ops.causal_mask(t, start + t, device=device)[None] & attention_mask[:, None, :].bool()  # (B, T, S)
        # a padding query would see no key at all (softmax of nothing is NaN): let it see itself
        q_pos = torch.arange(start, start + t, device=device)[:, None]
        allowed = allowed | (torch.arange(start + t, device=device)[None, :] == q_pos)[None]
        return allowed[:, None]  # (B, 1, T, S)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, then tie the head again (assign=True would otherwise give it its own copy)."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if self.config.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        return result

    # ------------------------------------------------------------------------------------------
    def new_kv_cache(self, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> KVCache:
        """A cache for `batch_size` rows and up to `max_len` positions (default: the context length)."""
        p = self.lm_head.weight
        return KVCache(self.config.n_layer, batch_size, self.config.kv_heads, max_len or self.config.context_length,
                       self.config.head_dim, dtype or p.dtype, device or p.device)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameters, each shared tensor counted once; optionally without token/position embeddings."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                n -= self.pos_emb.weight.numel()
        return n


def rope_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's RoPE cos and sin tables (context_length, head_dim): frequencies from rope_base,
    rescaled as config.rope_scaling says."""
    inv_freq = ops.rope_frequencies(config.head_dim, config.rope_base)
    if config.rope_scaling == "llama3":
        inv_freq = ops.llama3_rope_frequencies(inv_freq, config.rope_factor, config.rope_low_freq_factor,
                                               config.rope_high_freq_factor, config.rope_original_context)
    return ops.rope_tables(config.head_dim, config.context_length, inv_freq=inv_freq)


def init_weights(model: GPT) -> None:
    """GPT-2's initialisation: every weight ~ N(0, 0.02), biases zero, norms one, and the residual
    projections (attention and MLP outputs) scaled by 1/sqrt(2 * n_layer), so that the residual
    stream's variance does not grow with depth (Radford et al. 2019, section 2.3)."""
    std = model.config.init_std
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            s = std / math.sqrt(2 * model.config.n_layer) if name.endswith(("attn.proj", "mlp.proj")) else std
            nn.init.normal_(m.weight, mean=0.0, std=s)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
