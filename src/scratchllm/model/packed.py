"""Linear layers packed for decoding on the CPU: the same products, read from memory faster.

At batch 1 a decode step multiplies one row by every weight matrix: a matrix-vector product that
reads each weight once and does two FLOPs per weight, so its speed is the memory's, not the
arithmetic's. torch's `F.linear` reads a (out, in) fp32 weight from DRAM at about 13 GB/s on our
2-core machine, a third of what the memory gives (a plain sum streams ~40 GB/s). oneDNN's blocked
("packed") weight layout, the one torch.compile's CPU backend uses for frozen linears, streams the
same weights at ~26 GB/s; measured on GPT-2 124M, greedy fp32 decode 26 -> 41 tok/s at batch 1
and 1.9x HF transformers at batch 8, same tokens (benchmarks/generate.py).

`packed_linears(model)` is a context manager that wraps every large `nn.Linear` of the model in a
`PackedLinear` for its duration (as LoRA wraps `Linear`) and puts the originals back on exit. A
`PackedLinear` packs its weight once when entered (GPT-2 124M: ~0.1 s), uses it for fp32 inference
on the CPU with up to `MAX_ROWS` rows, and otherwise (training, autocast, other dtypes or devices,
more rows) calls the wrapped `Linear` unchanged. While packed, a second copy of each large weight
is held (GPT-2 124M: +500 MB in fp32).

Results equal `F.linear`'s to float rounding (the sums run in another order: ~1e-6 relative).
Where oneDNN's ops are missing (other torch builds) nothing is wrapped.

Not here: the model (model.gpt), the decode loop (generate.engine).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# Wrap only weights of 2 MB or more (in * out >= 2^19 in fp32): smaller ones sit in the caches and
# F.linear reads them as fast. GPT-2 124M's smallest matrix (768 x 768, 0.6M) is in; packing it too
# measured 41 -> 42 tok/s.
MIN_WEIGHTS = 2**19
# Rows (batch x new tokens) up to which the packed product is used: measured faster up to 32 rows
# (a 32-token prefill) and batch-8 decode; beyond that matrix-matrix speed matters and F.linear's
# kernels are tuned for it.
MAX_ROWS = 64


def _ops_available() -> bool:
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and mkldnn is not None
            and hasattr(mkldnn, "_reorder_linear_weight") and hasattr(mkldnn, "_linear_pointwise"))


class PackedLinear(nn.Module):
    """An `nn.Linear` with its weight also kept in oneDNN's packed layout, for few-row fp32 inference."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 1)

    @property
    def weight(self) -> torch.Tensor:  # code that reads a layer's weight (dtype, device) still finds it
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        if (rows > MAX_ROWS or x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu")):
            return self.linear(x)
        bias = self.bias.detach() if self.bias is not None else None
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(rows, x.shape[-1]), self.packed, bias, "none", [], "")
        return y.view(*x.shape[:-1], y.shape[-1])  # (..., out)


def worth_packing(model: nn.Module) -> bool:
    """Whether `packed_linears` would change anything: fp32 weights on the CPU, oneDNN present, and at
    least one linear of MIN_WEIGHTS or more."""
    if not _ops_available():
        return False
    return any(isinstance(m, nn.Linear) and m.weight.numel() >= MIN_WEIGHTS and m.weight.dtype == torch.float32
               and m.weight.device.type == "cpu" for m in model.modules())


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every large fp32 CPU `nn.Linear` of `model` runs packed (see the module doc)."""
    swapped: list[tuple[nn.Module, str, nn.Linear]] = []
    if worth_packing(model):
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if (isinstance(child, nn.Linear) and child.weight.numel() >= MIN_WEIGHTS
                        and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu"):
                    setattr(parent, name, PackedLinear(child))
                    swapped.append((parent, name, child))
    try:
        yield model
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)

