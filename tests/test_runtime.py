"""runtime: the CPU description (cpu_info, cpu_identity, machine_summary, fast_bf16_matmul) read from
/proc/cpuinfo; keep_freed_memory: large blocks freed and allocated again, as every training step does,
stop costing page faults once the heap has settled; by default each one is faulted in anew;
peak_flops: the matmul peak for MFU is measured once per machine setting and cached."""

import json
import platform
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import json, resource, sys
    import torch
    from scratchllm.runtime import keep_freed_memory
    kept = keep_freed_memory() if sys.argv[1] == "1" else None
    faults = []
    for _ in range(8):  # a "step": two large tensors (above glibc's 32 MB mmap threshold), then freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        a = torch.ones(50_000_000)  # 200 MB of float32
        b = torch.ones(10_000_000)
        del a, b
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"kept": kept, "faults": faults}))
""")


def page_faults_per_step(keep: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, "1" if keep else "0"], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's; elsewhere it is a no-op")
def test_keep_freed_memory_stops_page_faults_on_reallocation():
    kept, default = page_faults_per_step(True), page_faults_per_step(False)
    pages = 240_000_000 // 4096
    assert kept["kept"] is True
    assert all(f > pages // 2 for f in default["faults"])  # by default every step faults its pages in again
    assert all(f < pages // 50 for f in kept["faults"][-2:])  # kept: the freed pages are reused


def test_peak_flops_is_measured_once_and_cached(monkeypatch, tmp_path):
    """The peak FLOP/s for MFU: measured on the first call, read from the cache file afterwards."""
    from scratchllm import runtime

    monkeypatch.setenv("SCRATCHLLM_CACHE_DIR", str(tmp_path))
    calls = []

    def fake_measure(device, precision, n=2048, reps=3):
        calls.append((device, precision))
        return 1.5e11 if precision == "bf16" else 7.0e10

    monkeypatch.setattr(runtime, "measure_peak_flops", fake_measure)
    assert runtime.peak_flops("cpu", "fp32") == 7.0e10
    assert calls == [("cpu", "fp32")]
    cached = json.loads((tmp_path / runtime.PEAK_FLOPS_FILE).read_text())
    assert cached == {runtime.peak_flops_key("cpu", "fp32"): 7.0e10}
    assert runtime.peak_flops("cpu", "fp32") == 7.0e10  # read back: not measured again
    assert calls == [("cpu", "fp32")]
    assert runtime.peak_flops("cpu", "bf16") == 1.5e11  # another precision is another entry
    assert len(calls) == 2 and len(json.loads((tmp_path / runtime.PEAK_FLOPS_FILE).read_text())) == 2
    (tmp_path / runtime.PEAK_FLOPS_FILE).write_text("not json")  # a damaged cache is measured again
    assert runtime.peak_flops("cpu", "fp32") == 7.0e10 and len(calls) == 3


def test_peak_flops_key_names_the_machine_setting():
    import torch

    from scratchllm import runtime

    key = runtime.peak_flops_key("cpu", "bf16")
    assert torch.__version__ in key and "| cpu |" in key and "bf16" in key
    assert key != runtime.peak_flops_key("cpu", "fp32")
    assert runtime.cpu_identity().strip()  # names something


HYBRID = """processor\t: 0
model name\t: Some CPU 9000
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
processor\t: 1
model name\t: Some CPU 9000
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16
"""


def test_cpu_info_reads_the_model_and_the_flags_every_core_has(monkeypatch, tmp_path):
    from scratchllm import runtime

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(HYBRID)
    monkeypatch.setattr(runtime, "CPUINFO", str(cpuinfo))
    name, flags = runtime.cpu_info()
    assert name == "Some CPU 9000"
    assert flags == {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16"}  # amx_tile: only one core has it
    assert runtime.cpu_flags_summary() == "avx2 avx512f avx512_bf16, no amx_bf16 amx_tile"
    assert runtime.machine_summary().startswith("Some CPU 9000 (avx2 avx512f avx512_bf16, no amx_bf16 amx_tile), ")
    assert runtime.fast_bf16_matmul("cpu") is True
    ident = runtime.cpu_identity()
    cpuinfo.write_text(HYBRID.replace(" avx512_bf16", ""))
    assert runtime.fast_bf16_matmul("cpu") is False
    assert runtime.cpu_flags_summary() == "avx2 avx512f, no avx512_bf16 amx_bf16 amx_tile"
    assert runtime.cpu_identity() != ident  # other flags: another CPU for a -march=native build


def test_without_cpuinfo_the_cpu_is_named_by_platform(monkeypatch, tmp_path):
    from scratchllm import runtime

    monkeypatch.setattr(runtime, "CPUINFO", str(tmp_path / "missing"))
    name, flags = runtime.cpu_info()
    assert name == (platform.processor() or platform.machine()) and flags == frozenset()
    assert runtime.cpu_flags_summary() == "no avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
    assert runtime.fast_bf16_matmul("cpu") is False
