"""Fixtures for the model tests: the C matrix-vector kernel (model.gemv)."""

import sys

import pytest

from scratchllm.model import gemv

# Our machines and CI are Linux with a C compiler: there the kernel must build (a broken build fails
# the tests instead of quietly falling back). Elsewhere (no compiler, or one without OpenMP) it may
# not, and generation then uses torch's kernels; only then are the kernel's tests skipped.
KERNEL_MUST_BUILD = sys.platform.startswith("linux") and gemv.compiler() is not None


@pytest.fixture
def kernel():
    k = gemv.load()
    if k is None:
        if KERNEL_MUST_BUILD:
            pytest.fail(f"the gemv kernel did not build here: {gemv.status()}")
        pytest.skip(f"no gemv kernel on this platform: {gemv.status()}")
    return k
