"""model.quant_linear: the quantized layer equals F.linear of its dequantized weight, through the C kernel
(one row) and without it (more rows, SCRATCHLLM_NO_KERNEL=1, group sizes the kernel does not take)."""

import pytest
import torch
import torch.nn.functional as F

from scratchllm.compress.quantize import quantize_linear
from scratchllm.model import gemv
from scratchllm.model.quant_linear import QuantScheme, dequantize

SCHEMES = [QuantScheme(8), QuantScheme(4, 32), QuantScheme(4, 32, symmetric=False), QuantScheme(4, 64),
           QuantScheme(4, 16)]


def exact_check(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """got equals x @ w.T + b summed exactly, to fp32 rounding of n_in terms."""
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    tol = 1e-6 * (x.double().abs() @ w.double().abs().T).max().item() + 1e-6
    assert got.shape == exact.shape and (got.double() - exact).abs().max().item() <= tol


# odd sizes: rows that do not split evenly into threads and streams, columns not a whole number of vectors
@pytest.mark.parametrize("out,n_in", [(1, 64), (5, 64), (67, 128), (300, 192)])
@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
@pytest.mark.parametrize("threads", [1, 2])
def test_one_row_through_the_kernel_equals_dequantize_then_matmul(kernel, out, n_in, scheme, threads):
    g = torch.Generator().manual_seed(out + n_in)
    lin = torch.nn.Linear(n_in, out, bias=out % 2 == 1)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out, n_in, generator=g))
    q = quantize_linear(lin, scheme)
    x = torch.randn(1, 1, n_in, generator=g)
    uses_kernel = scheme.bits == 8 or scheme.group_size % 32 == 0
    assert (q._product() is not None) == uses_kernel
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = q(x)
    finally:
        torch.set_num_threads(before)
    exact_check(y, x, q.dequantize(), q.bias)


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_many_rows_dequantize_then_matmul(scheme):
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(128, 40)
    q = quantize_linear(lin, scheme)
    x = torch.randn(3, 5, 128, generator=g)
    y = q(x)
    assert y.shape == (3, 5, 40)
    assert torch.allclose(y, F.linear(x, dequantize(q.qweight, q.scales, q.zeros, scheme.bits), q.bias), atol=1e-5)
    assert torch.allclose(q(x[:1, :1]), y[:1, :1], atol=1e-5)  # the kernel's row equals the batch's
    big = torch.randn(40, 128, generator=g)  # more than KERNEL_ROWS: dequantized once
    assert torch.allclose(q(big), F.linear(big, q.dequantize(), q.bias), atol=1e-5)


def test_without_the_kernel_the_same_numbers(monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCHLLM_CACHE_DIR", str(tmp_path / "cache"))
    lin = torch.nn.Linear(64, 24)
    q8, q4 = quantize_linear(lin, QuantScheme(8)), quantize_linear(lin, QuantScheme(4, 32, symmetric=False))
    x = torch.randn(1, 64)
    with_kernel = [q8(x), q4(x)]
    monkeypatch.setenv(gemv.DISABLE_ENV, "1")
    gemv._build.cache_clear()
    try:
        assert gemv.load() is None and q8._product() is None
        for q, y in zip((q8, q4), with_kernel):
            exact_check(q(x), x, q.dequantize(), q.bias)
            assert torch.allclose(q(x), y, atol=1e-5)
    finally:
        gemv._build.cache_clear()


def test_the_kernel_rebinds_when_the_buffers_change():
    lin = torch.nn.Linear(64, 8)
    q = quantize_linear(lin, QuantScheme(8))
    x = torch.randn(1, 64)
    y = q(x)
    other = quantize_linear(torch.nn.Linear(64, 8), QuantScheme(8))
    q.load_state_dict(other.state_dict())  # copied into the same buffers: the bound product reads them live
    assert torch.allclose(q(x), other(x), atol=1e-5) and not torch.allclose(q(x), y)
    q.qweight = other.qweight.clone()  # a new buffer: bound again
    assert torch.allclose(q(x), other(x), atol=1e-5)
