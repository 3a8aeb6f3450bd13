"""Chapter 4, the pieces of a transformer block, written out by hand.

- `LayerNorm`: normalise each token's vector to mean 0, variance 1 (biased variance, eps 1e-5), then
  scale and shift (trainable `scale`, `shift`). Equal to nn.LayerNorm.
- `GELU`: the tanh approximation GPT-2 uses. Equal to F.gelu(approximate="tanh").
- `FeedForward`: Linear (d -> 4d), GELU, Linear (4d -> d), applied to each position.
- `ExampleDeepNeuralNetwork`: five layers with or without shortcut connections, to see how the
  shortcuts keep gradients from vanishing (`layer_gradient_means`).
- `TransformerBlock`: pre-norm attention and feed-forward, each inside a shortcut, with dropout.

Not here: RMSNorm, SwiGLU and the other options beyond the book (see `model.layers`).
Reference: Raschka 2024, ch. 4; Ba et al. 2016; Hendrycks & Gimpel 2016; He et al. 2016.
"""

from __future__ import annotations

import torch
from torch import nn

import scratchllm.model.functional as ops
from scratchllm.config.model import ModelConfig
from scratchllm.errors import ConfigError
from scratchllm.steps.attention import MultiHeadAttention


class LayerNorm(nn.Module):
    def __init__(self, emb_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps  # keeps the division finite when a vector's variance is ~0
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm(x, self.scale, self.shift, self.eps)


class GELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.gelu_tanh(x)


class FeedForward(nn.Module):
    """(B, T, d) -> (B, T, d) through a hidden width of 4d (config.hidden_dim)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(config.n_embd, config.hidden_dim),
            GELU(),
            nn.Linear(config.hidden_dim, config.n_embd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ExampleDeepNeuralNetwork(nn.Module):
    """A stack of Linear + GELU layers; with `use_shortcut`, each layer's input is added to its output
    whenever the shapes agree (a residual or "skip" connection)."""

    def __init__(self, layer_sizes: list[int], use_shortcut: bool) -> None:
        super().__init__()
        self.use_shortcut = use_shortcut
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), GELU()) for a, b in zip(layer_sizes[:-1], layer_sizes[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            out = layer(x)
            x = x + out if self.use_shortcut and x.shape == out.shape else out
        return x


def layer_gradient_means(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean absolute gradient of each weight matrix after one MSE backward pass (the book's
    `print_gradients`, returned instead of printed). Without shortcuts the first layers' values
    are orders of magnitude smaller than the last's: the vanishing gradient."""
    model.zero_grad()
    loss = nn.functional.mse_loss(model(x), target)
    loss.backward()
    return {name: p.grad.abs().mean().item() for name, p in model.named_parameters() if "weight" in name}


class TransformerBlock(nn.Module):
    """x + drop(att(norm1(x))), then x + drop(ff(norm2(x))): (B, T, d) -> (B, T, d).

    Needs the book's options: LayerNorm, GELU MLP, learned positions, plain multi-head attention
    with bias on the output projections (config.qkv_bias chooses the q/k/v bias).
    """

    def __init__(self, config: ModelConfig, keep_attn_weights: bool = False) -> None:
        super().__init__()
        check_book_options(config)
        self.att = MultiHeadAttention(config.n_embd, config.n_embd, config.context_length, config.dropout,
                                      config.n_head, config.qkv_bias, keep_attn_weights)
        self.ff = FeedForward(config)
        self.norm1 = LayerNorm(config.n_embd, config.norm_eps)
        self.norm2 = LayerNorm(config.n_embd, config.norm_eps)
        self.drop_shortcut = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.drop_shortcut(self.att(self.norm1(x)))
        x = x + shortcut
        shortcut = x
        x = self.drop_shortcut(self.ff(self.norm2(x)))
        return x + shortcut


def check_book_options(config: ModelConfig) -> None:
    """The book's model has none of the options beyond GPT-2: say which one is set."""
    wanted = {"norm": "layernorm", "mlp": "gelu", "position": "learned", "bias": True}
    for field, value in wanted.items():
        if getattr(config, field) != value:
            raise ConfigError(f"model.{field}={getattr(config, field)} is not in the book's GPT; "
                              f"use {field}={value} or scratchllm.model.GPT")
    if config.kv_heads != config.n_head:
        raise ConfigError("model.n_kv_head: the book's GPT has no grouped-query attention; leave n_kv_head unset")
