"""What a model configuration costs, computed from the config alone (no weights, no model built).

Parameter counts, memory for the weights, FLOPs per token and KV-cache size, for `scratchllm model
info`, training's memory check and its model FLOPs utilisation (`mfu`): the one FLOPs formula of the
package. Each count is a pure function of `ModelConfig`, tested equal to the real
`GPT(config).num_params()` and against hand counts.

FLOPs per token (one multiply-add = 2 FLOPs), with N the parameters a token is multiplied by (every
non-embedding parameter plus the output head, counted even when tied to the embedding, since the
head's matmul still runs), L = n_layer, d = n_head * head_dim (the width of the queries: n_embd,
unless `head_size` sets it apart), T = context length.
The token and position embeddings are not in N: a lookup is a gather, not a matmul (so an untied
model's N is its parameters minus both tables, and a tied one's is its parameters minus the position
table only, its one vocab x d matrix being the head):
- training, forward + backward: 6N + 12·L·d·T. The backward pass costs twice the forward. The
  attention term counts q·k scores and the weighted sum of values over all T×T pairs, as dense
  kernels compute them (Chowdhery et al. 2022, PaLM, appendix B; nanoGPT's `estimate_mfu`).
- inference, forward only: 2N + 2·L·d·T. With a KV cache the token at position t does 4·L·d·t
  attention FLOPs (scores and values over t keys); averaged over positions 1..T that is about
  2·L·d·T, Kaplan et al. 2020's C_forward = 2N + 2·n_layer·n_ctx·d_attn (table 1).
KV cache per token: keys and values for every layer and key/value head, 2·L·n_kv_head·head_dim values.

Not here: measured speed (benchmarks/), activation memory (depends on batch and implementation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from scratchllm.config.model import ModelConfig
from scratchllm.errors import UserError

# Bytes per value of the dtypes people store or run weights in.
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "int8": 1}


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by part; `total` counts a tied head once (as `GPT.num_params()` does)."""

    token_embedding: int
    position_embedding: int
    per_block: int
    blocks: int
    final_norm: int
    head: int  # 0 when tied to the token embedding
    total: int


def _norm_params(config: ModelConfig) -> int:
    """Weight (and, for LayerNorm with bias, bias) of one norm layer.

    >>> _norm_params(ModelConfig(n_embd=8, n_head=2))
    16
    """
    with_bias = config.norm == "layernorm" and config.bias
    return config.n_embd * (2 if with_bias else 1)


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    """Parameters of an nn.Linear.

    >>> _linear(3, 4, bias=True)
    16
    """
    return n_in * n_out + (n_out if bias else 0)


def block_params(config: ModelConfig) -> int:
    """One transformer block: two norms, attention (fused qkv, output projection, QK-norm weights), MLP."""
    d, h = config.n_embd, config.hidden_dim
    qkv_out = (config.n_head + 2 * config.kv_heads) * config.head_dim
    attn = _linear(d, qkv_out, config.qkv_bias) + _linear(config.attn_dim, d, config.attn_out_bias)
    if config.qk_norm:
        attn += 2 * config.head_dim  # q_norm and k_norm
    mlp = _linear(d, h, config.bias) + _linear(h, d, config.bias)
    if config.mlp == "swiglu":
        mlp += _linear(d, h, config.bias)  # the gate
    return 2 * _norm_params(config) + attn + mlp


def param_counts(config: ModelConfig) -> ParamCounts:
    tok = config.vocab_size * config.n_embd
    pos = config.context_length * config.n_embd if config.position == "learned" else 0
    per_block = block_params(config)
    head = 0 if config.tie_weights else config.head_outputs * config.n_embd + (config.n_classes or 0)  # + bias
    final = _norm_params(config)
    total = tok + pos + per_block * config.n_layer + final + head
    return ParamCounts(tok, pos, per_block, per_block * config.n_layer, final, head, total)


def num_params(config: ModelConfig, exclude_embeddings: bool = False, count_tied_head: bool = False) -> int:
    """Parameter count as `GPT(config).num_params(exclude_embeddings)`.

    `count_tied_head=True` counts a tied head's matrix a second time (as if untied: what
    `sum(p.numel())` over a state dict with both names gives). `exclude_embeddings` drops the token
    and position tables (a tied head then vanishes with them, as in `GPT.num_params`).

    >>> num_params(ModelConfig.preset("gpt2-small"))
    124439808
    """
    c = param_counts(config)
    n = c.total
    if count_tied_head and config.tie_weights:
        n += c.token_embedding
    if exclude_embeddings:
        n -= c.token_embedding + c.position_embedding
    return n


def matmul_params(config: ModelConfig) -> int:
    """N of the FLOP formulas: non-embedding parameters plus the output head (tied or not)."""
    return num_params(config, exclude_embeddings=True) + (config.head_outputs * config.n_embd
                                                          if config.tie_weights else 0)


def dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def param_bytes(config: ModelConfig, dtype: str = "fp32") -> int:
    """Memory for the weights alone (a tied matrix stored once)."""
    return num_params(config) * dtype_bytes(dtype)


def train_flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
    """6N + 12·L·d·T (PaLM appendix B): forward and backward for one token of a T-token sequence."""
    t = seq_len or config.context_length
    return 6 * matmul_params(config) + 12 * config.n_layer * config.attn_dim * t


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation (PaLM appendix B): the model's FLOP/s at this speed over the peak FLOP/s.

    `flops_per_token` is `train_flops_per_token`: recomputation (gradient checkpointing) is not
    counted, so MFU measures useful work, not what the hardware did.

    >>> mfu(1000.0, 6e6, 1e10)
    0.6
    """
    return tokens_per_second * flops_per_token / peak_flops


def inference_flops_per_token(config: ModelConfig, seq_len: int | None = None) -> int:
    """2N + 2·L·d·T (Kaplan et al. 2020, table 1): one forward pass per token, averaged over a
    T-token context with a KV cache."""
    t = seq_len or config.context_length
    return 2 * matmul_params(config) + 2 * config.n_layer * config.attn_dim * t


def kv_cache_bytes_per_token(config: ModelConfig, dtype: str = "fp32") -> int:
    """2 (keys and values) · n_layer · n_kv_head · head_dim · bytes per value.

    >>> kv_cache_bytes_per_token(ModelConfig.preset("gpt2-small"), "bf16")
    36864
    """
    return 2 * config.n_layer * config.kv_heads * config.head_dim * dtype_bytes(dtype)


def summary(config: ModelConfig, seq_len: int | None = None) -> dict:
    """Everything above in one JSON-ready dict (what `scratchllm model info --json` prints)."""
    t = seq_len or config.context_length
    return {
        "config": config.to_dict(),
        "params": asdict(param_counts(config)),
        "params_total": num_params(config),
        "params_counting_tied_head": num_params(config, count_tied_head=True),
        "params_non_embedding": num_params(config, exclude_embeddings=True),
        "bytes_fp32": param_bytes(config, "fp32"),
        "bytes_bf16": param_bytes(config, "bf16"),
        "seq_len": t,
        "train_flops_per_token": train_flops_per_token(config, t),
        "inference_flops_per_token": inference_flops_per_token(config, t),
        "kv_cache_bytes_per_token_fp32": kv_cache_bytes_per_token(config, "fp32"),
        "kv_cache_bytes_per_token_bf16": kv_cache_bytes_per_token(config, "bf16"),
        "kv_cache_bytes_full_context_bf16": kv_cache_bytes_per_token(config, "bf16") * config.context_length,
    }


# --- a checkpoint's stored tensors ------------------------------------------------------------------------
# safetensors' dtype names -> (our name, bytes per value); int4 weights are stored two per uint8 byte
SAFETENSORS_DTYPES = {"F32": ("fp32", 4), "F16": ("fp16", 2), "BF16": ("bf16", 2), "I8": ("int8", 1),
                      "U8": ("uint8", 1), "I64": ("int64", 8), "I32": ("int32", 4), "BOOL": ("bool", 1)}


def tensor_kind(name: str, dtype: str, shape: tuple[int, ...]) -> str:
    """What a stored tensor is, by its name, dtype and shape: for `stored_summary`'s table.

    >>> tensor_kind("blocks.0.attn.qkv.qweight", "U8", (96, 16)), tensor_kind("blocks.0.norm1.weight", "F32", (32,))
    ('int4 weights (2 per byte)', 'norm weights')
    """
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "qweight":
        return "int8 weights" if dtype == "I8" else "int4 weights (2 per byte)"
    if leaf == "scales":
        return "quantization scales"
    if leaf == "zeros":
        return "quantization zero points"
    if leaf == "bias":
        return "biases"
    if name.startswith(("tok_emb.", "pos_emb.")):
        return "embeddings"
    if name.startswith("lm_head."):
        return "head (or tied embedding)"
    if len(shape) == 1:
        return "norm weights"
    return f"{SAFETENSORS_DTYPES.get(dtype, (dtype.lower(), 0))[0]} weights"


def stored_summary(tensors: dict[str, tuple[str, tuple[int, ...]]]) -> dict:
    """Bytes of a checkpoint's tensors ({name: (safetensors dtype, shape)}, its file's header), by kind and in
    total, and what the same model costs with every tensor in fp32 (a quantized model's weights counted at
    their unpacked size).

    >>> s = stored_summary({"a.qweight": ("I8", (4, 8)), "a.scales": ("F32", (4, 1)), "a.bias": ("F32", (4,))})
    >>> s["by_kind"], s["total_bytes"], s["fp32_bytes"]
    ({'int8 weights': 32, 'quantization scales': 16, 'biases': 16}, 64, 144)
    """
    by_kind: dict[str, int] = {}
    total = fp32 = 0
    for name, (dtype, shape) in tensors.items():
        n = 1
        for s in shape:
            n *= int(s)
        nbytes = n * SAFETENSORS_DTYPES.get(dtype, ("", 4))[1]
        kind = tensor_kind(name, dtype, tuple(shape))
        by_kind[kind] = by_kind.get(kind, 0) + nbytes
        total += nbytes
        if kind.startswith("int4"):
            fp32 += 2 * n * 4
        elif kind.startswith("int8"):
            fp32 += n * 4
        elif not kind.startswith("quantization"):
            fp32 += n * 4
    return {"by_kind": by_kind, "total_bytes": total, "fp32_bytes": fp32}
