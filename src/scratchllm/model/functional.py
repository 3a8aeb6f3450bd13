"""The model's math, written out once: attention, masks, norms, GELU, rotary embeddings.

Everything here is a pure function on tensors. The book's teaching modules (`scratchllm.steps`)
build on these, and the production model uses them for its "explicit" attention path, the
reference that torch's fused `scaled_dot_product_attention` is tested against. Nothing here
holds parameters or state.

References: Vaswani et al. 2017 (attention), Ba et al. 2016 (LayerNorm), Zhang & Sennrich 2019
(RMSNorm), Hendrycks & Gimpel 2016 (GELU), Su et al. 2021 (RoPE), Meta's Llama 3.1 (RoPE frequency
scaling), Raschka 2024 ch. 3-4.
"""

from __future__ import annotations

import math

import torch


def causal_mask(t_q: int, t_k: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Boolean mask (t_q, t_k), True where a query may attend to a key.

    Queries are the last t_q of t_k positions, so query i sits at position t_k - t_q + i and sees
    every key at or before it (this is how a KV cache lines up new queries with cached keys).

    >>> causal_mask(2, 3).int().tolist()
    [[1, 1, 0], [1, 1, 1]]
    """
    t_k = t_q if t_k is None else t_k
    q_pos = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    k_pos = torch.arange(t_k, device=device)[None, :]
    return k_pos <= q_pos


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) with masked positions at zero: (..., T_q, d), (..., T_k, d) -> (..., T_q, T_k)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Scaled dot-product attention, explicitly: weights (with optional dropout) times values.

    q: (..., T_q, d), k and v: (..., T_k, d), mask: broadcastable to (..., T_q, T_k), True = keep.
    """
    w = attention_weights(q, k, mask)
    if dropout > 0.0 and training:
        w = torch.nn.functional.dropout(w, p=dropout, training=True)
    return w @ v  # (..., T_q, d)


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, n_heads * d) -> (B, n_heads, T, d)."""
    b, t, c = x.shape
    return x.view(b, t, n_heads, c // n_heads).transpose(1, 2)  # (B, n_heads, T, d)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, n_heads, T, d) -> (B, T, n_heads * d)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)  # (B, T, n_heads * d)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Grouped-query attention: share each key/value head with n_rep query heads.

    (B, n_kv, T, d) -> (B, n_kv * n_rep, T, d), each head repeated n_rep times in a row.
    """
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)  # (B, n_kv*n_rep, T, d)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5):
    """LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias (biased variance)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in float32 for stability."""
    y = x.float() * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + eps)
    y = y.to(x.dtype)
    return y * weight if weight is not None else y


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation as GPT-2 uses: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    >>> round(gelu_tanh(torch.tensor(1.0)).item(), 4)
    0.8412
    """
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def rope_frequencies(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """RoPE's head_dim/2 angular frequencies (radians per position): frequency i is base^(-2i/head_dim).

    >>> rope_frequencies(4, base=100.0).tolist()
    [1.0, 0.10000000149011612]
    """
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


def llama3_rope_frequencies(inv_freq: torch.Tensor, factor: float, low_freq_factor: float,
                            high_freq_factor: float, original_context: int) -> torch.Tensor:
    """Llama 3.1's rescaled RoPE frequencies, which stretch a model pretrained on `original_context`
    tokens to a longer context (Meta's Llama 3.1 reference code; transformers'
    `_compute_llama3_parameters`).

    By wavelength 2*pi / frequency, against the pretraining context L:
    - shorter than L / high_freq_factor (turns many times within L): kept;
    - longer than L / low_freq_factor (less than about one turn within L): divided by `factor`;
    - between: a blend, s * f + (1 - s) * f / factor with s = (L / wavelength - low) / (high - low),
      which runs from 0 at the long end to 1 at the short end.

    >>> f = torch.tensor([1.0, 0.1, 0.001])  # wavelengths 6.3, 63 and 6283 positions
    >>> [round(x, 6) for x in llama3_rope_frequencies(f, 8.0, 1.0, 4.0, 100).tolist()]
    [1.0, 0.029754, 0.000125]
    """
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = original_context / low_freq_factor
    high_freq_wavelen = original_context / high_freq_factor
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, blended, scaled)


def rope_tables(head_dim: int, max_len: int, base: float = 10000.0,
                inv_freq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (max_len, head_dim) for rotary embeddings, "rotate half" layout (as Llama).

    `inv_freq`: the head_dim/2 frequencies, by default `rope_frequencies(head_dim, base)` (pass
    rescaled ones, e.g. `llama3_rope_frequencies`); the two halves of each head share them.
    """
    if inv_freq is None:
        inv_freq = rope_frequencies(head_dim, base)
    angles = torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (max_len, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # (max_len, head_dim)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, d) queries or keys by their positions; cos/sin are (T, d) or (B, 1, T, d)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)
