"""The worked examples in the tokenizer modules' docstrings are tests too."""

import doctest
import importlib

import pytest

MODULES = ["base", "bpe", "bpe_train", "bytelevel", "char", "factory", "hf", "patterns", "words", "wordpiece"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"scratchllm.tokenizer.{name}")
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0 and attempted > 0


def test_cli_docstring_examples():
    module = importlib.import_module("scratchllm.cli.tokenizer")
    assert doctest.testmod(module).failed == 0
