"""model.gemv: the C matrix-vector kernel equals F.linear, is built once per machine, and is simply
not used (with a reason) where it cannot be built."""

import pytest
import torch
import torch.nn.functional as F

from scratchllm.model import gemv


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """Forget the process's kernel and build into an empty cache; restore afterwards."""
    monkeypatch.setenv("SCRATCHLLM_CACHE_DIR", str(tmp_path / "cache"))
    gemv._build.cache_clear()
    yield tmp_path / "cache" / "kernels"
    gemv._build.cache_clear()


# odd sizes: rows that do not split evenly into threads and streams, columns that are not whole vectors
@pytest.mark.parametrize("out,n_in", [(1, 1), (5, 16), (16, 16), (33, 17), (67, 53), (768, 768), (1003, 40),
                                      (100, 3072)])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("stored", ["out, in", "in, out"])
def test_equals_f_linear(kernel, out, n_in, threads, stored):
    """Both layouts: nn.Linear's (out, in), and (in, out) read through a transposed view (GPT-2's Conv1D)."""
    g = torch.Generator().manual_seed(out * 1000 + n_in)
    w, x, b = torch.randn(out, n_in, generator=g), torch.randn(1, 1, n_in, generator=g), torch.randn(out, generator=g)
    if stored == "in, out":
        w = w.t().contiguous().t()
        assert kernel.takes(w) and (not w.is_contiguous() or 1 in w.shape)  # a vector is both layouts
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, y_nobias = kernel(w, x, b), kernel(w, x[0, 0])
    finally:
        torch.set_num_threads(before)
    assert y.shape == (1, 1, out) and y.dtype == torch.float32 and y_nobias.shape == (out,)
    # float32 sums of n_in terms, in another order than F.linear's: compare both with the exact sum
    exact = F.linear(x.double(), w.double(), b.double())
    tol = 1e-6 * (x.double().abs() @ w.double().abs().T).max().item() + 1e-6  # ~ n_in roundings of the terms
    for got in (y, F.linear(x, w, b)):
        assert (got.double() - exact).abs().max().item() <= tol
    assert (y_nobias.double() - (exact[0, 0] - b.double())).abs().max().item() <= tol


@pytest.mark.parametrize("out,n_in", [(5, 16), (67, 53), (300, 768), (1003, 40), (40, 3072), (98, 37)])
@pytest.mark.parametrize("stored", ["out, in", "in, out"])
def test_bf16_weights_sum_in_fp32(kernel, out, n_in, stored):
    g = torch.Generator().manual_seed(out + n_in)
    w = torch.randn(out, n_in, generator=g).bfloat16()
    if stored == "in, out":
        w = w.t().contiguous().t()
        if out % 2:  # an (in, out) bf16 row is read as words of two outputs: odd widths stay with F.linear
            assert not kernel.takes(w)
            return
    x, b = torch.randn(1, n_in, generator=g).bfloat16(), torch.randn(out, generator=g).bfloat16()
    y = kernel(w, x, b)
    assert y.dtype == torch.bfloat16 and y.shape == (1, out)
    exact = F.linear(x.double(), w.double(), b.double())  # the same bf16 numbers, summed exactly
    assert torch.allclose(y.double(), exact, rtol=1e-2, atol=1e-2)  # one bf16 rounding at the end
    assert torch.allclose(y.double(), exact.bfloat16().double(), rtol=0, atol=0.02 * exact.abs().max().item())


def test_rejects_what_it_does_not_compute(kernel):
    w = torch.randn(8, 16)
    for bad_w, bad_x in [(w, torch.randn(2, 16)),  # two rows
                         (w, torch.randn(1, 15)),  # wrong width
                         (w, torch.randn(1, 16, dtype=torch.float64)),  # dtype not the weight's
                         (torch.randn(8, 32)[:, ::2], torch.randn(1, 16)),  # weight neither layout
                         (torch.randn(16, 7).bfloat16().t(), torch.randn(1, 16).bfloat16())]:  # odd bf16 (in, out)
        with pytest.raises(ValueError, match="gemv takes one CPU row"):
            kernel(bad_w, bad_x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threads", [1, 2])
def test_in_out_layout_adds_the_residual_like_the_other(kernel, dtype, threads):
    """An (in, out) weight's product with a residual (`add`, also in place) equals the (out, in) one's to rounding,
    bias and bf16 roundings included."""
    g = torch.Generator().manual_seed(7)
    for out, n_in in [(768, 3072), (2304, 768), (66, 35)]:
        w = torch.randn(out, n_in, generator=g).to(dtype)
        x, b, r = (torch.randn(1, 1, n, generator=g).to(dtype) for n in (n_in, out, out))
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            want = kernel.bind(w, b[0, 0])(x, add=r)
            t = w.t().contiguous().t()
            got = kernel.bind(t, b[0, 0])(x, add=r)
            inplace = r.clone()
            kernel.bind(t, b[0, 0])(x, add=inplace, out=inplace)
        finally:
            torch.set_num_threads(before)
        scale = (x.double().abs() @ w.double().abs().T).max().item()
        tol = (1e-6 if dtype == torch.float32 else 1e-2) * scale + 1e-6
        assert (got.double() - want.double()).abs().max().item() <= tol
        assert torch.equal(inplace, got)


def test_built_once_then_loaded_from_the_cache(kernel, fresh_build, monkeypatch):
    k = gemv.load()
    assert k is not None and k.path.parent == fresh_build and k.path.exists()
    assert gemv.status() == f"compiled C kernel {k.path}"
    assert [p.name for p in fresh_build.iterdir()] == [k.path.name]  # no temp files left behind
    gemv._build.cache_clear()
    monkeypatch.setattr(gemv, "_compile", lambda *a: pytest.fail("compiled again"))
    assert gemv.load().path == k.path


def test_no_compiler_or_turned_off_means_no_kernel(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert gemv.load() is None
    assert gemv.status().startswith("not used: /nonexistent/cc could not run")
    gemv._build.cache_clear()
    monkeypatch.setenv("SCRATCHLLM_NO_KERNEL", "1")
    assert gemv.load() is None and gemv.status() == "not used: turned off by SCRATCHLLM_NO_KERNEL"
    assert not fresh_build.exists() or not any(fresh_build.glob("*.so"))


def test_an_unwritable_cache_means_no_kernel(fresh_build, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SCRATCHLLM_CACHE_DIR", str(blocker / "cache"))  # a folder under a file
    assert gemv.load() is None
    assert gemv.status().startswith("not used: cannot write to the kernel cache")


def test_a_kernel_that_computes_wrongly_is_not_used(kernel, fresh_build, monkeypatch):
    real_call = gemv.Kernel.__call__
    monkeypatch.setattr(gemv.Kernel, "__call__", lambda self, w, x, b=None: real_call(self, w, x, b) + 1)
    assert gemv.load() is None
    assert "differs from F.linear" in gemv.status()


def test_the_cache_file_is_keyed_by_the_cpu(monkeypatch, tmp_path):
    """A -march=native library is named by the CPU it was built for (model name and flags), so a home
    folder shared between machines never loads one built for another CPU."""
    monkeypatch.setenv("SCRATCHLLM_CACHE_DIR", str(tmp_path))
    flags = ("-O3", "-march=native")
    amd = "x86_64\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16"
    intel = "x86_64\nmodel name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f"
    no_bf16 = "x86_64\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f"  # same name, other flags
    paths = {}
    for name, ident in [("amd", amd), ("intel", intel), ("no_bf16", no_bf16), ("amd again", amd)]:
        monkeypatch.setattr(gemv, "cpu_identity", lambda ident=ident: ident)
        paths[name] = gemv.library_path("cc", flags)
    assert paths["amd"] == paths["amd again"]
    assert len({paths["amd"], paths["intel"], paths["no_bf16"]}) == 3
    assert all(p.parent == tmp_path / "kernels" for p in paths.values())
    assert gemv.library_path("cc", flags) != gemv.library_path("gcc", flags)  # and by compiler and flags
    assert gemv.library_path("cc", flags) != gemv.library_path("cc", flags[:1])


def test_a_kernel_built_for_another_cpu_is_not_loaded(kernel, fresh_build, monkeypatch):
    monkeypatch.setattr(gemv, "cpu_identity", lambda: "x86_64\nmodel name\t: Another CPU\nflags\t\t: fpu")
    other = gemv.load()
    gemv._build.cache_clear()
    monkeypatch.setattr(gemv, "cpu_identity", lambda: "x86_64\nmodel name\t: This CPU\nflags\t\t: fpu avx2")
    built = []
    real_compile = gemv._compile
    monkeypatch.setattr(gemv, "_compile", lambda *a: built.append(a[2]) or real_compile(*a))
    this = gemv.load()
    assert other is not None and this is not None and this.path != other.path
    assert built == [this.path]  # built anew for this CPU, not loaded from the other's file


def test_a_new_build_removes_this_cpus_older_builds_only(kernel, fresh_build, monkeypatch):
    """Kernels of older builds (another source or compiler) of this CPU do not pile up in the cache;
    another CPU's kernels (a home folder shared between machines) and temp files are left alone."""
    fresh_build.mkdir(parents=True)
    mine = gemv.cpu_key()
    other_cpu = "0" * 8 if mine != "0" * 8 else "1" * 8
    older = fresh_build / f"gemv-{mine}-000000000000.so"
    another = fresh_build / f"gemv-{other_cpu}-000000000000.so"
    temp = fresh_build / ".gemv-abc123.so"
    for f in (older, another, temp):
        f.write_bytes(b"not a library")
    k = gemv.load()
    assert k is not None and k.path.exists()
    assert not older.exists() and another.exists() and temp.exists()
    assert sorted(p.name for p in fresh_build.iterdir()) == sorted([k.path.name, another.name, temp.name])
    # loaded from the cache (nothing built): nothing is removed
    older.write_bytes(b"not a library")
    gemv._build.cache_clear()
    monkeypatch.setattr(gemv, "_compile", lambda *a: pytest.fail("compiled again"))
    assert gemv.load().path == k.path and older.exists()


def test_prune_keeps_the_files_asked_for_and_other_cpus(monkeypatch, tmp_path):
    monkeypatch.setattr(gemv, "cpu_identity", lambda: "x86_64\nmodel name\t: This CPU\nflags\t\t: fpu avx2")
    mine = gemv.cpu_key()
    monkeypatch.setattr(gemv, "cpu_identity", lambda: "x86_64\nmodel name\t: Another CPU\nflags\t\t: fpu")
    theirs = gemv.cpu_key()
    monkeypatch.setattr(gemv, "cpu_identity", lambda: "x86_64\nmodel name\t: This CPU\nflags\t\t: fpu avx2")
    assert mine != theirs
    names = [f"gemv-{mine}-aaaaaaaaaaaa.so", f"gemv-{mine}-bbbbbbbbbbbb.so", f"gemv-{mine}-cccccccccccc.so",
             f"gemv-{theirs}-cccccccccccc.so"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    in_use, other_flags = tmp_path / names[0], tmp_path / names[1]
    assert gemv.prune([in_use, other_flags]) == [tmp_path / names[2]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], names[1], names[3]])
    assert gemv.prune([]) == []
