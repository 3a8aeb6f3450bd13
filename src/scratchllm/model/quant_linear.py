"""Weight-only quantized layers: a linear layer (and a token embedding) that keeps its weight as small integers.

The storage format, which `compress.quantize` writes and this module reads:
- int8, per output channel (symmetric): `qweight` int8 (out, in) and `scales` fp32 (out, 1);
  W[r, i] = qweight[r, i] * scales[r, 0] (LLM.int8()'s vector-wise weight quantization, without its
  outlier columns).
- int4, group-wise: the `in` weights of each row in groups of `group_size`, one fp32 scale per group
  (`scales` (out, in / group_size)); each weight an unsigned u in 0..15 standing for (u - z) * scale.
  Symmetric weights have z = 8 for every group (nothing stored); asymmetric ones a zero point per
  group (`zeros` uint8 (out, in / group_size)). Two weights per byte (`qweight` uint8 (out, in / 2)):
  byte j of a row holds weight 2j in its low 4 bits and weight 2j + 1 in its high 4 bits. The
  group-wise layout with integer zero points is GPTQ's and AWQ's (Frantar et al. 2022; Lin et al. 2023).
`pack_int4` / `unpack_int4` and `dequantize` are that format's pure functions (how the numbers are
chosen, rounding included, is `compress.quantize`).

`QuantLinear` replaces an `nn.Linear` at inference: it holds the integers, scales (and zero points)
and the bias as buffers, so its state dict is the file's content. Its forward, for fp32 inputs:
- 1 row (batch-1 decoding), and up to KERNEL_ROWS rows in one call (a prompt, speculative drafts): the
  C kernel (`model.gemv`: `scratchllm_gemv_q8`/`_q4`) reads the integers and multiplies them with the
  input rows rounded to int8 in blocks of 32 (integer dot products, as llama.cpp's q8_0/q4_0 do), the
  scales applied per block: a quarter (int8) or about an eighth (int4) of fp32's bytes to read, each
  read once per call, and nothing dequantized in memory. int4 needs a group size that is a multiple of
  32 for it, and reads its buffers in the kernel's layout (16 rows side by side, `gemv.to_kernel_layout`):
  the first time the kernel is bound, the layer rearranges its int4 buffers into that layout IN PLACE
  (no second copy). Everything that reads them as the format above goes through `file_buffers()` /
  `rows()`: `dequantize`, the embedding's lookups, and the state dict (a hook puts the format's layout in
  it, so files never hold the kernel's); loading a state dict, or moving the layer (`.to`, `.half`),
  puts the buffers back in the format's layout first. Assign or load buffers, never write into them.
  A decode step (model.layers' `Block.decode_one`) uses the kernel's fused calls with these layers as with
  fp32 ones: the residual added inside the product (`fast_linear.linear_plus`, `one_row_product`), the block's
  norm inside the next product (`bind_normed`), the MLP's norm, products and activation in one call.
- more rows, or no kernel (`SCRATCHLLM_NO_KERNEL=1`, no compiler), or other group sizes: the whole
  weight dequantized once per call, then `F.linear`.
The second equals `F.linear(x, dequantize(...), bias)` to float rounding; the first equals it with x
replaced by its int8 rounding (`gemv.quantize_input`), so it differs from it by at most that rounding
carried through the weight (each input off by at most half its block's step; tested).

`QuantEmbedding` is a token embedding whose table is in the same format; it dequantizes only the rows
it looks up. A tied GPT (GPT-2: the head's weight is the token embedding) keeps one quantized table,
the head's: the embedding reads the head's buffers (it holds the head without registering it, so the
state dict and the file hold the table once). The `weight` of both is the dequantized weight, computed
when read (for code that reads a layer's weight, dtype or device); their forwards never read it.

Not here: choosing scales and rounding, which layers, the CLI (`compress.quantize`); files (`checkpoint`).
References: Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale";
Frantar et al. 2022, "GPTQ"; Lin et al. 2023, "AWQ".
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import UserError
from scratchllm.model import gemv

BITS = (8, 4)
DEFAULT_GROUP = 32  # int4: GPTQ/AWQ's common 128 is coarser; 32 keeps the error small for 256-768 wide rows
KERNEL_GROUP = 32  # the int4 kernel takes groups of a multiple of this many weights (2 x its 16 lanes)
# Rows up to which the kernel runs (one call, the weight read once for all rows) rather than the weight being
# dequantized: a dequantized copy writes and reads 4 bytes a weight; the kernel's integer products of 32 rows
# cost less than that on GPT-2's shapes.
KERNEL_ROWS = 32


@dataclasses.dataclass(frozen=True)
class QuantScheme:
    """How a model's weights are quantized: bits (8 or 4), group size (int4; int8 is per output
    channel: None), symmetric (int4 may be asymmetric: a zero point per group)."""

    bits: int = 8
    group_size: int | None = None
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise UserError(f"--bits {self.bits} is not supported; use 8 (int8 per output channel) or 4 "
                            f"(int4 group-wise)")
        if self.bits == 8 and self.group_size is not None:
            raise UserError("--group-size is for --bits 4; int8 has one scale per output channel")
        if self.bits == 8 and not self.symmetric:
            raise UserError("--asymmetric is for --bits 4; int8 is symmetric per output channel")
        if self.bits == 4 and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                               or self.group_size < 2 or self.group_size % 2):
            raise UserError(f"--group-size must be an even number of at least 2 (e.g. 32), got {self.group_size}")

    @property
    def name(self) -> str:
        """'int8', 'int4-g32' or 'int4-g32-asym'."""
        if self.bits == 8:
            return "int8"
        return f"int4-g{self.group_size}" + ("" if self.symmetric else "-asym")

    def check(self, name: str, in_features: int) -> None:
        """That a layer `name` with `in_features` inputs can hold this scheme (int4: groups and bytes fit)."""
        if self.bits == 4 and in_features % self.group_size:
            raise UserError(f"--group-size {self.group_size} does not divide {name}'s {in_features} inputs; "
                            f"use a divisor of every layer's input size (e.g. 32 or 64)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- the format --------------------------------------------------------------------------------------------
def pack_int4(u: torch.Tensor) -> torch.Tensor:
    """(..., n) integers in 0..15 (n even) -> (..., n / 2) uint8: element 2j in the low 4 bits of byte j,
    element 2j + 1 in its high 4 bits."""
    if u.shape[-1] % 2:
        raise ValueError(f"int4 packing takes an even number of values per row, got {u.shape[-1]}")
    u = u.to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)  # (..., n / 2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(..., n / 2) uint8 -> (..., n) uint8 in 0..15: `pack_int4`'s inverse."""
    lo, hi = packed & 15, packed >> 4
    return torch.stack((lo, hi), dim=-1).flatten(-2)  # (..., n / 2, 2) -> (..., n)


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None = None,
               bits: int = 8) -> torch.Tensor:
    """The fp32 weight (out, in) the stored integers stand for (see the module doc for the format)."""
    if bits == 8:
        return qweight.float() * scales  # (out, in) * (out, 1)
    u = unpack_int4(qweight).float()  # (out, in)
    out, n_in = u.shape
    groups = scales.shape[-1]
    z = zeros.float() if zeros is not None else 8.0
    w = (u.view(out, groups, n_in // groups) - (z[..., None] if zeros is not None else z)) * scales[..., None]
    return w.view(out, n_in)  # (out, groups, group) -> (out, in)


# --- the layers -----------------------------------------------------------------------------------------------
class QuantLinear(nn.Module):
    """A linear layer whose weight is stored as int8 or int4 (`scheme`), with buffers `qweight`, `scales`,
    `zeros` (asymmetric int4 only) and `bias` (if the layer has one). Built empty (zeros) by shape, or
    filled by `compress.quantize`; a checkpoint loads into the buffers."""

    def __init__(self, in_features: int, out_features: int, scheme: QuantScheme, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        scheme.check("this layer", in_features)
        if scheme.bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            groups = 1
        else:
            if in_features % 2:
                raise UserError(f"int4 packs two weights per byte; a layer with {in_features} inputs cannot")
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
            groups = in_features // scheme.group_size
        self.register_buffer("scales", torch.ones(out_features, groups))
        zeros = torch.zeros(out_features, groups, dtype=torch.uint8) if not scheme.symmetric else None
        self.register_buffer("zeros", zeros)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._bound: tuple[tuple[int, ...], Any] | None = None  # the kernel bound to the buffers' addresses
        # int4: the buffers' addresses while they are in the kernel's layout (see the module doc), else None
        self._kernel_layout: tuple[int, ...] | None = None
        self.register_state_dict_post_hook(_state_in_file_layout)
        self.register_load_state_dict_pre_hook(_load_in_file_layout)

    @property
    def weight(self) -> torch.Tensor:
        """The fp32 weight the integers stand for, computed on every read (see the module doc)."""
        return self.dequantize()

    def dequantize(self) -> torch.Tensor:
        return dequantize(*self.file_buffers(), self.scheme.bits)

    # --- the int4 kernel layout (see the module doc) ------------------------------------------------------
    def _buffer_ptrs(self) -> tuple[int, ...]:
        return tuple(0 if self._buffers[n] is None else self._buffers[n].data_ptr() for n in gemv.Q4_CHUNKS)

    def in_kernel_layout(self) -> bool:
        """Whether the int4 buffers are in the kernel's layout (rearranged when the kernel was bound, and not
        replaced since)."""
        return self._kernel_layout is not None and self._kernel_layout == self._buffer_ptrs()

    def _relayout(self, to_kernel: bool) -> None:
        """Rearrange the int4 buffers in place into the kernel's layout or back into the format's."""
        if self.in_kernel_layout() == to_kernel:
            self._kernel_layout = self._kernel_layout if to_kernel else None  # (forgets buffers since replaced)
            return
        convert = gemv.to_kernel_layout if to_kernel else gemv.from_kernel_layout
        with torch.no_grad():
            for name, chunk in gemv.Q4_CHUNKS.items():
                t = self._buffers[name]
                if t is not None:  # the same tensor, its data now the rearranged copy's (fresh, so aligned)
                    t.set_(convert(t, chunk))
        self._kernel_layout = self._buffer_ptrs() if to_kernel else None
        self._bound = None

    def __getstate__(self):
        self._relayout(False)  # a copy or a pickle gets the buffers in the format's layout
        return self.__dict__.copy()

    def file_buffers(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(qweight, scales, zeros) in the format's layout: the buffers, or copies of them when they are in the
        kernel's layout."""
        q, s, z = self.qweight, self.scales, self.zeros
        if not self.in_kernel_layout():
            return q, s, z
        back = gemv.from_kernel_layout
        return back(q, 4), back(s, 1), None if z is None else back(z, 1)

    def rows(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rows idx (N,) of (qweight, scales, zeros) in the format's layout (an embedding's lookup)."""
        q, s, z = self.qweight, self.scales, self.zeros
        if not self.in_kernel_layout():
            return q[idx], s[idx], None if z is None else z[idx]
        take = gemv.kernel_layout_rows
        return take(q, idx, 4), take(s, idx, 1), None if z is None else take(z, idx, 1)

    def _apply(self, fn, recurse=True):
        self._relayout(False)  # moved or cast buffers are new tensors: hand them over in the format's layout
        return super()._apply(fn, recurse)

    def _product(self):
        """The kernel's one-row product bound to the current buffers (rebound when they move), or None.
        Called once per layer and decode step: the check that the kernel and the buffers did not change is
        kept cheap (the buffers' addresses, read from `_buffers` directly rather than through nn.Module's
        attribute lookup)."""
        bufs = self._buffers
        zeros, bias = bufs["zeros"], bufs["bias"]
        kernel = gemv.load()
        key = (id(kernel), bufs["qweight"].data_ptr(), bufs["scales"].data_ptr(),
               0 if zeros is None else zeros.data_ptr(), 0 if bias is None else bias.data_ptr())
        bound = self._bound
        if bound is not None and bound[0] == key:
            return bound[1]
        if (kernel is None or (self.scheme.bits == 4 and self.scheme.group_size % KERNEL_GROUP)
                or self.qweight.device.type != "cpu"):
            product = None
        else:
            product = self._bind(kernel)
        self._bound = (key, product)
        return product

    def _bind(self, kernel: gemv.Kernel, norm: gemv.RowNorm | None = None):
        """The kernel's product (`gemv.Kernel.bind_q8`/`bind_q4`) bound to the buffers (int4: put in the kernel's
        layout first), with `norm` applied to its input rows first when given."""
        if self.scheme.bits == 8:
            for t in (self.qweight, self.scales):
                gemv.align_in_place(t)
            return kernel.bind_q8(self.qweight, self.scales, self.bias, rows=KERNEL_ROWS, norm=norm)
        with _RELAYOUT:  # once per layer, even when several threads bind it at once
            self._relayout(True)
        return kernel.bind_q4(self.qweight, self.scales, self.zeros, self.scheme.group_size, self.bias,
                              rows=KERNEL_ROWS, norm=norm)

    def one_row_product(self, x: torch.Tensor):
        """The kernel's product (`_product`) when `x` goes through it as one row (one CPU fp32 row), else None.
        It takes `add=` and `out=` (a residual added as it writes: `fast_linear.linear_plus`)."""
        if x.dtype is not torch.float32 or not x.is_cpu or x.numel() != self.in_features:
            return None
        return self._product()

    def bind_normed(self, norm: gemv.RowNorm):
        """`product(x)`: `self(norm(x))` for one fp32 row in one kernel call (the norm inside the product), bound
        to the buffers as they are now (the caller rebinds when `_product()` changes), or None without the kernel."""
        base = self._product()
        return None if base is None else self._bind(gemv.load(), norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype is torch.float32 and x.is_cpu and x.numel() <= KERNEL_ROWS * self.in_features:
            product = self._product()
            if product is not None:
                return product(x)
        w = self.dequantize().to(x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.scheme.name}"


class QuantEmbedding(nn.Module):
    """A token embedding whose table (vocab, dim) is a QuantLinear's weight: `table` its own (a registered
    submodule) or, `tied`, the head's (held, not registered: the head owns the buffers)."""

    def __init__(self, table: QuantLinear, tied: bool) -> None:
        super().__init__()
        self.tied = tied
        if tied:
            object.__setattr__(self, "_head", table)  # not a submodule: no second copy in the state dict
        else:
            self.table = table

    @property
    def source(self) -> QuantLinear:
        return self._head if self.tied else self.table

    @property
    def num_embeddings(self) -> int:
        return self.source.out_features

    @property
    def embedding_dim(self) -> int:
        return self.source.in_features

    @property
    def weight(self) -> torch.Tensor:
        """The fp32 table, dequantized on every read."""
        return self.source.dequantize()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = self.source
        rows = dequantize(*t.rows(idx.reshape(-1)), t.scheme.bits)  # (N, dim)
        return rows.view(*idx.shape, rows.shape[-1])  # (..., dim)

    def extra_repr(self) -> str:
        t = self.source
        return f"{t.out_features}, {t.in_features}, {t.scheme.name}" + (", tied to the head" if self.tied else "")


_RELAYOUT = threading.Lock()


def _state_in_file_layout(module: QuantLinear, state: dict, prefix: str, local_metadata) -> None:
    """State-dict hook: the int4 buffers in the format's layout, whatever layout the layer holds them in."""
    if module.in_kernel_layout():
        for name, t in zip(gemv.Q4_CHUNKS, module.file_buffers()):
            if t is not None and prefix + name in state:
                state[prefix + name] = t


def _load_in_file_layout(module: QuantLinear, *args) -> None:
    """Load-state-dict pre-hook: the buffers back in the format's layout, which the state dict is copied in."""
    module._relayout(False)


def quant_modules(model: nn.Module) -> dict[str, QuantLinear]:
    """The model's QuantLinear layers by name (an untied embedding's table, `tok_emb.table`, left out)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear) and name != "tok_emb.table"}


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, (QuantLinear, QuantEmbedding)) for m in model.modules())


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted `name` of `model`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quant_config(model: nn.Module) -> dict[str, Any]:
    """What quantization.json records of a quantized model: the scheme (bits, group_size, symmetric),
    `modules` (the QuantLinear layers' names) and `embedding` ("tied", "own" or None)."""
    layers = quant_modules(model)
    if not layers:
        raise ValueError("the model has no quantized layers")
    emb = getattr(model, "tok_emb", None)
    embedding = ("tied" if emb.tied else "own") if isinstance(emb, QuantEmbedding) else None
    return {**next(iter(layers.values())).scheme.to_dict(), "modules": list(layers), "embedding": embedding}


def quantized_structure(model: nn.Module, scheme: QuantScheme, modules: list[str], embedding: str | None) -> None:
    """Replace `modules` (nn.Linear names) by empty QuantLinears of their shapes, and the token embedding
    `tok_emb` by a QuantEmbedding when `embedding` is "tied" (the head's table) or "own"; in place. What a
    checkpoint reader does before loading the buffers (and `compress.quantize` before filling them)."""
    for name in modules:
        try:
            lin = model.get_submodule(name)
        except AttributeError:
            lin = None
        if not isinstance(lin, nn.Linear):
            raise UserError(f"the quantized layer {name!r} is not a linear layer of this model; "
                            f"the checkpoint does not match its config")
        set_module(model, name, QuantLinear(lin.in_features, lin.out_features, scheme, bias=lin.bias is not None))
    if embedding is None:
        return
    emb = model.get_submodule("tok_emb")
    if embedding == "tied":
        head = model.get_submodule("lm_head")
        if not isinstance(head, QuantLinear):
            raise UserError("a quantized embedding tied to the head needs a quantized head (lm_head)")
        set_module(model, "tok_emb", QuantEmbedding(head, tied=True))
    elif embedding == "own":
        table = QuantLinear(emb.embedding_dim, emb.num_embeddings, scheme, bias=False)
        set_module(model, "tok_emb", QuantEmbedding(table, tied=False))
    else:
        raise UserError(f"embedding must be 'tied', 'own' or absent, got {embedding!r}")
