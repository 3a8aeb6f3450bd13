"""Translating parameter names between scratchllm's GPT and other codebases' checkpoints.

This is the only place that knows how Hugging Face transformers (GPT-2, Llama, Qwen3) and the book's
`GPTModel` (Raschka 2024, ch. 4, package `llms_from_scratch`) name and lay out their weights.
Every function is a pure map from one state dict (name -> tensor) to another; nothing here loads
files, downloads, or builds models. Reading maps copy no more than they must: a tensor is passed on
as it is or as a view (GPT-2's transposes); only the joined q/k/v of Llama and the book are new tensors.

Layouts, as a reminder of what each function fixes:
- HF GPT-2 stores linear weights as `Conv1D` matrices of shape (in, out), the transpose of
  `nn.Linear`'s (out, in); `c_attn` is the fused q,k,v projection (same row order as ours after
  transposing). Checkpoints on the hub omit the `transformer.` prefix and `lm_head.weight` (tied),
  and older ones carry the causal-mask buffers `attn.bias`/`attn.masked_bias`, which we drop.
- HF Llama keeps q/k/v separate (`q_proj`, `k_proj`, `v_proj`), SwiGLU as `gate_proj`, `up_proj`,
  `down_proj`, and RMSNorm weights as `input_layernorm`, `post_attention_layernorm`, `norm`.
  Its rotary embeddings use the "rotate half" layout, the same as `model.functional.apply_rope`,
  so no permutation of q/k rows is needed. SmolLM2 is a Llama; Llama 3.x adds RoPE scaling (config).
- HF Qwen3 is Llama's layout plus the QK-norm weights `self_attn.q_norm`/`k_norm` (head size each),
  a `head_dim` of its own, and no MLP biases.
- The book's GPTModel has separate `W_query`/`W_key`/`W_value`, `trf_blocks`, `ff.layers.0/2`,
  LayerNorm `scale`/`shift`, `final_norm`, an untied `out_head`, and a persistent `att.mask` buffer.

The same goes for configuration keys: `config_from_hf_gpt2`/`_llama`/`_qwen3` read a hub
`config.json` dict, `hf_gpt2_config`/`hf_llama_config`/`hf_qwen3_config` write one (keyword arguments
of transformers' config classes). One entry point over the three: `hf_model_type` says which a
`config.json` is (from `model_type`, else `architectures`), `model_type_for` which one a ModelConfig
exports as; `config_from_hf`/`hf_config` and `from_hf`/`to_hf` dispatch on it.

Not here: reading safetensors/PyTorch files, downloading (interop), the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from scratchllm.config.model import ModelConfig
from scratchllm.errors import UserError

StateDict = Mapping[str, torch.Tensor]

# Our block parameter -> (HF GPT-2 name inside `h.{i}.`, stored transposed as Conv1D).
_GPT2_BLOCK = {
    "norm1.weight": ("ln_1.weight", False),
    "norm1.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True),
    "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.proj.weight": ("attn.c_proj.weight", True),
    "attn.proj.bias": ("attn.c_proj.bias", False),
    "norm2.weight": ("ln_2.weight", False),
    "norm2.bias": ("ln_2.bias", False),
    "mlp.fc.weight": ("mlp.c_fc.weight", True),
    "mlp.fc.bias": ("mlp.c_fc.bias", False),
    "mlp.proj.weight": ("mlp.c_proj.weight", True),
    "mlp.proj.bias": ("mlp.c_proj.bias", False),
}
_GPT2_TOP = {
    "tok_emb.weight": "wte.weight",
    "pos_emb.weight": "wpe.weight",
    "norm_f.weight": "ln_f.weight",
    "norm_f.bias": "ln_f.bias",
}
# Our block parameter -> HF Llama name inside `model.layers.{i}.` (same (out, in) layout as ours).
_LLAMA_BLOCK = {
    "norm1.weight": "input_layernorm.weight",
    "attn.proj.weight": "self_attn.o_proj.weight",
    "attn.proj.bias": "self_attn.o_proj.bias",
    "norm2.weight": "post_attention_layernorm.weight",
    "mlp.gate.weight": "mlp.gate_proj.weight",
    "mlp.gate.bias": "mlp.gate_proj.bias",
    "mlp.fc.weight": "mlp.up_proj.weight",
    "mlp.fc.bias": "mlp.up_proj.bias",
    "mlp.proj.weight": "mlp.down_proj.weight",
    "mlp.proj.bias": "mlp.down_proj.bias",
}
_LLAMA_TOP = {"tok_emb.weight": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight"}
# Qwen3's block: Llama's plus the QK-norm weights (required).
_QWEN3_QK_NORM = {"attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight"}
# Our block parameter -> the book's name inside `trf_blocks.{i}.` (q,k,v handled separately).
_BOOK_BLOCK = {
    "norm1.weight": "norm1.scale",
    "norm1.bias": "norm1.shift",
    "attn.proj.weight": "att.out_proj.weight",
    "attn.proj.bias": "att.out_proj.bias",
    "norm2.weight": "norm2.scale",
    "norm2.bias": "norm2.shift",
    "mlp.fc.weight": "ff.layers.0.weight",
    "mlp.fc.bias": "ff.layers.0.bias",
    "mlp.proj.weight": "ff.layers.2.weight",
    "mlp.proj.bias": "ff.layers.2.bias",
}
_BOOK_TOP = {
    "tok_emb.weight": "tok_emb.weight",
    "pos_emb.weight": "pos_emb.weight",
    "norm_f.weight": "final_norm.scale",
    "norm_f.bias": "final_norm.shift",
    "lm_head.weight": "out_head.weight",
}
_BOOK_QKV = ("att.W_query", "att.W_key", "att.W_value")
_LLAMA_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def _n_layers(names, pattern: str) -> int:
    """Number of blocks, from the largest block index in the names.

    >>> _n_layers(["h.0.ln_1.weight", "h.3.ln_1.weight", "wte.weight"], r"h\\.(\\d+)\\.")
    4
    """
    idx = [int(m.group(1)) for n in names if (m := re.match(pattern, n))]
    return max(idx) + 1 if idx else 0


def _take(sd: dict[str, torch.Tensor], name: str, source: str) -> torch.Tensor:
    if name not in sd:
        raise UserError(f"the {source} weights have no {name!r}; is this really a {source} checkpoint?")
    return sd.pop(name)


def _no_leftovers(sd: Mapping[str, torch.Tensor], source: str, target: str) -> None:
    if sd:
        names = sorted(sd)
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        raise UserError(f"{source} weight {names[0]!r}{more} has no place in {target}; "
                        f"the checkpoint uses options {target} does not support")


def _head(sd: dict[str, torch.Tensor], embedding: torch.Tensor, source: str, tied: bool | None) -> torch.Tensor:
    """The output head from `lm_head.weight`, taken out of `sd`. `tied`: the config's
    tie_word_embeddings; None (not known) takes a missing head for a tied one, True always uses the
    embedding (a tied checkpoint may list the head too), False needs the head in the file."""
    head = sd.pop("lm_head.weight", None)
    if head is None and tied is False:
        raise UserError(f"the {source} weights have no 'lm_head.weight', and the config says the head is untied "
                        f"(tie_word_embeddings false); the checkpoint is incomplete")
    return embedding if head is None or tied else head


def _qkv_sizes(ours: Mapping[str, torch.Tensor], i: int) -> tuple[int, int]:
    """Rows of q and of k (= v) in block i's fused qkv: q has n_head * head_dim rows, the output
    projection's input width."""
    total = ours[f"blocks.{i}.attn.qkv.weight"].shape[0]
    q = ours[f"blocks.{i}.attn.proj.weight"].shape[1]
    return q, (total - q) // 2


# --------------------------------------------------------------------------------------------
# Hugging Face GPT-2
def from_hf_gpt2(state_dict: StateDict, *, tied: bool | None = None) -> dict[str, torch.Tensor]:
    """HF GPT-2 weights (`GPT2LMHeadModel` or hub `GPT2Model` names) -> our GPT's state dict.

    Conv1D (in, out) weights become nn.Linear's (out, in) as transposed views (`w.t()`, no copy):
    interop.hf.build_model gives them to the model as they are (F.linear and the decode kernel read that
    layout in place); `load_state_dict` without `assign` copies them into the model's own parameters.
    A missing `lm_head.weight` (hub checkpoints) means the tied head: we give it the token embedding.
    `tied`: the config's tie_word_embeddings when known (False: a missing head is an error).
    """
    sd = {k.removeprefix("transformer."): v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if not re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", k)}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _GPT2_TOP.items():
        if theirs in sd:
            out[ours] = sd.pop(theirs)
    if "tok_emb.weight" not in out:
        raise UserError("the GPT-2 weights have no 'wte.weight'; is this really a GPT-2 checkpoint?")
    for i in range(_n_layers(sd, r"h\.(\d+)\.")):
        for ours, (theirs, transposed) in _GPT2_BLOCK.items():
            name = f"h.{i}.{theirs}"
            if name in sd:
                w = sd.pop(name)
                out[f"blocks.{i}.{ours}"] = w.t() if transposed else w  # a view, no copy
            elif not ours.endswith("bias"):
                raise UserError(f"the GPT-2 weights have no {name!r}; the checkpoint is incomplete")
    out["lm_head.weight"] = _head(sd, out["tok_emb.weight"], "GPT-2", tied)
    _no_leftovers(sd, "GPT-2", "scratchllm's GPT")
    return out


def to_hf_gpt2(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Our GPT's state dict -> `GPT2LMHeadModel.state_dict()` names and layouts (the inverse of
    `from_hf_gpt2`). Raises UserError for weights GPT-2's layout has no place for (SwiGLU's gate);
    a tied head is written out as `lm_head.weight`, as `GPT2LMHeadModel.state_dict()` has it."""
    sd = dict(state_dict)
    if "pos_emb.weight" not in sd:
        raise UserError("GPT-2's layout needs learned positions (wpe); this model uses position=rope")
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _GPT2_TOP.items():
        if ours in sd:
            out[f"transformer.{theirs}"] = sd.pop(ours)
    for i in range(_n_layers(sd, r"blocks\.(\d+)\.")):
        for ours, (theirs, transposed) in _GPT2_BLOCK.items():
            name = f"blocks.{i}.{ours}"
            if name in sd:
                w = sd.pop(name)
                out[f"transformer.h.{i}.{theirs}"] = w.t().contiguous() if transposed else w
    out["lm_head.weight"] = sd.pop("lm_head.weight", out["transformer.wte.weight"])
    _no_leftovers(sd, "scratchllm", "GPT-2's layout")
    return out


# --------------------------------------------------------------------------------------------
# Hugging Face Llama and Qwen3 (one layout; Qwen3 adds the QK-norm weights)
def _from_llama_layout(state_dict: StateDict, source: str, extra: Mapping[str, str],
                       tied: bool | None) -> dict[str, torch.Tensor]:
    """Llama-layout weights -> ours; `extra`: further required block weights (ours -> theirs)."""
    sd = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _LLAMA_TOP.items():
        out[ours] = _take(sd, theirs, source)
    for i in range(_n_layers(sd, r"model\.layers\.(\d+)\.")):
        p = f"model.layers.{i}."
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([_take(sd, f"{p}{n}.weight", source) for n in _LLAMA_QKV])
        if f"{p}{_LLAMA_QKV[0]}.bias" in sd:
            out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([_take(sd, f"{p}{n}.bias", source) for n in _LLAMA_QKV])
        for ours, theirs in _LLAMA_BLOCK.items():
            if p + theirs in sd:
                out[f"blocks.{i}.{ours}"] = sd.pop(p + theirs)
        for ours, theirs in extra.items():
            out[f"blocks.{i}.{ours}"] = _take(sd, p + theirs, source)
    out["lm_head.weight"] = _head(sd, out["tok_emb.weight"], source, tied)
    _no_leftovers(sd, source, "scratchllm's GPT")
    return out


def _to_llama_layout(state_dict: StateDict, target: str, extra: Mapping[str, str]) -> dict[str, torch.Tensor]:
    """Our weights -> the Llama layout (with the `extra` block weights, ours -> theirs)."""
    sd = dict(state_dict)
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _LLAMA_TOP.items():
        out[theirs] = _take(sd, ours, "scratchllm")
    for i in range(_n_layers(sd, r"blocks\.(\d+)\.")):
        p = f"model.layers.{i}."
        q, kv = _qkv_sizes(sd, i)
        for kind in ("weight", "bias"):
            if f"blocks.{i}.attn.qkv.{kind}" in sd:
                parts = sd.pop(f"blocks.{i}.attn.qkv.{kind}").split([q, kv, kv])
                for n, t in zip(_LLAMA_QKV, parts):
                    out[f"{p}{n}.{kind}"] = t.contiguous()
        for ours, theirs in {**_LLAMA_BLOCK, **extra}.items():
            if f"blocks.{i}.{ours}" in sd:
                out[p + theirs] = sd.pop(f"blocks.{i}.{ours}")
    out["lm_head.weight"] = sd.pop("lm_head.weight", out["model.embed_tokens.weight"])
    _no_leftovers(sd, "scratchllm", target)
    return out


def from_hf_llama(state_dict: StateDict, *, tied: bool | None = None) -> dict[str, torch.Tensor]:
    """`LlamaForCausalLM.state_dict()` -> our GPT's state dict (config: `config_from_hf_llama`).

    q_proj, k_proj and v_proj rows are stacked into our fused qkv in that order; a missing
    `lm_head.weight` means the tied head (`tied`: as in `from_hf_gpt2`)."""
    return _from_llama_layout(state_dict, "Llama", {}, tied)


def to_hf_llama(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Our GPT's state dict (a Llama-style config) -> `LlamaForCausalLM.state_dict()` names."""
    return _to_llama_layout(state_dict, "Llama's layout", {})


def from_hf_qwen3(state_dict: StateDict, *, tied: bool | None = None) -> dict[str, torch.Tensor]:
    """`Qwen3ForCausalLM.state_dict()` -> our GPT's state dict (config: `config_from_hf_qwen3`):
    Llama's map plus each block's `self_attn.q_norm`/`k_norm` -> `attn.q_norm`/`k_norm`."""
    return _from_llama_layout(state_dict, "Qwen3", _QWEN3_QK_NORM, tied)


def to_hf_qwen3(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Our GPT's state dict (qk_norm on) -> `Qwen3ForCausalLM.state_dict()` names."""
    if "blocks.0.attn.q_norm.weight" not in state_dict:
        raise UserError("Qwen3's layout needs the QK-norm weights (attn.q_norm, attn.k_norm); this model has "
                        "qk_norm off: export it as Llama")
    return _to_llama_layout(state_dict, "Qwen3's layout", _QWEN3_QK_NORM)


# --------------------------------------------------------------------------------------------
# The book's GPTModel (llms_from_scratch.ch04) and scratchllm.steps.gpt.GPTModel
def from_book_gpt(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """The book's `GPTModel.state_dict()` -> our GPT's state dict.

    W_query, W_key, W_value rows are stacked into the fused qkv (their biases too, when the book's
    `qkv_bias` was on); the causal `att.mask` buffers are dropped. The book's head is untied: load
    into a config with tie_weights=False (or check the two matrices are equal)."""
    sd = {k: v for k, v in state_dict.items() if not re.fullmatch(r"trf_blocks\.\d+\.att\.mask", k)}
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _BOOK_TOP.items():
        out[ours] = _take(sd, theirs, "book GPTModel")
    for i in range(_n_layers(sd, r"trf_blocks\.(\d+)\.")):
        p = f"trf_blocks.{i}."
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([_take(sd, f"{p}{n}.weight", "book GPTModel")
                                                        for n in _BOOK_QKV])
        if f"{p}{_BOOK_QKV[0]}.bias" in sd:
            out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([_take(sd, f"{p}{n}.bias", "book GPTModel")
                                                          for n in _BOOK_QKV])
        for ours, theirs in _BOOK_BLOCK.items():
            out[f"blocks.{i}.{ours}"] = _take(sd, p + theirs, "book GPTModel")
    _no_leftovers(sd, "book GPTModel", "scratchllm's GPT")
    return out


def to_book_gpt(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Our GPT's state dict -> the book's `GPTModel` names (without the `att.mask` buffers, so load
    with `strict=False` or add them). Needs the book's options: learned positions, LayerNorm with
    bias, GELU MLP with bias, plain multi-head attention."""
    sd = dict(state_dict)
    if "blocks.0.attn.proj.bias" not in sd or "blocks.0.mlp.fc.bias" not in sd:
        raise UserError("the book's GPTModel has biases in its output projections and MLP; use bias=true and "
                        "leave attn_proj_bias unset")
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in _BOOK_TOP.items():
        out[theirs] = _take(sd, ours, "scratchllm")
    for i in range(_n_layers(sd, r"blocks\.(\d+)\.")):
        p = f"trf_blocks.{i}."
        q, kv = _qkv_sizes(sd, i)
        if q != kv:
            raise UserError("the book's GPTModel has no grouped-query attention; use n_kv_head = n_head")
        if q != out["tok_emb.weight"].shape[1]:
            raise UserError("the book's GPTModel has heads of n_embd / n_head dims; leave head_size unset")
        for kind in ("weight", "bias"):
            if f"blocks.{i}.attn.qkv.{kind}" in sd:
                parts = sd.pop(f"blocks.{i}.attn.qkv.{kind}").split([q, kv, kv])
                for n, t in zip(_BOOK_QKV, parts):
                    out[f"{p}{n}.{kind}"] = t.contiguous()
        for ours, theirs in _BOOK_BLOCK.items():
            out[p + theirs] = _take(sd, f"blocks.{i}.{ours}", "scratchllm")
    _no_leftovers(sd, "scratchllm", "the book's GPTModel")
    return out


# --------------------------------------------------------------------------------------------
# configuration keys (a hub config.json as a dict)
def config_from_hf_gpt2(hf: Mapping, **overrides) -> ModelConfig:
    """A GPT-2 `config.json` dict -> ModelConfig. Dropout stays at our default (0.0) unless given
    in `overrides`; GPT-2's own runs used 0.1 (`resid_pdrop`)."""
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu"):
        raise UserError(f"GPT-2 activation {act!r} is not supported; scratchllm has tanh GELU (gelu_new) and "
                        f"exact GELU (gelu)")
    d = dict(mlp="gelu_exact" if act == "gelu" else "gelu",
             vocab_size=hf["vocab_size"], context_length=hf["n_positions"], n_layer=hf["n_layer"],
             n_head=hf["n_head"], n_embd=hf["n_embd"], mlp_hidden=hf.get("n_inner"),
             norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_weights=hf.get("tie_word_embeddings", True),
             bias=True, qkv_bias=True)
    return ModelConfig(**{**d, **overrides})


def hf_gpt2_config(config: ModelConfig) -> dict:
    """ModelConfig (GPT-2 options) -> keyword arguments of `transformers.GPT2Config`."""
    wanted = {"norm": "layernorm", "position": "learned", "bias": True, "qkv_bias": True, "attn_out_bias": True,
              "qk_norm": False, "head_dim": config.n_embd // config.n_head}
    if config.mlp not in ("gelu", "gelu_exact"):
        raise UserError(f"model.mlp={config.mlp} has no GPT-2 equivalent; use gelu or gelu_exact")
    for field, value in wanted.items():
        if getattr(config, field) != value:
            name = "head_size" if field == "head_dim" else "attn_proj_bias" if field == "attn_out_bias" else field
            raise UserError(f"model.{name}={getattr(config, field)} has no GPT-2 equivalent; use {value}")
    if config.kv_heads != config.n_head:
        raise UserError("model.n_kv_head: GPT-2 has no grouped-query attention; leave n_kv_head unset")
    return dict(vocab_size=config.vocab_size, n_positions=config.context_length, n_embd=config.n_embd,
                n_layer=config.n_layer, n_head=config.n_head, n_inner=config.mlp_hidden,
                layer_norm_epsilon=config.norm_eps,
                activation_function="gelu" if config.mlp == "gelu_exact" else "gelu_new",
                tie_word_embeddings=config.tie_weights, resid_pdrop=config.dropout, embd_pdrop=config.dropout,
                attn_pdrop=config.dropout)


def _get(hf: Mapping, key: str, family: str):
    """A required config.json key, or one clear error naming it."""
    if key not in hf or hf[key] is None:
        raise UserError(f"the {family} config.json has no {key!r}; is it complete?")
    return hf[key]


def _rope_from_hf(hf: Mapping, family: str) -> dict:
    """Our rope fields from a config.json: transformers 5's `rope_parameters` (with rope_theta inside)
    or the older `rope_scaling` dict beside a top-level `rope_theta` (the hub's Llama 3.2 files)."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    out = dict(rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))))
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UserError(f"{family} partial_rotary_factor != 1 is not supported; scratchllm rotates whole heads")
    if kind == "llama3":
        out.update(rope_scaling="llama3", rope_factor=float(_get(rope, "factor", family)),
                   rope_low_freq_factor=float(_get(rope, "low_freq_factor", family)),
                   rope_high_freq_factor=float(_get(rope, "high_freq_factor", family)),
                   rope_original_context=int(_get(rope, "original_max_position_embeddings", family)))
    elif kind != "default":
        raise UserError(f"{family} RoPE scaling {kind!r} is not supported; scratchllm has plain RoPE "
                        f"(rope_type default) and Llama 3's (llama3)")
    return out


def _rope_to_hf(config: ModelConfig) -> dict:
    """`rope_theta`, and with llama3 scaling a `rope_scaling` dict: the keys both transformers 4 and 5 read."""
    out: dict = dict(rope_theta=config.rope_base)
    if config.rope_scaling == "llama3":
        out["rope_scaling"] = dict(rope_type="llama3", factor=config.rope_factor,
                                   low_freq_factor=config.rope_low_freq_factor,
                                   high_freq_factor=config.rope_high_freq_factor,
                                   original_max_position_embeddings=config.rope_original_context)
    return out


def _llama_like_config(hf: Mapping, family: str, head_dim_default: int | None) -> dict:
    """The ModelConfig fields Llama and Qwen3 configs share: RMSNorm, SwiGLU (silu), RoPE, GQA, head size.

    head_dim_default: a missing `head_dim` as transformers reads it (None: hidden_size / heads)."""
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"{family} activation {hf['hidden_act']!r} is not supported; scratchllm's SwiGLU uses silu")
    n_embd, n_head = _get(hf, "hidden_size", family), _get(hf, "num_attention_heads", family)
    n_kv = hf.get("num_key_value_heads")
    head_dim = hf.get("head_dim") or head_dim_default
    return dict(vocab_size=_get(hf, "vocab_size", family), context_length=_get(hf, "max_position_embeddings", family),
                n_layer=_get(hf, "num_hidden_layers", family), n_head=n_head,
                n_kv_head=None if n_kv in (None, n_head) else n_kv,  # None: plain multi-head attention
                n_embd=n_embd, head_size=None if head_dim in (None, n_embd // n_head) else head_dim,
                mlp_hidden=_get(hf, "intermediate_size", family), norm="rmsnorm",
                norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", position="rope",
                tie_weights=bool(hf.get("tie_word_embeddings", False)), **_rope_from_hf(hf, family))


def _llama_like_check(config: ModelConfig, family: str) -> None:
    """Refuse a ModelConfig that Llama's or Qwen3's modules cannot express, naming the field."""
    wanted = {"norm": "rmsnorm", "mlp": "swiglu", "position": "rope"}
    for field, value in wanted.items():
        if getattr(config, field) != value:
            raise UserError(f"model.{field}={getattr(config, field)} has no {family} equivalent; use {value}")
    if config.qkv_bias != config.attn_out_bias:
        raise UserError(f"model.qkv_bias: {family}'s attention_bias covers q/k/v and the output projection "
                        f"together; set qkv_bias equal to attn_proj_bias (unset: bias)")
    if config.n_embd % config.n_head:
        raise UserError(f"model.n_embd ({config.n_embd}) must be divisible by model.n_head ({config.n_head}) for "
                        f"transformers' {family} config, even with a head_size of its own")


def config_from_hf_llama(hf: Mapping, **overrides) -> ModelConfig:
    """A Llama `config.json` dict (Llama 2/3.x, SmolLM2) -> ModelConfig: RMSNorm, SwiGLU, RoPE (with
    Llama 3's scaling when `rope_type` is llama3), biases as attention_bias (q/k/v and output) and
    mlp_bias (MLP). Other RoPE scalings ("linear", "dynamic", "yarn", ...) are refused."""
    d = _llama_like_config(hf, "Llama", None)
    attn_bias, mlp_bias = bool(hf.get("attention_bias", False)), bool(hf.get("mlp_bias", False))
    d.update(bias=mlp_bias, qkv_bias=attn_bias, attn_proj_bias=None if attn_bias == mlp_bias else attn_bias)
    return ModelConfig(**{**d, **overrides})


def hf_llama_config(config: ModelConfig) -> dict:
    """ModelConfig (Llama options) -> keyword arguments of `transformers.LlamaConfig`."""
    _llama_like_check(config, "Llama")
    if config.qk_norm:
        raise UserError("model.qk_norm=true has no Llama equivalent (Qwen3 has it): export as qwen3")
    return {**_llama_like_hf(config), "mlp_bias": config.bias}


def _llama_like_hf(config: ModelConfig) -> dict:
    """The `config.json` keys Llama and Qwen3 share (sizes, heads, norm, tying, attention bias, RoPE)."""
    return dict(vocab_size=config.vocab_size, hidden_size=config.n_embd, intermediate_size=config.hidden_dim,
                num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
                num_key_value_heads=config.kv_heads, head_dim=config.head_dim,
                max_position_embeddings=config.context_length, rms_norm_eps=config.norm_eps,
                tie_word_embeddings=config.tie_weights, attention_bias=config.qkv_bias,
                attention_dropout=config.dropout, hidden_act="silu", **_rope_to_hf(config))


def config_from_hf_qwen3(hf: Mapping, **overrides) -> ModelConfig:
    """A Qwen3 `config.json` dict -> ModelConfig: Llama's options plus qk_norm and its head_dim (128
    when missing, transformers' Qwen3Config default). Qwen3's MLP has no biases; attention_bias covers
    q/k/v and the output projection. Sliding-window attention is refused."""
    if hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or []):
        raise UserError("Qwen3 sliding-window attention (use_sliding_window, layer_types) is not supported; "
                        "scratchllm attends over the full context")
    d = _llama_like_config(hf, "Qwen3", 128)
    attn_bias = bool(hf.get("attention_bias", False))
    d.update(qk_norm=True, bias=False, qkv_bias=attn_bias, attn_proj_bias=attn_bias or None)
    return ModelConfig(**{**d, **overrides})


def hf_qwen3_config(config: ModelConfig) -> dict:
    """ModelConfig (Llama options with qk_norm, no MLP bias) -> keyword arguments of `transformers.Qwen3Config`."""
    _llama_like_check(config, "Qwen3")
    if not config.qk_norm:
        raise UserError("model.qk_norm=false: Qwen3 always has QK-norm; export this model as llama")
    if config.bias:
        raise UserError("model.bias=true: Qwen3's MLP has no biases; use bias=false (attn_proj_bias for attention)")
    return {**_llama_like_hf(config), "use_sliding_window": False}


# --------------------------------------------------------------------------------------------
# one entry point over the Hugging Face architectures
HF_MODEL_TYPES = ("gpt2", "llama", "qwen3")
# model_type -> the architecture class a folder names in `architectures` (what transformers loads).
HF_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_ARCHITECTURE_TYPES = {**{v: k for k, v in HF_ARCHITECTURES.items()},
                       "GPT2Model": "gpt2", "LlamaModel": "llama", "Qwen3Model": "qwen3"}
_SUPPORTED = "gpt2 (every GPT-2 size), llama (Llama 2/3.x, SmolLM2) and qwen3"
_READ = {"gpt2": (config_from_hf_gpt2, from_hf_gpt2), "llama": (config_from_hf_llama, from_hf_llama),
         "qwen3": (config_from_hf_qwen3, from_hf_qwen3)}
_WRITE = {"gpt2": (hf_gpt2_config, to_hf_gpt2), "llama": (hf_llama_config, to_hf_llama),
          "qwen3": (hf_qwen3_config, to_hf_qwen3)}


def hf_model_type(hf: Mapping) -> str:
    """Which supported architecture a `config.json` dict describes: its `model_type`, or when that is
    missing the first known class in `architectures`; anything else is a UserError naming the supported ones.

    >>> hf_model_type({"architectures": ["LlamaForCausalLM"]})
    'llama'
    """
    model_type = hf.get("model_type")
    if model_type is None:
        known = [_ARCHITECTURE_TYPES[a] for a in hf.get("architectures") or [] if a in _ARCHITECTURE_TYPES]
        if known:
            return known[0]
    elif model_type in HF_MODEL_TYPES:
        return model_type
    what = (f"model_type {model_type!r}" if model_type is not None
            else f"architectures {hf.get('architectures')!r}" if hf.get("architectures") else "no model_type")
    raise UserError(f"unsupported Hugging Face architecture ({what}); scratchllm reads {_SUPPORTED}")


def model_type_for(config: ModelConfig) -> str:
    """Which Hugging Face architecture a ModelConfig exports as: GPT-2-shaped (learned positions) ->
    gpt2, RMSNorm + RoPE + SwiGLU -> llama, the same with qk_norm -> qwen3. A config none of them can
    express is a UserError that names the option and what to use.

    >>> model_type_for(ModelConfig.preset("mini-llama"))
    'llama'
    """
    model_type = "qwen3" if config.qk_norm else "gpt2" if config.position == "learned" else "llama"
    try:
        _WRITE[model_type][0](config)
    except UserError as e:
        raise UserError(f"this model has no Hugging Face equivalent (as {model_type}): {e}") from None
    return model_type


def config_from_hf(hf: Mapping, **overrides) -> ModelConfig:
    """A `config.json` dict of any supported architecture -> ModelConfig (see `hf_model_type`)."""
    return _READ[hf_model_type(hf)][0](hf, **overrides)


def hf_config(config: ModelConfig) -> dict:
    """ModelConfig -> a `config.json` dict: `model_type`, `architectures` and the keys of its
    transformers config class (the architecture `model_type_for` picks)."""
    model_type = model_type_for(config)
    return {"model_type": model_type, "architectures": [HF_ARCHITECTURES[model_type]],
            **_WRITE[model_type][0](config)}


def from_hf(state_dict: StateDict, model_type: str, *, tied: bool | None = None) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict of `model_type` (gpt2, llama, qwen3) -> our GPT's state dict.
    `tied`: the config's tie_word_embeddings (ModelConfig.tie_weights), so that an untied checkpoint
    without its head is an error rather than a tied model; None when not known."""
    if model_type not in _READ:
        raise UserError(f"unsupported Hugging Face architecture {model_type!r}; scratchllm reads {_SUPPORTED}")
    return _READ[model_type][1](state_dict, tied=tied)


def to_hf(state_dict: StateDict, model_type: str) -> dict[str, torch.Tensor]:
    """Our GPT's state dict -> the names and layouts of Hugging Face's `model_type` (`model_type_for`)."""
    if model_type not in _WRITE:
        raise UserError(f"unsupported Hugging Face architecture {model_type!r}; scratchllm writes {_SUPPORTED}")
    return _WRITE[model_type][1](state_dict)


# --------------------------------------------------------------------------------------------
# OpenAI's original GPT-2 release (the TensorFlow checkpoint of openai/gpt-2, src/model.py's names)
# OpenAI's name inside `model/h{i}/` -> HF GPT-2's inside `h.{i}.`. OpenAI's linear weights are
# Conv1D kernels of shape [1, in, out]: without the leading 1, HF's Conv1D (in, out) layout.
_OPENAI_GPT2_BLOCK = {
    "ln_1/g": "ln_1.weight",
    "ln_1/b": "ln_1.bias",
    "attn/c_attn/w": "attn.c_attn.weight",
    "attn/c_attn/b": "attn.c_attn.bias",
    "attn/c_proj/w": "attn.c_proj.weight",
    "attn/c_proj/b": "attn.c_proj.bias",
    "ln_2/g": "ln_2.weight",
    "ln_2/b": "ln_2.bias",
    "mlp/c_fc/w": "mlp.c_fc.weight",
    "mlp/c_fc/b": "mlp.c_fc.bias",
    "mlp/c_proj/w": "mlp.c_proj.weight",
    "mlp/c_proj/b": "mlp.c_proj.bias",
}
_OPENAI_GPT2_TOP = {"model/wte": "wte.weight", "model/wpe": "wpe.weight", "model/ln_f/g": "ln_f.weight",
                    "model/ln_f/b": "ln_f.bias"}


def openai_gpt2_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor OpenAI's GPT-2 checkpoint holds for this config, with its shape.

    >>> s = openai_gpt2_shapes(ModelConfig(vocab_size=10, context_length=4, n_layer=1, n_head=1, n_embd=2))
    >>> len(s), s["model/wte"], s["model/h0/attn/c_attn/w"], s["model/h0/mlp/c_fc/b"]
    (16, (10, 2), (1, 2, 6), (8,))
    """
    E, H = config.n_embd, config.hidden_dim
    block = {"ln_1/g": (E,), "ln_1/b": (E,), "attn/c_attn/w": (1, E, 3 * E), "attn/c_attn/b": (3 * E,),
             "attn/c_proj/w": (1, E, E), "attn/c_proj/b": (E,), "ln_2/g": (E,), "ln_2/b": (E,),
             "mlp/c_fc/w": (1, E, H), "mlp/c_fc/b": (H,), "mlp/c_proj/w": (1, H, E), "mlp/c_proj/b": (E,)}
    shapes = {"model/wte": (config.vocab_size, E), "model/wpe": (config.context_length, E)}
    for i in range(config.n_layer):
        shapes.update({f"model/h{i}/{k}": v for k, v in block.items()})
    return shapes | {"model/ln_f/g": (E,), "model/ln_f/b": (E,)}


def from_openai_gpt2(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """OpenAI's GPT-2 checkpoint tensors (`model/h0/attn/c_attn/w`, ...) -> our GPT's state dict.

    Renamed to HF GPT-2's names with the Conv1D kernels' leading 1 dropped, then `from_hf_gpt2`
    (which transposes them to nn.Linear's layout and ties the head: OpenAI's logits use wte)."""
    hf: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        m = re.fullmatch(r"model/h(\d+)/(.+)", name)
        if m and m.group(2) in _OPENAI_GPT2_BLOCK:
            hf_name = f"h.{m.group(1)}.{_OPENAI_GPT2_BLOCK[m.group(2)]}"
        elif name in _OPENAI_GPT2_TOP:
            hf_name = _OPENAI_GPT2_TOP[name]
        else:
            raise UserError(f"OpenAI GPT-2 tensor {name!r} has no place in scratchllm's GPT; is this a GPT-2 "
                            f"checkpoint from openai/gpt-2?")
        if name.endswith("/w"):
            if t.dim() != 3 or t.shape[0] != 1:
                raise UserError(f"OpenAI GPT-2 tensor {name!r} has shape {list(t.shape)}; a Conv1D kernel "
                                f"[1, in, out] was expected")
            t = t[0]
        hf[hf_name] = t
    return from_hf_gpt2(hf)


def config_from_openai_gpt2(hparams: Mapping, **overrides) -> ModelConfig:
    """OpenAI's `hparams.json` dict (n_vocab, n_ctx, n_embd, n_head, n_layer) -> ModelConfig.

    Everything else is fixed in OpenAI's model.py: LayerNorm with epsilon 1e-5, tanh GELU, biases
    everywhere, the head tied to wte.

    >>> config_from_openai_gpt2({"n_vocab": 50257, "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12}).n_layer
    12
    """
    keys = {"n_vocab": "vocab_size", "n_ctx": "context_length", "n_embd": "n_embd", "n_head": "n_head",
            "n_layer": "n_layer"}
    missing = [k for k in keys if not isinstance(hparams.get(k), int) or isinstance(hparams.get(k), bool)]
    if missing:
        raise UserError(f"OpenAI GPT-2 hparams need integer {', '.join(missing)}; is this OpenAI's hparams.json?")
    d = {ours: hparams[theirs] for theirs, ours in keys.items()}
    d |= dict(norm="layernorm", norm_eps=1e-5, mlp="gelu", position="learned", bias=True, qkv_bias=True,
              tie_weights=True)
    return ModelConfig(**{**d, **overrides})
