"""Fixtures for the finetuning tests: a tiny base model with GPT-2's tokenizer, and the shared data
folder as the place named datasets (sms-spam, alpaca-book) are read from."""

import pytest
from finetune_helpers import save_base


@pytest.fixture(autouse=True)
def _data_dir(shared_data, monkeypatch):
    """Named datasets come from the shared data folder (never downloaded)."""
    monkeypatch.setenv("SCRATCHLLM_DATA_DIR", str(shared_data))


@pytest.fixture(scope="session")
def base_model(tmp_path_factory, shared_data):
    """A checkpoint folder of a tiny random GPT (2 layers, 32 dims, context 128) with GPT-2's tokenizer."""
    return save_base(tmp_path_factory.mktemp("base") / "tiny-gpt2", shared_data)
