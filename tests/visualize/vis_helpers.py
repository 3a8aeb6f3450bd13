"""What the picture tests share: a small text, tiny models (GPT-2 style and Llama style), a PNG reader."""

from __future__ import annotations

from pathlib import Path

TEXT = ("I had always thought Jack Gisburn rather a cheap genius, though a good fellow enough, so it was no "
        "great surprise to me to hear that, in the height of his glory, he had dropped his painting. ") * 4


def tiny(tokenizer, **options):
    import torch

    from scratchllm.config.model import ModelConfig
    from scratchllm.model import GPT

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_embd=32, context_length=32,
                         **options)
    return GPT(config).eval()


LLAMA = dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, qk_norm=True, bias=False)


def read_png(path: Path):
    """The PNG's pixels (H, W, channels) as matplotlib reads them; fails unless it is a PNG with content."""
    import matplotlib.image
    import numpy as np

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    rgb = pixels[..., :3].reshape(-1, 3)
    assert float(rgb.std()) > 0.02, f"{path} is blank"
    assert len(np.unique((rgb * 255).round(), axis=0)) > 20, f"{path} has almost no colours"
    return pixels
