"""The attention weights of a model's every layer and head, and their picture: one grid of heatmaps.

`attention_maps(model, ids)` runs one forward pass with a forward pre-hook on each block's attention
module. The hook records what the module is given (its input, the RoPE tables and the mask) and
recomputes softmax(q k^T / sqrt(d)) from them with the module's own layers and `model.functional`:
the queries and keys of the fused `qkv` projection, QK-norm, RoPE, keys shared by grouped query
heads, the causal mask. So the model is not changed (no flag, no copy of its weights), its fast fused
kernel keeps running, and the hooks are removed when the pass ends.

Supported: every model `model.GPT` builds: GPT-2 (learned positions), Llama-style RoPE (with Llama
3.1's rescaled frequencies, which are in the model's tables), grouped-query attention, Qwen3's
QK-norm, LoRA and quantized projections (the module's own `qkv` layer runs). One sequence at a time.

`plot_attention(maps, tokens)` draws row = layer, column = head; each panel's row i is what token i
attends to (its weights sum to one), column j how much it looks at token j.

Not here: the attention itself (`model.layers.Attention`), the book's teaching modules that keep their
weights (`steps.attention`, `keep_attn_weights`; the tests check these maps equal theirs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from scratchllm.errors import UserError
from scratchllm.model import functional as ops
from scratchllm.runtime import eval_mode
from scratchllm.visualize.figures import label, pyplot


def weights_from_inputs(attn: Any, x: torch.Tensor, rope: Any = None, mask: Any = None) -> torch.Tensor:
    """The attention weights (B, n_head, T, T) that the module `attn` (a `model.layers.Attention`)
    computes for its input x (B, T, n_embd), RoPE tables and mask, as its explicit path does."""
    b, t, _ = x.shape
    q, k, _ = attn.qkv(x).split(attn.qkv_sizes(), dim=-1)
    q = q.view(b, t, attn.n_head, attn.head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
    k = k.view(b, t, attn.n_kv_head, attn.head_dim).transpose(1, 2)  # (B, n_kv_head, T, head_dim)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        q, k = ops.apply_rope(q, *rope), ops.apply_rope(k, *rope)
    k = ops.repeat_kv(k, attn.n_head // attn.n_kv_head)  # (B, n_head, T, head_dim)
    if mask is None:  # the model passes None for plain causal attention
        mask = ops.causal_mask(t, device=x.device)
    return ops.attention_weights(q.float(), k.float(), mask)  # (B, n_head, T, T)


def attention_maps(model: Any, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Attention weights (n_layer, n_head, T, T) of `model` (a `model.GPT`) reading the token ids `ids`
    (a list or a (1, T) tensor), in evaluation mode (no dropout), float32."""
    idx = torch.as_tensor(ids, dtype=torch.long, device=model.tok_emb.weight.device).reshape(1, -1)  # (1, T)
    check_length(model, idx.shape[1])
    maps: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        names = ("x", "rope", "mask")
        given = {**dict(zip(names, args)), **{k: v for k, v in kwargs.items() if k in names}}
        maps.append(weights_from_inputs(module, given["x"], given.get("rope"), given.get("mask"))[0])

    handles = [block.attn.register_forward_pre_hook(hook, with_kwargs=True) for block in model.blocks]
    try:
        with torch.no_grad(), eval_mode(model):
            model(idx, last_only=True)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(maps)  # (n_layer, n_head, T, T)


def check_length(model: Any, n_tokens: int) -> None:
    """An empty sequence, or one longer than the model's context, is one clear error."""
    if n_tokens == 0:
        raise UserError("the prompt is empty; give some text")
    context = model.config.context_length
    if n_tokens > context:
        raise UserError(f"the prompt is {n_tokens} tokens, longer than the model's context of {context}; "
                        f"shorten it")


def parse_layers(spec: str | None, n_layer: int) -> list[int]:
    """Layers named as "all" (or None), "0,2,5", "1-3" or a mix ("0,4-5"); counted from 0.

    >>> parse_layers("0,2-3", 6), parse_layers(None, 2)
    ([0, 2, 3], [0, 1])
    """
    if spec is None or spec.strip() == "all":
        return list(range(n_layer))
    layers: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            start, end = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise UserError(f"--layers {spec!r}: give layer numbers like 0,2 or 1-3 (or all)") from None
        if not 0 <= start <= end < n_layer:
            raise UserError(f"--layers {spec!r}: the model has layers 0 to {n_layer - 1}")
        layers += [i for i in range(start, end + 1) if i not in layers]
    return layers


def plot_attention(maps: torch.Tensor, tokens: Sequence[str], layers: Sequence[int] | None = None,
                   title: str = "") -> Any:
    """A grid of heatmaps, a row per layer in `layers` (default all) and a column per head, of `maps`
    (n_layer, n_head, T, T); `tokens` label the axes (when there are at most 32), and with at most 8 tokens
    each weight is written in its cell. Returns the figure."""
    plt = pyplot()
    layers = list(range(maps.shape[0])) if layers is None else list(layers)
    n_head, t = maps.shape[1], maps.shape[2]
    side = 1.6 + 0.12 * min(t, 32)  # inches per panel: room for the token labels
    fig, axes = plt.subplots(len(layers), n_head, figsize=(side * n_head + 0.8, side * len(layers) + 0.6),
                             squeeze=False)
    names = [label(s, 10) for s in tokens] if t <= 32 else None
    for r, layer in enumerate(layers):
        for h in range(n_head):
            ax = axes[r][h]
            w = maps[layer, h].cpu().numpy()
            ax.imshow(w, cmap="Blues", vmin=0.0, vmax=1.0)
            if t <= 8:  # few tokens: room to write each weight in its cell
                for i in range(t):
                    for j in range(i + 1):
                        ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if w[i, j] > 0.6 else "black")
            ax.set_title(f"layer {layer}, head {h}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if names is not None and r == len(layers) - 1:
                ax.set_xticks(range(t), names, rotation=90, fontsize=6)
            if names is not None and h == 0:
                ax.set_yticks(range(t), names, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
