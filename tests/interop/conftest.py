"""Fixtures for the interop tests (helpers in interop_helpers.py)."""

import pytest
from interop_helpers import hf_model, save


@pytest.fixture(params=[("gpt2", True), ("gpt2", False), ("llama", True), ("llama", False)],
                ids=["gpt2-tied", "gpt2-untied", "llama-tied", "llama-untied"])
def hf_folder(request, tmp_path):
    """(transformers model, its saved folder) for each architecture, tied and untied."""
    kind, tied = request.param
    model = hf_model(kind, tied)
    return model, save(model, tmp_path / f"{kind}-{'tied' if tied else 'untied'}")
