"""llama.cpp's q8_0 and q4_0 block formats: weights in blocks of 32, each block with one fp16 scale.

A matrix (rows, n) is cut along its rows into blocks of QK = 32 consecutive weights (n must be a
multiple of 32); each block is stored as its scale d (fp16, little-endian, 2 bytes) and then its
32 integers. The numbers, as ggml's reference quantizers (`quantize_row_q8_0_ref`,
`quantize_row_q4_0_ref` in ggml-quants.c) compute them, in fp32:
- q8_0 (34 bytes a block): d = max|w| / 127, q = roundf(w / d) in -127..127 (round half away from
  zero), one int8 each. Dequantized: w' = q * d.
- q4_0 (18 bytes a block): m = the weight of largest magnitude, sign kept (the first such), d = m / -8,
  u = min(15, trunc(w / d + 8.5)) in 0..15; weight j and weight j + 16 share byte j (j in the low
  nibble). Dequantized: w' = (u - 8) * d. Using the signed extreme lets the rounding reach -8 on that
  side (m itself becomes u = 0, i.e. -8 * d = m), so all 16 levels are used.
"w / d" is computed as w * (1 / d), as ggml does, and a block of zeros gets d = 0 and all-zero
integers (q8_0) or u = 8 (q4_0). Tests check our bytes equal the `gguf` package's reference
quantizer (gguf.quants, bit for bit with ggml's C code) on random and edge-case blocks.

This is not scratchllm's own int8/int4 (`compress.quantize`: per-channel int8, group-wise int4 with
fp32 scales, for our kernels); these blocks are what a GGUF file holds (`interop.gguf`), which llama.cpp
then runs with its own kernels. Pure torch; no llama.cpp code.
References: ggml/src/ggml-quants.c (block_q8_0, block_q4_0 and their reference quantizers);
gguf-py/gguf/quants.py.
"""

from __future__ import annotations

import torch

# Weights per block (ggml's QK8_0 and QK4_0).
QK = 32
# Bytes per block: an fp16 scale, then 32 int8 (q8_0) or 32 4-bit integers, two per byte (q4_0).
BLOCK_BYTES = {"q8_0": 2 + QK, "q4_0": 2 + QK // 2}


def _blocks(w: torch.Tensor) -> torch.Tensor:
    """w (rows, n) as fp32 blocks (rows * n / 32, 32); n must be a multiple of 32."""
    if w.dim() != 2 or w.shape[1] % QK:
        raise ValueError(f"block quantization needs a matrix whose rows are a multiple of {QK} long, got "
                         f"{tuple(w.shape)}")
    return w.detach().to(torch.float32).contiguous().view(-1, QK)


def _scale_bytes(d: torch.Tensor) -> torch.Tensor:
    """Scales (blocks, 1) fp32 -> their fp16 bytes (blocks, 2), little-endian as ggml stores them."""
    return d.to(torch.float16).view(torch.uint8).view(-1, 2)


def _roundf(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: to nearest, halves away from zero (torch.round goes to even), exactly: the fraction
    is doubled and floored instead of adding 0.5, which can round up a float just below a half.

    >>> _roundf(torch.tensor([0.5, 1.5, -2.5, 0.49999997])).tolist()
    [1.0, 2.0, -3.0, 0.0]
    """
    a = x.abs()
    whole = a.floor()
    return torch.sign(x) * (whole + torch.floor(2 * (a - whole)))


@torch.no_grad()
def quantize_q8_0(w: torch.Tensor) -> torch.Tensor:
    """w (rows, n) -> its q8_0 blocks as bytes (rows, n / 32 * 34) uint8."""
    rows = w.shape[0]
    x = _blocks(w)  # (blocks, 32)
    d = x.abs().amax(dim=1, keepdim=True) / 127  # (blocks, 1)
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    q = _roundf(x * inv).to(torch.int8)
    return torch.cat([_scale_bytes(d), q.view(torch.uint8)], dim=1).view(rows, -1)


@torch.no_grad()
def quantize_q4_0(w: torch.Tensor) -> torch.Tensor:
    """w (rows, n) -> its q4_0 blocks as bytes (rows, n / 32 * 18) uint8."""
    rows = w.shape[0]
    x = _blocks(w)  # (blocks, 32)
    m = x.gather(1, x.abs().argmax(dim=1, keepdim=True))  # (blocks, 1): the extreme, sign kept
    d = m / -8
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    u = torch.trunc(x * inv + 8.5).clamp_(0, 15).to(torch.uint8)  # (blocks, 32)
    packed = u[:, : QK // 2] | (u[:, QK // 2 :] << 4)  # byte j: weight j (low), weight j + 16 (high)
    return torch.cat([_scale_bytes(d), packed], dim=1).view(rows, -1)


def _split(data: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    rows = data.shape[0]
    b = data.contiguous().view(-1, BLOCK_BYTES[kind])  # (blocks, bytes)
    d = b[:, :2].contiguous().view(torch.float16).float()  # (blocks, 1)
    return d, b[:, 2:], rows


def dequantize_q8_0(data: torch.Tensor) -> torch.Tensor:
    """q8_0 bytes (rows, n / 32 * 34) -> the weights they stand for, fp32 (rows, n)."""
    d, qs, rows = _split(data, "q8_0")
    return (qs.contiguous().view(torch.int8).float() * d).view(rows, -1)


def dequantize_q4_0(data: torch.Tensor) -> torch.Tensor:
    """q4_0 bytes (rows, n / 32 * 18) -> the weights they stand for, fp32 (rows, n)."""
    d, qs, rows = _split(data, "q4_0")
    u = torch.cat([qs & 0x0F, qs >> 4], dim=1)  # (blocks, 32): low nibbles are weights 0..15
    return ((u.float() - 8) * d).view(rows, -1)


QUANTIZE = {"q8_0": quantize_q8_0, "q4_0": quantize_q4_0}
DEQUANTIZE = {"q8_0": dequantize_q8_0, "q4_0": dequantize_q4_0}
