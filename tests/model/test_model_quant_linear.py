"""model.quant_linear: the quantized layer equals F.linear of its dequantized weight, through the C kernel
(one row, every path this CPU runs: portable C, AVX2, AVX-512) and without it (more rows,
SCRATCHLLM_NO_KERNEL=1, group sizes the kernel does not take).

The kernel quantizes its input row too (blocks of 32, int8, as llama.cpp's q8_0; `gemv.quantize_input`):
it equals F.linear of the dequantized weight and that quantized input to fp32 rounding, and differs
from F.linear of the exact input by at most the input's rounding carried through the weight,
sum over blocks b of d_b / 2 * sum_{i in b} |W_ri| (d_b the block's step), checked here."""

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


def input_rounding_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(..., out): how far a product with x quantized in blocks of 32 (steps d_b = max|x_b| / 127, each value
    off by at most d_b / 2) can be from the exact one: sum_b d_b / 2 * sum_{i in b} |W_ri|."""
    n_in = x.shape[-1]
    pad = -n_in % gemv.QBLOCK
    xb = F.pad(x.double(), (0, pad)).unflatten(-1, (-1, gemv.QBLOCK))  # (..., blocks, 32)
    half_step = xb.abs().amax(-1) / 127 / 2  # (..., blocks)
    wb = F.pad(w.double().abs(), (0, pad)).unflatten(-1, (-1, gemv.QBLOCK)).sum(-1)  # (out, blocks)
    return half_step @ wb.T  # (..., out)


def kernel_check(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """got is the product with x quantized as the kernel does (to fp32 rounding), and within the input's
    rounding of the exact product."""
    exact_check(got, gemv.quantize_input(x), w, b)
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    tol = 1e-6 * (x.double().abs() @ w.double().abs().T) + 1e-6
    assert ((got.double() - exact).abs() <= input_rounding_bound(x, w) + tol).all()


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
    if uses_kernel:
        kernel_check(y, x, q.dequantize(), q.bias)
    else:
        exact_check(y, x, q.dequantize(), q.bias)


# every path this CPU runs (the C code picks the best; tests force each), on sizes that take the paths'
# whole vectors, their last partial vector (int8: any width; int4: half vectors) and several rows per stream
@pytest.mark.parametrize("out,n_in", [(1, 32), (7, 96), (67, 160), (300, 768), (9, 3072), (5, 53), (13, 200)])
@pytest.mark.parametrize("scheme", SCHEMES[:4], ids=lambda s: s.name)
def test_every_kernel_path_equals_dequantize_then_matmul(kernel, out, n_in, scheme):
    if scheme.bits == 4 and n_in % scheme.group_size:
        return  # int4 needs groups dividing the row (the other sizes cover int8's odd widths)
    g = torch.Generator().manual_seed(out * 7 + n_in)
    lin = torch.nn.Linear(n_in, out)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out, n_in, generator=g))
    q = quantize_linear(lin, scheme)
    x = torch.randn(1, n_in, generator=g) * torch.rand(n_in, generator=g) * 4  # blocks of different steps
    x[0, :8] = 0  # and an all-zero stretch
    w = q.dequantize()
    results = {}
    for isa in kernel.isas:
        if scheme.bits == 8:
            product = kernel.bind_q8(q.qweight, q.scales, q.bias, isa=isa)
        else:
            zeros = None if q.zeros is None else gemv.to_kernel_layout(q.zeros, 1)  # the int4 kernel's layout
            product = kernel.bind_q4(gemv.to_kernel_layout(q.qweight, 4), gemv.to_kernel_layout(q.scales, 1), zeros,
                                     scheme.group_size, q.bias, isa=isa)
        results[isa] = product(x)
        kernel_check(results[isa], x, w, q.bias)
    assert set(kernel.isas) >= {"c"}
    scale = (x.abs() @ w.abs().T).max().item()  # float rounding of a sum is relative to the terms' size
    for isa, y in results.items():  # the same integer sums: the paths agree to float rounding
        assert (y - results["c"]).abs().max().item() <= 2e-6 * scale + 1e-6, isa


def test_a_path_this_cpu_lacks_is_refused(kernel, monkeypatch):
    q = quantize_linear(torch.nn.Linear(64, 8), QuantScheme(8))
    with pytest.raises(ValueError, match="does not run on this CPU"):
        kernel.bind_q8(q.qweight, q.scales, isa="sse9")
    monkeypatch.setenv(gemv.ISA_ENV, "c")
    assert kernel.isa() == 0
    monkeypatch.setenv(gemv.ISA_ENV, "avx1024")
    with pytest.raises(ValueError, match=gemv.ISA_ENV):
        kernel.isa()


@pytest.mark.parametrize("scheme", SCHEMES, ids=lambda s: s.name)
def test_many_rows_dequantize_then_matmul(scheme):
    g = torch.Generator().manual_seed(1)
    lin = torch.nn.Linear(128, 40)
    q = quantize_linear(lin, scheme)
    x = torch.randn(3, 5, 128, generator=g)
    y = q(x)
    assert y.shape == (3, 5, 40)
    w = dequantize(*q.file_buffers(), scheme.bits)  # (int4: the layer holds them in the kernel's layout now)
    if q._product() is not None:  # up to KERNEL_ROWS rows: the kernel, one row at a time
        kernel_check(y, x, w, q.bias)
    else:
        assert torch.allclose(y, F.linear(x, w, q.bias), atol=1e-5)
    if q._product() is not None:  # one row through the kernel: the batch's row up to the input's rounding
        kernel_check(q(x[:1, :1]), x[:1, :1], q.dequantize(), q.bias)
    else:
        assert torch.allclose(q(x[:1, :1]), y[:1, :1], atol=1e-5)
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
            kernel_check(y, x, q.dequantize(), q.bias)  # the kernel's: the same up to the input's rounding
    finally:
        gemv._build.cache_clear()


def test_the_kernel_rebinds_when_the_buffers_change():
    lin = torch.nn.Linear(64, 8)
    q = quantize_linear(lin, QuantScheme(8))
    x = torch.randn(1, 64)
    y = q(x)
    other = quantize_linear(torch.nn.Linear(64, 8), QuantScheme(8))
    q.load_state_dict(other.state_dict())  # copied into the same buffers: the bound product reads them live
    assert torch.equal(q(x), other(x)) and not torch.allclose(q(x), y)
    q.qweight = other.qweight.clone()  # a new buffer: bound again
    assert torch.equal(q(x), other(x))


@pytest.mark.parametrize("out", [1, 16, 37, 50])
def test_the_kernel_layout_round_trips_and_gathers_rows(out):
    g = torch.Generator().manual_seed(out)
    for n, chunk in [(8, 4), (48, 4), (3, 1)]:
        t = torch.randint(0, 256, (out, n), generator=g, dtype=torch.uint8)
        k = gemv.to_kernel_layout(t, chunk)
        assert k.shape == t.shape and torch.equal(gemv.from_kernel_layout(k, chunk), t)
        blocks = out // gemv.QROWS
        if blocks:  # a whole block: chunk c of its 16 rows side by side
            first = k[:gemv.QROWS].reshape(-1)[:gemv.QROWS * chunk].view(gemv.QROWS, chunk)
            assert torch.equal(first, t[:gemv.QROWS, :chunk])
        idx = torch.tensor([0, out - 1, out // 2, out - 1])
        assert torch.equal(gemv.kernel_layout_rows(k, idx, chunk), t[idx])


@pytest.mark.parametrize("scheme", SCHEMES[1:3], ids=lambda s: s.name)
def test_int4_buffers_in_the_kernel_layout_read_as_the_format(kernel, scheme, tmp_path):
    """After the kernel is bound the int4 buffers are in its layout; dequantize, the state dict, an embedding's
    rows, copies and loading still see the format's."""
    import copy

    from scratchllm.model.quant_linear import QuantEmbedding

    lin = torch.nn.Linear(64, 37)
    q = quantize_linear(lin, scheme)
    w, state = q.dequantize(), {k: v.clone() for k, v in q.state_dict().items()}
    emb = QuantEmbedding(q, tied=True)
    x = torch.randn(1, 64)
    y = q(x)
    assert q.in_kernel_layout() and not torch.equal(q.qweight, state["qweight"])  # rearranged in place
    assert torch.equal(q.dequantize(), w)
    assert all(torch.equal(v, state[k]) for k, v in q.state_dict().items())
    idx = torch.tensor([[3, 36], [0, 20]])
    assert torch.equal(emb(idx), w[idx])
    twin = copy.deepcopy(q)
    assert torch.equal(twin.dequantize(), w) and torch.equal(twin(x), y)
    other = quantize_linear(torch.nn.Linear(64, 37), scheme)
    q.load_state_dict(other.state_dict())  # back in the format's layout, loaded, rearranged at the next call
    assert torch.equal(q(x), other(x)) and torch.equal(q.dequantize(), other.dequantize())


@pytest.mark.parametrize("scheme", SCHEMES[:3], ids=lambda s: s.name)
def test_buffers_a_file_maps_anywhere_are_read_from_aligned_memory(kernel, scheme, tmp_path):
    """A layer loaded from a file holds buffers wherever the file's header put them (here 40 bytes past a cache
    line, as a quantized demo checkpoint's are); the kernel reads them from 64-byte-aligned memory, the same
    tensors (a tied embedding sees it), with the same outputs."""
    from safetensors.torch import load_file, save_file

    lin = torch.nn.Linear(64, 70)
    q = quantize_linear(lin, scheme)
    twin = quantize_linear(lin, scheme)
    x = torch.randn(1, 64)
    for name, t in q.state_dict().items():  # each buffer moved to 40 bytes past an aligned address
        raw = torch.empty(t.numel() * t.element_size() + 128, dtype=torch.uint8)
        start = -raw.data_ptr() % gemv.ALIGN + 40
        moved = raw[start:start + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        moved.copy_(t)
        setattr(q, name, moved)
    held = {name: getattr(q, name) for name in ("qweight", "scales")}
    assert all(t.data_ptr() % gemv.ALIGN == 40 for t in held.values())
    assert torch.equal(q(x), twin(x))
    assert all(getattr(q, name) is t and t.data_ptr() % gemv.ALIGN == 0 for name, t in held.items())
    save_file(q.state_dict(), tmp_path / "q.safetensors")  # the file still holds the format
    assert all(torch.equal(v, twin.state_dict()[k]) for k, v in load_file(tmp_path / "q.safetensors").items())


@pytest.mark.parametrize("scheme", SCHEMES[:3], ids=lambda s: s.name)
def test_several_rows_in_one_call_equal_one_row_at_a_time(kernel, scheme):
    g = torch.Generator().manual_seed(5)
    q = quantize_linear(torch.nn.Linear(96, 70), scheme)
    x = torch.randn(2, 7, 96, generator=g)
    y = q(x)  # one call of the kernel: each weight read once for the 14 rows
    rows = torch.stack([q(x[i, j]) for i in range(2) for j in range(7)]).view(2, 7, 70)
    assert torch.equal(y, rows)


# the fused calls of a decode step (gemv.c's scratchllm_gemv_q8/_q4 with a residual or a norm, scratchllm_mlp_q) equal
# the separate calls, by every path this CPU runs: rows not a whole number of blocks or threads' shares, 1-2 threads
@pytest.mark.parametrize("out,n_in", [(67, 64), (300, 192), (16, 96)])
@pytest.mark.parametrize("scheme", SCHEMES[:3], ids=lambda s: s.name)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_fused_quantized_calls_equal_the_separate_calls(kernel, out, n_in, scheme, threads):
    g = torch.Generator().manual_seed(out + n_in + scheme.bits)
    layers = []
    for _ in range(2):  # fc and gate
        lin = torch.nn.Linear(n_in, out)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(out, n_in, generator=g))
            lin.bias.copy_(torch.randn(out, generator=g))
        layers.append(quantize_linear(lin, scheme))
    x = torch.randn(3, n_in, generator=g) * 2 + 0.3
    residual = torch.randn(3, out, generator=g)
    nw, nb = torch.rand(n_in, generator=g) + 0.5, torch.randn(n_in, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for isa in kernel.isas:
            fc, gate = (bind(q, isa) for q in layers)
            # the residual: product then add, into a new tensor and in place (out=add), several rows at once
            want = fc(x) + residual
            assert torch.allclose(fc(x, add=residual), want, rtol=1e-6, atol=1e-6), isa
            r = residual.clone()
            assert fc(x, add=r, out=r) is r and torch.allclose(r, want, rtol=1e-6, atol=1e-6), isa
            for rms in (True, False):  # the norm inside: the same normalized row, rounded and summed the same way
                norm = gemv.RowNorm(nw, None if rms else nb, 1e-5, rms)
                xn = torch.stack([kernel.norm(row, nw, None if rms else nb, 1e-5, rms) for row in x])
                assert torch.equal(bind(layers[0], isa, norm)(x), fc(xn)), isa
                assert torch.equal(bind(layers[0], isa, norm)(x[:1], add=residual[:1]), fc(xn[:1], add=residual[:1]))
                # the MLP: both products and the activation (norm first) in one call
                f, h = fc(xn[:1]), gate(xn[:1])
                got = kernel.bind_mlp_quantized(fc, "swiglu", gate, norm=norm)(x[:1])
                assert torch.allclose(got, F.silu(h) * f, rtol=1e-5, atol=1e-5), isa
                for act, approximate in (("gelu_tanh", "tanh"), ("gelu", "none")):
                    got = kernel.bind_mlp_quantized(fc, act, norm=norm)(x[:1])
                    assert torch.allclose(got, F.gelu(f, approximate=approximate), rtol=1e-5, atol=1e-5), (isa, act)
            assert torch.allclose(kernel.bind_mlp_quantized(fc, "swiglu", gate)(x[:1]), F.silu(gate(x[:1])) * fc(x[:1]),
                                  rtol=1e-5, atol=1e-5), isa
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="residual must be"):
        fc(x, add=residual[:1])
    with pytest.raises(ValueError, match="a gate of fc's scheme"):
        kernel.bind_mlp_quantized(fc, "gelu", gate)


def bind(q, isa: str, norm=None):
    """q's kernel product by path `isa` (for up to 4 rows), with `norm` inside."""
    if q.scheme.bits == 8:
        return gemv.load().bind_q8(q.qweight, q.scales, q.bias, isa=isa, rows=4, norm=norm)
    zeros = None if q.zeros is None else gemv.to_kernel_layout(q.zeros, 1)
    return gemv.load().bind_q4(gemv.to_kernel_layout(q.qweight, 4), gemv.to_kernel_layout(q.scales, 1), zeros,
                               q.scheme.group_size, q.bias, isa=isa, rows=4, norm=norm)
