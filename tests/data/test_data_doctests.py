"""The worked examples in the data modules' docstrings are run, so they stay true."""

import doctest
import importlib

import pytest

MODULES = ["readers", "clean", "dedup", "shards", "datasets", "stats"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"scratchllm.data.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} example(s) failed in {name}"
