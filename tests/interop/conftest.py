"""Fixtures for the interop tests (helpers in interop_helpers.py)."""

import pytest
from interop_helpers import hf_model, save

KINDS = [("gpt2", True), ("gpt2", False), ("llama", True), ("llama", False), ("llama3", False), ("qwen3", True),
         ("qwen3", False)]


@pytest.fixture(params=KINDS, ids=[f"{k}-{'tied' if t else 'untied'}" for k, t in KINDS])
def hf_folder(request, tmp_path):
    """(transformers model, its saved folder) for each architecture, tied and untied."""
    kind, tied = request.param
    model = hf_model(kind, tied)
    return model, save(model, tmp_path / f"{kind}-{'tied' if tied else 'untied'}")
