"""compress.blocks: our q8_0/q4_0 bytes equal the gguf package's reference quantizer (bit for bit with
ggml's C code) on random and edge-case blocks, dequantize as it does, and round within the stated bounds."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as ref_dequantize
from gguf.quants import quantize as ref_quantize

from scratchllm.compress.blocks import BLOCK_BYTES, DEQUANTIZE, QK, QUANTIZE

GGML = {"q8_0": GGMLQuantizationType.Q8_0, "q4_0": GGMLQuantizationType.Q4_0}


def weights(rows=48, n=256, seed=0) -> torch.Tensor:
    """Rows of different ranges, plus the blocks rounding trips over."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, n, generator=g) * torch.rand(rows, 1, generator=g) * 0.1
    w[0, :QK] = 0.0  # an all-zero block (scale 0)
    w[1, :QK] = w[1, :QK].abs()  # positive only: q4_0's extreme is positive, d negative
    w[2, :QK] = -w[2, :QK].abs()  # negative only
    w[3, :QK] = 0.25  # every weight equal to the extreme
    w[4, :QK] = torch.arange(QK) - 15.5  # halves: the rounding direction shows
    w[5, :QK] = torch.linspace(-1, 1, QK) * 1e-30  # denormal-small: the fp16 scale underflows to 0
    w[6, :QK] = torch.linspace(-1, 1, QK) * 6e4  # near fp16's largest number
    w[7, 3], w[7, 9] = 0.5, -0.5  # two extremes of equal size: the first one counts (q4_0)
    return w


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_bytes_equal_the_reference_quantizer(kind):
    for seed in range(3):
        w = weights(seed=seed)
        ours = QUANTIZE[kind](w)
        ref = ref_quantize(w.numpy(), GGML[kind])
        assert ours.dtype == torch.uint8 and ours.shape == (48, 256 // QK * BLOCK_BYTES[kind]) == ref.shape
        assert np.array_equal(ours.numpy(), ref), f"{kind}: {np.argwhere(ours.numpy() != ref)[:5]}"


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_dequantize_equals_the_reference(kind):
    data = ref_quantize(weights().numpy(), GGML[kind])
    ours = DEQUANTIZE[kind](torch.from_numpy(data))
    assert np.array_equal(ours.numpy(), ref_dequantize(data, GGML[kind]))


def test_rounding_error_is_bounded_by_the_block_scale():
    w = weights()[8:]  # ordinary random rows
    blocks = w.view(-1, QK)
    for kind, levels in (("q8_0", 127), ("q4_0", 8)):
        back = DEQUANTIZE[kind](QUANTIZE[kind](w)).view(-1, QK)
        d = blocks.abs().amax(dim=1, keepdim=True) / levels
        # q8_0: half a step; q4_0: one step at most (its largest level, +7, is one short of the extreme's
        # -8 side). Plus the scale's rounding to fp16 (relative 2^-11), times the largest integer.
        limit = ((0.5 if kind == "q8_0" else 1.0) + levels * 2.0**-11) * d
        assert ((back - blocks).abs() <= limit).all(), kind
    q4 = DEQUANTIZE["q4_0"](QUANTIZE["q4_0"](w)).view(-1, QK)
    assert (q4.unique(dim=None).numel()) > 16  # the scales differ per block


def test_a_row_length_not_a_multiple_of_32_is_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        QUANTIZE["q8_0"](torch.zeros(4, 48))
