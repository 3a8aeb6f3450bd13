"""The model's configuration: every GPT-2 size, small CPU sizes, and the Llama-style options.

Defaults are GPT-2 124M ("gpt2-small"), as in Radford et al. 2019 and the book's
`GPT_CONFIG_124M` (but with a 1,024-token context and QKV bias on, as GPT-2's released weights
have). Options beyond GPT-2 follow the book's GPT-to-Llama bonus: RoPE, RMSNorm, SwiGLU,
grouped-query attention, bias-free linears; and what the open models people start from need:
Llama 3.x's RoPE frequency scaling (Meta's Llama 3.1 release), Qwen3's per-head RMSNorm of queries
and keys and its head size independent of the width (Qwen team 2025).

Not here: the model itself (`scratchllm.model`), training settings (`config.train`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scratchllm.config.base import Config, check, check_finite
from scratchllm.errors import ConfigError


@dataclass
class ModelConfig(Config):
    # 50,257 = GPT-2's byte-level BPE vocabulary (256 bytes + 50,000 merges + <|endoftext|>).
    vocab_size: int = 50257
    # Longest sequence the model attends over; GPT-2 used 1,024.
    context_length: int = 1024
    # Transformer blocks; 12 (with 12 heads and 768 dims) is GPT-2 small.
    n_layer: int = 12
    # Attention heads per block; unless head_size is set, n_embd must be a multiple of it (each head
    # gets n_embd / n_head dims).
    n_head: int = 12
    # Width of the residual stream (the embedding size).
    n_embd: int = 768
    # Dimensions per attention head; None means n_embd / n_head (GPT-2, Llama). Qwen3 sets it apart
    # (0.6B: 128 with n_embd 1024 and 16 heads): q, k, v then have n_head * head_size (keys and values
    # n_kv_head * head_size) dims and the output projection maps n_head * head_size back to n_embd.
    head_size: int | None = None
    # Key/value heads for grouped-query attention; None means n_head (plain multi-head attention).
    n_kv_head: int | None = None
    # Hidden width of the MLP; None means 4 * n_embd (GPT-2), or for SwiGLU the Llama rule
    # 2/3 * 4 * n_embd rounded up to a multiple of 64, which keeps the parameter count similar.
    mlp_hidden: int | None = None
    # Dropout on embeddings, attention weights and residual branches. 0.0 for inference and for
    # small data; GPT-2 trained with 0.1.
    dropout: float = 0.0
    # Bias in the output projections, MLP and norms (GPT-2: yes; Llama: no).
    bias: bool = True
    # Bias in the query/key/value projection (GPT-2's weights have it; the book's from-scratch
    # runs use False).
    qkv_bias: bool = True
    # Bias in attention's output projection; None means as `bias` (GPT-2: both on). Llama's
    # attention_bias covers q/k/v and this projection, its mlp_bias the MLP, so the two may differ.
    attn_proj_bias: bool | None = None
    # Qwen3's QK-norm: an RMSNorm (weight of head size, eps norm_eps) over each head's queries and keys,
    # before RoPE. Off in GPT-2 and Llama.
    qk_norm: bool = False
    # Share the token embedding matrix with the output head (GPT-2 does; saves vocab*n_embd params).
    tie_weights: bool = True
    # A classifier's head: n_classes outputs (with a bias, as the book's chapter 6 `out_head`) instead
    # of the vocabulary's logits; None: a language model. Set by `scratchllm finetune classify`; a
    # classifier's head is its own (tie_weights false).
    n_classes: int | None = None
    # "layernorm": GPT-2's LayerNorm (centre and scale); "rmsnorm": Llama's RMSNorm (scale only).
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    # 1e-5 is GPT-2's LayerNorm epsilon (and PyTorch's default).
    norm_eps: float = 1e-5
    # "gelu": GPT-2's MLP with the tanh approximation of GELU (what GPT-2's weights were trained with);
    # "gelu_exact": the same MLP with erf GELU (nanoGPT's nn.GELU, BERT; cheaper than the tanh form on
    # the CPU, see benchmarks/RESULTS.md); "swiglu": Llama's gated MLP.
    mlp: Literal["gelu", "gelu_exact", "swiglu"] = "gelu"
    # Where position enters: learned absolute embeddings (GPT-2) or rotary embeddings (RoPE, Llama).
    position: Literal["learned", "rope"] = "learned"
    # RoPE's base frequency, 10,000 as in Su et al. 2021 and Llama 1/2 (Llama 3: 500,000; HF's rope_theta).
    rope_base: float = 10000.0
    # "none": RoPE's frequencies as they are; "llama3": Llama 3.1/3.2's rescaling for long contexts
    # (model.functional.llama3_rope_frequencies): wavelengths longer than the pretraining context
    # divided by rope_factor, short ones kept, a smooth blend between.
    rope_scaling: Literal["none", "llama3"] = "none"
    # llama3 scaling: how much slower the low frequencies turn (Llama 3.1: 8; Llama 3.2 1B/3B: 32).
    rope_factor: float = 8.0
    # llama3 scaling: wavelengths above rope_original_context / rope_low_freq_factor are fully scaled
    # (Llama 3.x: 1).
    rope_low_freq_factor: float = 1.0
    # llama3 scaling: wavelengths below rope_original_context / rope_high_freq_factor are kept
    # (Llama 3.x: 4).
    rope_high_freq_factor: float = 4.0
    # llama3 scaling: the context length of pretraining before the extension (Llama 3.x: 8,192; HF's
    # original_max_position_embeddings).
    rope_original_context: int = 8192
    # "sdpa": torch's fused scaled_dot_product_attention; "explicit": the written-out math of
    # model.functional, the reference the fused path is tested against. "auto": sdpa, except when
    # training in bf16 on a CPU with at most 512 keys, where the explicit math is faster (torch's CPU
    # flash-attention backward in bf16 is slow; see model.layers.explicit_attention). Beyond 512 keys its
    # T x T weights cost too much memory.
    attention: Literal["auto", "sdpa", "explicit"] = "auto"
    # Standard deviation of the normal init of weights (GPT-2: 0.02); residual projections are
    # further scaled by 1/sqrt(2 * n_layer) (see model.gpt.init_weights).
    init_std: float = 0.02
    # Recompute each block's activations in the backward pass instead of storing them.
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_finite(self, "model.")
        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_embd"):
            check(getattr(self, name) > 0, f"model.{name} must be a positive integer, got {getattr(self, name)}")
        if self.head_size is None:
            check(
                self.n_embd % self.n_head == 0,
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}); "
                f"try n_embd={self.n_head * max(1, round(self.n_embd / self.n_head))} (or set model.head_size)",
            )
        else:
            check(self.head_size > 0, f"model.head_size must be a positive integer or none, got {self.head_size}")
        if self.n_kv_head is not None:
            check(self.n_kv_head > 0, f"model.n_kv_head must be positive or none, got {self.n_kv_head}")
            check(
                self.n_head % self.n_kv_head == 0,
                f"model.n_head ({self.n_head}) must be divisible by model.n_kv_head ({self.n_kv_head})",
            )
        if self.mlp_hidden is not None:
            check(self.mlp_hidden > 0, f"model.mlp_hidden must be positive or none, got {self.mlp_hidden}")
        if self.n_classes is not None:
            check(self.n_classes >= 2, f"model.n_classes must be at least 2 or none, got {self.n_classes}")
            check(not self.tie_weights, "model.n_classes: a classifier's head cannot share the token embedding; "
                                        "set model.tie_weights=false")
        check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        check(self.norm_eps > 0, f"model.norm_eps must be positive, got {self.norm_eps}")
        check(self.init_std > 0, f"model.init_std must be positive, got {self.init_std}")
        check(self.rope_base > 0, f"model.rope_base must be positive, got {self.rope_base}")
        if self.position == "rope":
            check(self.head_dim % 2 == 0, f"model.position=rope needs an even head size, got {self.head_dim}")
        if self.rope_scaling != "none":
            check(self.position == "rope", f"model.rope_scaling={self.rope_scaling} needs position=rope")
            check(self.rope_factor >= 1.0, f"model.rope_factor must be at least 1, got {self.rope_factor}")
            check(0 < self.rope_low_freq_factor < self.rope_high_freq_factor,
                  f"model.rope_low_freq_factor ({self.rope_low_freq_factor}) must be positive and below "
                  f"model.rope_high_freq_factor ({self.rope_high_freq_factor})")
            check(self.rope_original_context > 0,
                  f"model.rope_original_context must be a positive integer, got {self.rope_original_context}")

    @property
    def head_dim(self) -> int:
        """Dimensions per head: head_size, or n_embd / n_head when it is not set."""
        return self.head_size if self.head_size is not None else self.n_embd // self.n_head

    @property
    def attn_dim(self) -> int:
        """Width of all heads side by side (n_head * head_dim): the queries' and attention output's."""
        return self.n_head * self.head_dim

    @property
    def attn_out_bias(self) -> bool:
        """Whether attention's output projection has a bias: attn_proj_bias, or `bias` when unset."""
        return self.bias if self.attn_proj_bias is None else self.attn_proj_bias

    @property
    def head_outputs(self) -> int:
        """Outputs of the head: n_classes for a classifier, else the vocabulary's size."""
        return self.n_classes if self.n_classes is not None else self.vocab_size

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        if self.mlp == "swiglu":
            return 64 * -(-(2 * 4 * self.n_embd // 3) // 64)
        return 4 * self.n_embd

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelConfig:
        """A named configuration, optionally changed: `ModelConfig.preset("gpt2-small", dropout=0.1)`."""
        key = PRESET_ALIASES.get(name, name)
        if key not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[key], **overrides})


# Every GPT-2 size (Radford et al. 2019, table 2, with the parameter counts OpenAI reported for
# the released checkpoints) and small presets that train in minutes on a laptop CPU.
PRESETS: dict[str, dict] = {
    "gpt2-small": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    # nanoGPT's CPU Shakespeare character model: 4 layers, 4 heads, 128 dims, context 64.
    "nano": dict(n_layer=4, n_head=4, n_embd=128, context_length=64, vocab_size=65),
    # for tests: the smallest model that still has every part.
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, context_length=32, vocab_size=256),
    # a few minutes of CPU training on a BPE vocabulary.
    "mini": dict(n_layer=6, n_head=6, n_embd=192, context_length=256, vocab_size=4096),
    # the book's GPT-to-Llama options on a small model.
    "mini-llama": dict(
        n_layer=6, n_head=6, n_kv_head=2, n_embd=192, context_length=256, vocab_size=4096,
        norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=False, tie_weights=False,
    ),
}
PRESET_ALIASES = {"gpt2": "gpt2-small", "gpt2-124m": "gpt2-small", "gpt2-355m": "gpt2-medium",
                  "gpt2-774m": "gpt2-large", "gpt2-1558m": "gpt2-xl"}
