"""The worked examples in the teaching modules' docstrings run and hold."""

import doctest
import importlib


def test_docstring_examples():
    result = doctest.testmod(importlib.import_module("scratchllm.steps.attention"))
    assert result.failed == 0 and result.attempted > 0
