"""Linear layers for few-row inference on the CPU: the same products, read from memory faster.

At batch 1 a decode step multiplies one row by every weight matrix: a matrix-vector product that
reads each weight once and does two FLOPs per weight, so its speed is the memory's, not the
arithmetic's. torch's `F.linear` (MKL) reads an (out, in) fp32 weight well below what the memory
gives. Two faster readers, by rows per call:
- 1 row: scratchllm's C kernel (`model.gemv`), on the layer's own weight, about as fast as a plain
  sum of the weights reads; it also reads bf16 weights (half the bytes), where torch's bf16
  matrix-vector product is slow too.
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

# Wrap only weights of 2 MB or more (in * out >= 2^19 in fp32): smaller ones sit in the caches and
# F.linear reads them as fast. GPT-2 124M's smallest matrix (768 x 768, 0.6M) is in.
MIN_WEIGHTS = 2**19
# Rows (batch x new tokens) up to which the packed product is used: measured faster up to 32 rows
# (a 32-token prompt) and batch-8 decode; beyond that matrix-matrix speed matters and F.linear's
# kernels are tuned for it.
MAX_ROWS = 64


def _ops_available() -> bool:
    """Whether this torch build has oneDNN's packed-linear ops."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and mkldnn is not None
            and hasattr(mkldnn, "_reorder_linear_weight") and hasattr(mkldnn, "_linear_pointwise"))


def _eligible(m: nn.Module, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)) -> bool:
    # exactly nn.Linear: a subclass (model.lora's LoRALinear) computes more than its weight's product
    return (type(m) is nn.Linear and m.weight.numel() >= MIN_WEIGHTS and m.weight.dtype in dtypes
            and m.weight.device.type == "cpu")


class FastLinear(nn.Module):
    """An `nn.Linear` that runs one-row CPU inference through `kernel` (fp32 or bf16) and up to
    MAX_ROWS rows through a packed copy of its weight (fp32), each when given; everything else
    through itself."""

    def __init__(self, linear: nn.Linear, kernel: gemv.Kernel | None = None, pack: bool = True) -> None:
        super().__init__()
        self.linear = linear
        self.dtype = linear.weight.dtype
        # the one-row product, bound to this layer's weight (None: no kernel, or a non-contiguous weight)
        usable = kernel is not None and linear.weight.is_contiguous()
        self.product = kernel.bind(linear.weight, linear.bias) if usable else None
        pack = pack and linear.weight.dtype == torch.float32
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1) if pack else None

    @property
    def weight(self) -> torch.Tensor:  # code that reads a layer's weight (dtype, device) still finds it
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype != self.dtype or x.device.type != "cpu" or torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu")):
            return self.linear(x)
        rows = x.numel() // x.shape[-1]
        if rows == 1 and self.product is not None:
            return self.product(x)
        if rows > MAX_ROWS or self.packed is None:
            return self.linear(x)
        bias = self.bias.detach() if self.bias is not None else None
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(rows, x.shape[-1]), self.packed, bias, "none", [], "")
        return y.view(*x.shape[:-1], y.shape[-1])  # (..., out)


def worth_wrapping(model: nn.Module) -> bool:
    """Whether `fast_linears` would change anything: the model has a CPU linear of MIN_WEIGHTS or more
    that a reader here takes (packing: fp32; the kernel: fp32 and bf16)."""
    if any(_eligible(m, (torch.float32,)) for m in model.modules()) and _ops_available():
        return True
    return any(_eligible(m) for m in model.modules()) and gemv.load() is not None


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
                if _eligible(child) and (kernel is not None or child.weight.dtype == torch.float32):
                    setattr(parent, name, FastLinear(child, kernel, pack))
                    swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)
