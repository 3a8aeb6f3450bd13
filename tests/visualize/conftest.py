"""Fixtures of the picture tests: tiny checkpoints (GPT-2 style, and Llama style with RoPE, grouped-query
attention and QK-norm) with a small byte-level BPE, and a PNG reader."""

from __future__ import annotations

from pathlib import Path

import pytest
from vis_helpers import LLAMA, TEXT, tiny


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread (and the cores are shared); the setting is put back."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tokenizer():
    from scratchllm.tokenizer import train

    return train("bpe", [TEXT], vocab_size=300)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """Two checkpoint folders: "gpt2" (learned positions) and "llama" (RoPE, GQA, QK-norm)."""
    from scratchllm.checkpoint.folder import save_checkpoint

    root = tmp_path_factory.mktemp("models")
    return {name: save_checkpoint(root / name, tiny(tokenizer, **options), tokenizer=tokenizer)
            for name, options in [("gpt2", {}), ("llama", LLAMA)]}


@pytest.fixture
def figures(monkeypatch):
    """Every figure `files.save_figure` writes, as (figure's panels with content, path); the file is written."""
    import scratchllm.files as files

    saved = []
    real = files.save_figure

    def spy(fig, path, dpi=100):
        panels = [ax for ax in fig.axes if ax.images or ax.patches or ax.collections]
        saved.append((panels, fig.get_size_inches() * dpi, Path(path)))
        return real(fig, path, dpi)

    monkeypatch.setattr(files, "save_figure", spy)
    return saved
