"""Chapter 3, attention from first principles: five steps from dot products to multi-head attention.

1. `simplified_attention`: no weights; each token's context vector is a softmax-weighted mix of all
   inputs, weights from dot products x_i . x_j.
2. `SelfAttentionV1` (raw nn.Parameter matrices) and `SelfAttentionV2` (nn.Linear): trainable
   query, key and value projections, scores scaled by 1/sqrt(d_k).
3. `CausalAttention`: a mask hides future tokens; dropout on the attention weights.
4. `MultiHeadAttentionWrapper`: several causal heads side by side, outputs concatenated.
5. `MultiHeadAttention`: the same with one projection per q/k/v split into heads, plus an output
   projection. This is what the production `model.layers.Attention` computes (fused, faster).

Each module can keep its last attention weights (`keep_attn_weights=True` ->
`last_attn_weights`, detached) for heatmaps. The scaled dot-product math is
`model.functional.attention_weights`, written once.

Not here: KV caching, RoPE, grouped-query attention (see `scratchllm.model`).
Reference: Raschka 2024, ch. 3; Vaswani et al. 2017, section 3.2.
"""

from __future__ import annotations

import torch
from torch import nn

import scratchllm.model.functional as ops
from scratchllm.errors import ConfigError


def simplified_attention_weights(x: torch.Tensor) -> torch.Tensor:
    """Attention weights without trainable weights: softmax over dot products x x^T.

    x: (T, d) or (B, T, d) -> (..., T, T), each row sums to one.

    >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> simplified_attention_weights(x).round(decimals=4).tolist()  # softmax([1, 0])
    [[0.7311, 0.2689], [0.2689, 0.7311]]
    """
    scores = x @ x.transpose(-2, -1)  # (..., T, T): omega_ij = x_i . x_j
    return torch.softmax(scores, dim=-1)


def simplified_attention(x: torch.Tensor) -> torch.Tensor:
    """Context vectors z_i = sum_j softmax_j(x_i . x_j) x_j: (..., T, d) -> (..., T, d)."""
    return simplified_attention_weights(x) @ x


class _KeepsWeights(nn.Module):
    """Holds `last_attn_weights` (..., T, T) from the last forward when `keep_attn_weights` is on."""

    def __init__(self, keep_attn_weights: bool = False) -> None:
        super().__init__()
        self.keep_attn_weights = keep_attn_weights
        self.last_attn_weights: torch.Tensor | None = None

    def _keep(self, w: torch.Tensor) -> None:
        if self.keep_attn_weights:
            self.last_attn_weights = w.detach()


class SelfAttentionV1(_KeepsWeights):
    """Self-attention with trainable weight matrices as raw parameters: x W_q, x W_k, x W_v.

    Like the book, weights start uniform in [0, 1) (torch.rand); x is (T, d_in) or (B, T, d_in).
    """

    def __init__(self, d_in: int, d_out: int, keep_attn_weights: bool = False) -> None:
        super().__init__(keep_attn_weights)
        self.W_query = nn.Parameter(torch.rand(d_in, d_out))
        self.W_key = nn.Parameter(torch.rand(d_in, d_out))
        self.W_value = nn.Parameter(torch.rand(d_in, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = x @ self.W_query, x @ self.W_key, x @ self.W_value  # (..., T, d_out) each
        w = ops.attention_weights(q, k)  # (..., T, T)
        self._keep(w)
        return w @ v  # (..., T, d_out)


class SelfAttentionV2(_KeepsWeights):
    """The same with nn.Linear layers (better init; weight is W^T). Equal to V1 when
    `W_query.weight = V1.W_query.T` (and likewise for key and value)."""

    def __init__(self, d_in: int, d_out: int, qkv_bias: bool = False, keep_attn_weights: bool = False) -> None:
        super().__init__(keep_attn_weights)
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)  # (..., T, d_out) each
        w = ops.attention_weights(q, k)  # (..., T, T)
        self._keep(w)
        return w @ v


class CausalAttention(_KeepsWeights):
    """Self-attention where token i sees only tokens 0..i, with dropout on the attention weights.

    x: (B, T, d_in) with T <= context_length -> (B, T, d_out).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, qkv_bias: bool = False,
                 keep_attn_weights: bool = False) -> None:
        super().__init__(keep_attn_weights)
        self.d_out = d_out
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[-2]
        q, k, v = self.W_query(x), self.W_key(x), self.W_value(x)  # (B, T, d_out) each
        mask = ops.causal_mask(t, device=x.device)  # (T, T), True = may attend
        w = ops.attention_weights(q, k, mask)  # (B, T, T), zero above the diagonal
        self._keep(w)
        return self.dropout(w) @ v  # (B, T, d_out)


class MultiHeadAttentionWrapper(nn.Module):
    """num_heads independent causal heads, outputs concatenated: (B, T, d_in) -> (B, T, num_heads * d_out)."""

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False, keep_attn_weights: bool = False) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            CausalAttention(d_in, d_out, context_length, dropout, qkv_bias, keep_attn_weights)
            for _ in range(num_heads)
        )

    @property
    def last_attn_weights(self) -> torch.Tensor | None:
        """(B, num_heads, T, T) from the heads' kept weights, or None."""
        ws = [h.last_attn_weights for h in self.heads]
        return None if any(w is None for w in ws) else torch.stack(ws, dim=1)  # (B, num_heads, T, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(x) for head in self.heads], dim=-1)  # (B, T, num_heads * d_out)


class MultiHeadAttention(_KeepsWeights):
    """Multi-head causal attention with one projection per q/k/v, split into heads by reshaping.

    Head h uses rows h*head_dim .. (h+1)*head_dim of each projection, so this equals a
    MultiHeadAttentionWrapper whose heads hold those rows, followed by `out_proj`.
    x: (B, T, d_in) -> (B, T, d_out); `last_attn_weights` is (B, num_heads, T, T).
    """

    def __init__(self, d_in: int, d_out: int, context_length: int, dropout: float, num_heads: int,
                 qkv_bias: bool = False, keep_attn_weights: bool = False) -> None:
        super().__init__(keep_attn_weights)
        if d_out % num_heads != 0:
            raise ConfigError(f"d_out ({d_out}) must be divisible by num_heads ({num_heads})")
        self.d_out, self.num_heads, self.head_dim = d_out, num_heads, d_out // num_heads
        self.context_length = context_length
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out)  # mixes the heads' outputs
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        q = ops.split_heads(self.W_query(x), self.num_heads)  # (B, num_heads, T, head_dim)
        k = ops.split_heads(self.W_key(x), self.num_heads)  # (B, num_heads, T, head_dim)
        v = ops.split_heads(self.W_value(x), self.num_heads)  # (B, num_heads, T, head_dim)
        w = ops.attention_weights(q, k, ops.causal_mask(t, device=x.device))  # (B, num_heads, T, T)
        self._keep(w)
        context = self.dropout(w) @ v  # (B, num_heads, T, head_dim)
        return self.out_proj(ops.merge_heads(context))  # (B, T, d_out)
