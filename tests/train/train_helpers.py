"""Tiny stand-ins shared by the training tests: a small GPT and a learnable token stream."""

import numpy as np
import torch

from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT


def tiny_tokens(n: int = 6000, vocab: int = 61, seed: int = 0) -> np.ndarray:
    """A learnable stream: a repeating pattern with a little noise."""
    rng = np.random.default_rng(seed)
    return ((np.arange(n) * 7 + rng.integers(0, 3, n)) % vocab).astype(np.uint16)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig.preset("tiny", **{"vocab_size": 64, "n_embd": 32, **overrides}))


class ListBatches:
    """Batches from a list, with the state_dict/load_state_dict the loop checkpoints."""

    def __init__(self, batches):
        self.batches, self.i = list(batches), 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= len(self.batches):
            raise StopIteration
        self.i += 1
        return self.batches[self.i - 1]

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, d):
        self.i = d["i"]


def train_cli(recipe, runs, *flags) -> int:
    """`scratchllm train` in-process on a recipe file, into `runs`, without a progress bar."""
    from scratchllm.cli import main

    return main(["train", "--config", str(recipe), "--runs_dir", str(runs), "--quiet", *flags])
