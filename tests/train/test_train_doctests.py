"""The worked examples in the training and generation modules' docstrings run and hold."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["scratchllm.train.optim", "scratchllm.train.muon", "scratchllm.train.loop",
                                  "scratchllm.train.pretrain", "scratchllm.generate.engine"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0
