"""runtime.keep_freed_memory: large blocks freed and allocated again, as every training step does,
stop costing page faults once the heap has settled; by default each one is faulted in anew."""

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
