"""Linear layers for few-row inference on the CPU: the same products, read from memory faster.

At batch 1 a decode step multiplies one row by every weight matrix: a matrix-vector product that
reads each weight once and does two FLOPs per weight, so its speed is the memory's, not the
arithmetic's. torch's `F.linear` (MKL) reads an (out, in) fp32 weight well below what the memory
gives. Two faster readers, by rows per call:
- 1 row: scratchllm's C kernel (`model.gemv`), on the layer's own weight, about as fast as a plain
  sum of the weights reads; it also reads bf16 weights (half the bytes), where torch's bf16
  matrix-vector product is slow too. It takes smaller weights as well (KERNEL_MIN_WEIGHTS), and
  `linear_plus` adds a residual inside the same call (a decode step's `x + proj(h)`).
- up to `MAX_ROWS` rows (a batch, a prompt, speculative drafts): oneDNN's blocked ("packed")
  weight layout, the one torch.compile's CPU backend uses for frozen linears. Packing copies each
  large weight once per generation (GPT-2 124M fp32: +500 MB while it lasts).
- more rows, training, autocast, other dtypes or devices: the wrapped `nn.Linear`, unchanged.
`benchmarks/gemv.py` measures the readers against the memory's read bandwidth and
`benchmarks/generate.py` the decode speed they give (same tokens as F.linear); see
benchmarks/RESULTS.md.

`fast_linears(model, rows)` is a context manager that wraps every large `nn.Linear` of the model
in a `FastLinear` for its duration (as LoRA wraps `Linear`) and puts the originals back on exit.
`rows` is the most rows a decode step will pass: at 1, with the kernel built, nothing is packed
(the prompt's one-off forward pass uses F.linear). Results equal `F.linear`'s to float rounding
(sums in another order). Where neither reader exists, nothing is wrapped.

Not here: the model (model.gpt), the decode loop (generate.engine), the C kernel (model.gemv).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from scratchllm.model import gemv
from scratchllm.model.quant_linear import QuantLinear

# Pack only weights of 2 MB or more (in * out >= 2^19 in fp32): smaller ones sit in the caches and
# F.linear reads them as fast. GPT-2 124M's smallest matrix (768 x 768, 0.6M) is in.
MIN_WEIGHTS = 2**19
# The one-row kernel takes smaller weights too, from 2^15 (128 KB in fp32): for those its gain is the call
# (no dispatch through torch, the residual added as it writes), which a decode step makes ~5 times a layer;
# a small model's layers (the demo's 256 x 768) are in, a toy's (32 x 96) stay with F.linear.
KERNEL_MIN_WEIGHTS = 2**15
# Rows (batch x new tokens) up to which the packed product is used: measured faster up to 32 rows
# (a 32-token prompt) and batch-8 decode; beyond that matrix-matrix speed matters and F.linear's
# kernels are tuned for it.
MAX_ROWS = 64


def _ops_available() -> bool:
    """Whether this torch build has oneDNN's packed-linear ops."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and mkldnn is not None
            and hasattr(mkldnn, "_reorder_linear_weight") and hasattr(mkldnn, "_linear_pointwise"))


def _eligible(m: nn.Module, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
              least: int = MIN_WEIGHTS) -> bool:
    # exactly nn.Linear: a subclass (model.lora's LoRALinear) computes more than its weight's product
    return (type(m) is nn.Linear and m.weight.numel() >= least and m.weight.dtype in dtypes
            and m.weight.device.type == "cpu")


class FastLinear(nn.Module):
    """An `nn.Linear` that runs one-row CPU inference through `kernel` (fp32 or bf16) and up to
    MAX_ROWS rows through a packed copy of its weight (fp32), each when given; everything else
    through itself."""

    def __init__(self, linear: nn.Linear, kernel: gemv.Kernel | None = None, pack: bool = True) -> None:
        super().__init__()
        self.linear = linear
        self.dtype = linear.weight.dtype
        # the one-row product, bound to this layer's weight, (out, in) or a transposed (in, out) one
        # (None: no kernel, or a layout it does not take)
        usable = kernel is not None and kernel.takes(linear.weight)
        self.product = kernel.bind(linear.weight, linear.bias) if usable else None
        pack = pack and linear.weight.dtype == torch.float32
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1) if pack else None

    @property
    def weight(self) -> torch.Tensor:  # code that reads a layer's weight (dtype, device) still finds it
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def one_row(self, x: torch.Tensor) -> bool:
        """Whether `x` goes through the kernel: one CPU row of the weight's dtype, no autograd, no autocast."""
        return (self.product is not None and x.numel() == x.shape[-1] and x.dtype is self.dtype
                and x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_row(x):
            return self.product(x)
        if (x.dtype != self.dtype or x.device.type != "cpu" or torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu")):
            return self.linear(x)
        rows = x.numel() // x.shape[-1]
        if rows > MAX_ROWS or self.packed is None:
            return self.linear(x)
        bias = self.bias.detach() if self.bias is not None else None
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(rows, x.shape[-1]), self.packed, bias, "none", [], "")
        return y.view(*x.shape[:-1], y.shape[-1])  # (..., out)


def linear_plus(layer: nn.Module, x: torch.Tensor, residual: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """`residual + layer(x)` (a block's residual connection), one kernel call when `layer` is a FastLinear
    that takes `x` (`FastLinear.one_row`: the kernel adds the residual as it writes the product, rounded as
    torch rounds the two steps), or a QuantLinear that runs `x` through the kernel (`QuantLinear.one_row_product`:
    its product adds the fp32 residual likewise). `in_place`: the sum is written into `residual` (the caller owns
    it)."""
    if type(layer) is FastLinear and layer.one_row(x) and residual.dtype is x.dtype and residual.is_contiguous():
        return layer.product(x, add=residual, out=residual if in_place else None)
    if type(layer) is QuantLinear and residual.dtype is torch.float32 and residual.is_contiguous():
        product = layer.one_row_product(x)
        if product is not None and residual.numel() == layer.out_features:
            return product(x, add=residual, out=residual if in_place else None)
    y = layer(x)
    return residual.add_(y) if in_place else residual + y


def worth_wrapping(model: nn.Module) -> bool:
    """Whether `fast_linears` would change anything: the model has a CPU linear that a reader here takes
    (packing: fp32, MIN_WEIGHTS or more; the kernel: fp32 and bf16, KERNEL_MIN_WEIGHTS or more)."""
    if any(_eligible(m, (torch.float32,)) for m in model.modules()) and _ops_available():
        return True
    return any(_eligible(m, least=KERNEL_MIN_WEIGHTS) for m in model.modules()) and gemv.load() is not None


@contextmanager
def fast_linears(model: nn.Module, rows: int = MAX_ROWS) -> Iterator[nn.Module]:
    """Within the block, every large fp32/bf16 CPU `nn.Linear` of `model` is a `FastLinear` (see the
    module doc); `rows` is the most rows one decode step passes (batch size, or 1 + speculative drafts)."""
    swapped: list[tuple[nn.Module, str, nn.Linear]] = []
    if worth_wrapping(model):
        kernel = gemv.load()
        pack = _ops_available() and (rows > 1 or kernel is None)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if kernel is not None and _eligible(child, least=KERNEL_MIN_WEIGHTS):
                    setattr(parent, name, FastLinear(child, kernel, pack and _eligible(child)))
                elif _eligible(child, (torch.float32,)):
                    setattr(parent, name, FastLinear(child, kernel, pack))
                else:
                    continue
                swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)
