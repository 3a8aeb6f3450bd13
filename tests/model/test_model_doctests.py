"""The worked examples in the model modules' docstrings run and hold."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["scratchllm.model.functional", "scratchllm.model.weights", "scratchllm.model.info",
                                  "scratchllm.model.layers", "scratchllm.cli.model"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0
