"""Test helpers for the server: tiny model folders written by the tests, and a real uvicorn server on
127.0.0.1 (a free port) in a thread of the test process.

The generating models are random tiny GPTs with large weights (so greedy text varies) over a byte-level
tokenizer. The server's copy is cast to float64 (`as_float64`): batched and unbatched matrix products
then differ by ~1e-16 instead of float32's ~1e-7, so "a batched answer equals the same request served
alone" is checked exactly (greedy argmax ties closer than that do not occur in practice), while the
batching itself (joins, leaves, masks, positions) is exercised in full.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from scratchllm.checkpoint import save_checkpoint
from scratchllm.config.model import ModelConfig
from scratchllm.config.serve import ServeConfig
from scratchllm.model import GPT
from scratchllm.tokenizer.bpe import BPETokenizer


def byte_tokenizer() -> BPETokenizer:
    """256 single-byte tokens and <|endoftext|> (id 256)."""
    return BPETokenizer([bytes([i]) for i in range(256)], [], special_tokens={"<|endoftext|>": 256})


def write_model(folder: Path, *, seed: int = 0, generation: dict | None = None, **overrides) -> Path:
    """A random tiny GPT checkpoint at `folder` (with generation.json when `generation` is given)."""
    tok = byte_tokenizer()
    cfg = ModelConfig.preset("tiny", **{"vocab_size": tok.vocab_size, "context_length": 128, "init_std": 0.3,
                                        **overrides})
    torch.manual_seed(seed)
    extra = None
    if generation is not None:
        extra = {"generation.json": lambda p: p.write_text(json.dumps(generation), encoding="utf-8")}
    save_checkpoint(folder, GPT(cfg), tokenizer=tok, extra_files=extra)
    return folder


def write_classifier(folder: Path, labels=("ham", "spam")) -> Path:
    tok = byte_tokenizer()
    cfg = ModelConfig.preset("tiny", vocab_size=tok.vocab_size, context_length=64, n_classes=len(labels),
                             tie_weights=False)
    torch.manual_seed(1)
    task = {"kind": "classify", "labels": list(labels), "pooling": "last", "max_length": 64}
    save_checkpoint(folder, GPT(cfg), tokenizer=tok, state={"step": 0, "task": task})
    return folder


def as_float64(models: dict) -> dict:
    for m in models.values():
        if not m.is_classifier:
            m.model = m.model.double()
    return models


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(models: dict, **settings):
    """A uvicorn server of `create_app(ServeConfig(**settings), models)`; yields (base URL, app)."""
    import uvicorn

    from scratchllm.serve.app import create_app

    config = ServeConfig(**{"port": free_port(), **settings})
    app = create_app(config, models)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://{config.host}:{config.port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=30)
