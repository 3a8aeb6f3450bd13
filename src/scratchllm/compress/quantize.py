"""Weight-only quantization: a model's weights rounded to int8 or int4, the rest of the model unchanged.

What is quantized: every linear layer (attention, MLP and the head) and the token embedding. GPT-2's
head is its largest matrix and, tied, it is the token embedding: the table is quantized once, as the
head, and the embedding reads its rows from it (`model.quant_linear.QuantEmbedding`); an untied
embedding gets its own quantized table. Kept in fp32: the position embedding (one row read per
token), norms and biases (a few thousand numbers). Activations stay fp32: only weights are rounded.

The numbers (for a weight row w, or a group of it):
- int8, symmetric, per output channel: scale = max|w| / 127, q = round(w / scale) in -127..127
  (LLM.int8()'s vector-wise quantization of the weight, Dettmers et al. 2022, without its fp16 outlier
  columns: weight-only quantization leaves activations, where the outliers are, in fp32).
- int4, group-wise (the in-features of a row in groups of G, one scale per group; GPTQ's and AWQ's
  layout, Frantar et al. 2022, Lin et al. 2023, by plain rounding to nearest, no calibration data):
  symmetric: scale = max|w| / 7, u = round(w / scale) + 8 in 1..15 (z = 8);
  asymmetric: the group's range [min(w, 0), max(w, 0)] in 15 steps, scale = (max - min) / 15, integer
  zero point z = round(-min / scale) in 0..15, u = clamp(round(w / scale) + z, 0, 15).
Dequantized, w' = (u - z) * scale (int8: q * scale); rounding to nearest keeps |w - w'| <= scale / 2
for every weight (tested). An all-zero row or group gets scale 1 (its integers are 0, or z).
The storage format (packing, dequantizing) is `model.quant_linear`'s: its functions are re-exported here.

`quantize_model(model, scheme)` replaces the layers in place and returns what quantization.json
records: the scheme, the layers' names and the embedding ("tied" or "own"). `quantize_folder(path,
out, scheme)` does it to any model folder and writes a checkpoint folder (with its tokenizer,
generation.json and a model card naming the scheme).

Not here: the layers' forward and kernel (`model.quant_linear`, `model.gemv`), files (`checkpoint`), the
command (`cli.quantize`).
References: Dettmers et al. 2022, "LLM.int8()"; Frantar et al. 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers"; Lin et al. 2023, "AWQ: Activation-aware Weight
Quantization for LLM Compression and Acceleration".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import UserError
from scratchllm.model.quant_linear import (
    DEFAULT_GROUP,
    QuantEmbedding,
    QuantLinear,
    QuantScheme,
    dequantize,
    pack_int4,
    quant_config,
    set_module,
    unpack_int4,
)

__all__ = ["DEFAULT_GROUP", "QuantScheme", "dequantize", "pack_int4", "quantize_int4", "quantize_folder",
           "quantize_int8", "quantize_linear", "quantize_model", "unpack_int4"]


def _safe(scale: torch.Tensor) -> torch.Tensor:
    """Scale 1 where it is 0 (an all-zero row or group: its integers are 0 either way)."""
    return torch.where(scale > 0, scale, torch.ones_like(scale))


@torch.no_grad()
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (out, in), scales fp32 (out, 1)): symmetric, one scale per output channel (row)."""
    w = w.detach().float()
    scales = _safe(w.abs().amax(dim=1, keepdim=True) / 127)  # (out, 1)
    q = torch.round(w / scales).clamp_(-127, 127).to(torch.int8)
    return q, scales


@torch.no_grad()
def quantize_int4(w: torch.Tensor, group_size: int = DEFAULT_GROUP,
                  symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(packed uint8 (out, in / 2), scales fp32 (out, in / G), zeros uint8 (out, in / G) or None when
    symmetric): group-wise int4 of w (out, in), G = `group_size` dividing `in`."""
    w = w.detach().float()
    out, n_in = w.shape
    if n_in % group_size or n_in % 2:
        raise ValueError(f"group size {group_size} must divide the {n_in} inputs, an even number")
    g = w.view(out, n_in // group_size, group_size)  # (out, groups, G)
    if symmetric:
        scales = _safe(g.abs().amax(dim=-1) / 7)  # (out, groups)
        zeros = None
        u = torch.round(g / scales[..., None]).clamp_(-7, 7) + 8
    else:
        lo, hi = g.amin(dim=-1).clamp(max=0), g.amax(dim=-1).clamp(min=0)  # the range, 0 included
        scales = _safe((hi - lo) / 15)
        z = torch.round(-lo / scales).clamp_(0, 15)  # (out, groups)
        u = (torch.round(g / scales[..., None]) + z[..., None]).clamp_(0, 15)
        zeros = z.to(torch.uint8)
    return pack_int4(u.view(out, n_in)), scales, zeros


def quantize_linear(linear: nn.Module, scheme: QuantScheme, name: str = "layer") -> QuantLinear:
    """A QuantLinear holding `linear`'s weight (an nn.Linear's, or an embedding table (vocab, dim)) under
    `scheme`, and its bias (fp32)."""
    w = linear.weight
    out, n_in = w.shape
    scheme.check(name, n_in)
    bias = getattr(linear, "bias", None)
    q = QuantLinear(n_in, out, scheme, bias=bias is not None)
    with torch.no_grad():
        if scheme.bits == 8:
            qw, scales = quantize_int8(w)
            zeros = None
        else:
            qw, scales, zeros = quantize_int4(w, scheme.group_size, scheme.symmetric)
        q.qweight.copy_(qw)
        q.scales.copy_(scales)
        if zeros is not None:
            q.zeros.copy_(zeros)
        if bias is not None:
            q.bias.copy_(bias.detach().float())
    return q.to(w.device)


def quantize_model(model: nn.Module, scheme: QuantScheme) -> dict[str, Any]:
    """Quantize `model` in place: every nn.Linear (the head included) and the token embedding `tok_emb`
    (tied to the head: read from the head's table; else its own). Every layer is checked first (a
    group size that does not divide a layer's inputs is a UserError naming it), so on an error the
    model is unchanged. Returns quantization.json's content: the scheme, `modules`, `embedding`."""
    if any(isinstance(m, (QuantLinear, QuantEmbedding)) for m in model.modules()):
        raise UserError("this model is quantized already; quantize the model it was made from")
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    if not linears:
        raise UserError("this model has no linear layers to quantize")
    emb = getattr(model, "tok_emb", None)
    emb = emb if isinstance(emb, nn.Embedding) else None
    head = getattr(model, "lm_head", None)
    tied = emb is not None and head is not None and head.weight is emb.weight
    for name, m in linears:
        scheme.check(name, m.in_features)
        if scheme.bits == 4 and m.in_features % 2:
            raise UserError(f"int4 packs two weights per byte; {name} has an odd number of inputs "
                            f"({m.in_features}); use --bits 8")
    if emb is not None and not tied:
        scheme.check("tok_emb", emb.embedding_dim)
    for name, m in linears:
        set_module(model, name, quantize_linear(m, scheme, name))
    if emb is not None:
        table = model.get_submodule("lm_head") if tied else quantize_linear(emb, scheme, "tok_emb")
        set_module(model, "tok_emb", QuantEmbedding(table, tied=tied))
    return quant_config(model)


# --- a quantized checkpoint folder ------------------------------------------------------------------------
def model_card(source: Path, model: nn.Module, config: dict[str, Any], fp32_bytes: int) -> str:
    """MODEL_CARD.md of a quantized checkpoint: its source and scheme, what is quantized and what is not."""
    from scratchllm.evaluate.card import derived_lines

    c = model.config
    scheme = QuantScheme(config["bits"], config["group_size"], config["symmetric"])
    stored = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    emb = {"tied": "; the token embedding reads the head's table (tied weights)",
           "own": " and the token embedding (its own table)", None: ""}[config["embedding"]]
    how = ("int8, symmetric, one fp32 scale per output channel" if scheme.bits == 8 else
           f"int4, {'symmetric' if scheme.symmetric else 'asymmetric (an integer zero point per group)'}, "
           f"one fp32 scale per group of {scheme.group_size} inputs, two weights per byte")
    return (f"# {source.name} ({scheme.name})\n\n"
            f"- Source: `{source}`\n"
            f"- Scheme: {how}; weight-only (activations stay fp32), rounding to nearest, no calibration data\n"
            f"- Quantized: {len(config['modules'])} linear layers (the head among them){emb}\n"
            f"- Kept in fp32: position embedding, norms, biases\n"
            f"- Model: {c.n_layer} layers, {c.n_head} heads, {c.n_embd} dims, context {c.context_length}, "
            f"vocabulary {c.vocab_size:,}\n"
            f"- Tensors: {stored / 1e6:.1f} MB (fp32: {fp32_bytes / 1e6:.1f} MB)\n\n"
            f"Written by `scratchllm quantize`. Rounding changes the model's outputs a little: measure it on your "
            f"text (benchmarks/quantize.py does, against fp32). `scratchllm export` does not take quantized "
            f"models; export the source instead.\n\n" + derived_lines("quantized", source, source.name))


def quantize_folder(path: str | os.PathLike, out: str | os.PathLike, scheme: QuantScheme) -> Path:
    """Quantize the model at `path` (anything `interop.load.load_any` reads) and write it as a checkpoint
    folder at `out` (model.safetensors, config.json, quantization.json, tokenizer, generation.json,
    MODEL_CARD.md, state.json), atomically. `out` must not exist."""
    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.interop.importer import CARD_FILE
    from scratchllm.interop.load import GENERATION_FILE, load_any

    src, out = Path(path), Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new folder for the quantized model (nothing was written)")
    model, tokenizer, meta = load_any(src)
    if "quantization" in meta:
        raise UserError(f"{src} is quantized already; quantize the model it was made from")
    model = model.float()
    fp32_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    config = quantize_model(model, scheme)
    card = model_card(src, model, config, fp32_bytes)
    generation = meta.get("generation", {})
    state = {"quantized_from": str(src.resolve())}
    extra = {
        GENERATION_FILE: lambda p: p.write_text(json.dumps(generation, indent=1), encoding="utf-8"),
        CARD_FILE: lambda p: p.write_text(card, encoding="utf-8"),
    }
    return save_checkpoint(out, model, state=state, tokenizer=tokenizer, extra_files=extra)
