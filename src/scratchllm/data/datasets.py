"""Batches of (input, target) token windows for next-token prediction.

- `SlidingWindowDataset`: the book's `GPTDatasetV1` (chapter 2): windows of `max_length` tokens
  every `stride` tokens; the target is the input shifted by one. Windows are sliced on demand
  from one tensor instead of stored, with the same items in the same order.
- `create_dataloader`: the book's `create_dataloader_v1`, for any of our tokenizers, with a
  seeded shuffle so runs repeat.
- `RandomWindowBatches`: nanoGPT's `get_batch`: `batch_size` windows at random offsets of a token
  array (a memmap of a shard), forever. Batch k depends only on (seed, k), so the state is two
  integers and a restored iterator yields exactly the batches the original would have next.
- `EvalBatches`: a fixed set of evenly spaced windows over any split (pretraining evaluates both the
  training and the validation split), so every evaluation sees the same tokens.

Not here: tokenising a corpus into shards (`shards`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from scratchllm.errors import UserError


def _as_1d_array(tokens: Any) -> np.ndarray:
    """A 1-D integer array view of `tokens` (list, numpy array or memmap, or torch tensor)."""
    if hasattr(tokens, "detach"):  # a torch tensor
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise UserError(f"token ids must be a 1-D sequence, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise UserError(f"token ids must be integers, got {arr.dtype}")
    return arr


def need_tokens(n_tokens: int, context_length: int, what: str = "the corpus") -> None:
    """One clear line when a token array is too short for a window plus its shifted target.

    >>> need_tokens(10, 8)
    >>> need_tokens(5, 8)
    Traceback (most recent call last):
    ...
    scratchllm.errors.UserError: the corpus has 5 tokens; a window of 8 tokens plus its target needs at least 9: \
use more text or a shorter context_length
    """
    if context_length < 1:
        raise UserError(f"context_length must be at least 1, got {context_length}")
    if n_tokens < context_length + 1:
        raise UserError(f"{what} has {n_tokens} tokens; a window of {context_length} tokens plus its target needs "
                        f"at least {context_length + 1}: use more text or a shorter context_length")


def window_starts(n_tokens: int, max_length: int, stride: int) -> range:
    """Start offsets of the book's sliding windows: `range(0, n_tokens - max_length, stride)`.

    >>> list(window_starts(10, 4, 2))
    [0, 2, 4]
    """
    return range(0, n_tokens - max_length, stride)


class SlidingWindowDataset:
    """The book's GPTDatasetV1 over token ids: item i is (ids[s:s+L], ids[s+1:s+L+1]), s = i * stride.

    A torch `Dataset` in all but name (it has `__len__` and `__getitem__`), usable with DataLoader.
    """

    def __init__(self, ids: Sequence[int] | Any, max_length: int, stride: int) -> None:
        import torch

        if max_length < 1 or stride < 1:
            raise UserError(f"max_length and stride must be at least 1, got {max_length} and {stride}")
        arr = _as_1d_array(ids)
        need_tokens(len(arr), max_length, "the text")
        self.ids = torch.as_tensor(arr.astype(np.int64))  # (N,)
        self.max_length, self.stride = max_length, stride
        self.starts = window_starts(len(arr), max_length, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int):
        s = self.starts[i]
        return self.ids[s:s + self.max_length], self.ids[s + 1:s + self.max_length + 1]  # (L,), (L,)


def create_dataloader(text: str, tokenizer, batch_size: int = 4, max_length: int = 256, stride: int = 128,
                      shuffle: bool = True, drop_last: bool = True, seed: int = 0, num_workers: int = 0):
    """The book's create_dataloader_v1 for any tokenizer: encode `text`, slide windows, batch them.

    `<|endoftext|>` in the text is encoded as the special token (as the book allows); the shuffle
    order comes from a generator seeded with `seed`.
    """
    import torch
    from torch.utils.data import DataLoader

    allowed = {"<|endoftext|>"} if tokenizer.eot_id is not None else "none"
    dataset = SlidingWindowDataset(tokenizer.encode(text, allowed_special=allowed), max_length, stride)
    if drop_last and len(dataset) < batch_size:
        raise UserError(f"the text gives {len(dataset)} windows of {max_length} tokens (stride {stride}), fewer "
                        f"than batch_size {batch_size}: use more text, a smaller batch_size or max_length")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, generator=generator)


def _windows(arr: np.ndarray, starts: np.ndarray, T: int):
    """Stack the windows at `starts` into int64 tensors x, y of shape (B, T)."""
    import torch

    idx = starts[:, None] + np.arange(T + 1)[None, :]  # (B, T+1)
    block = np.asarray(arr[idx], dtype=np.int64)  # (B, T+1)
    t = torch.from_numpy(block)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()  # (B, T), (B, T)


class RandomWindowBatches:
    """Endless batches of `batch_size` windows at random offsets of `tokens` (nanoGPT's get_batch).

    Batch k draws its offsets from `np.random.default_rng([seed, k])`, so it depends only on the
    seed and k: `state_dict()` is {"seed", "batches_drawn", ...} and `load_state_dict` resumes
    exactly where the original left off.
    """

    def __init__(self, tokens: Any, batch_size: int, context_length: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        self.tokens = _as_1d_array(tokens)
        need_tokens(len(self.tokens), context_length)
        self.batch_size, self.context_length, self.seed = batch_size, context_length, int(seed)
        self.batches_drawn = 0

    def starts(self, k: int) -> np.ndarray:
        """Offsets of batch k (0-based), each in [0, n - context_length - 1]."""
        rng = np.random.default_rng([self.seed, k])
        return rng.integers(0, len(self.tokens) - self.context_length, size=self.batch_size)

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        starts = self.starts(self.batches_drawn)
        self.batches_drawn += 1
        return _windows(self.tokens, starts, self.context_length)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "batches_drawn": self.batches_drawn, "batch_size": self.batch_size,
                "context_length": self.context_length, "n_tokens": int(len(self.tokens))}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("batch_size", "context_length", "n_tokens"):
            mine = len(self.tokens) if key == "n_tokens" else getattr(self, key)
            if key in state and int(state[key]) != mine:
                raise UserError(f"cannot resume the batch iterator: it was saved with {key}={state[key]}, "
                                f"this one has {key}={mine}")
        self.seed = int(state["seed"])
        self.batches_drawn = int(state["batches_drawn"])


class EvalBatches:
    """`n_batches` fixed batches of evenly spaced windows over `tokens`, the same on every pass.

    `tokens` may be any split; `what` names it in the error when it is too short for one window.
    """

    def __init__(self, tokens: Any, batch_size: int, context_length: int, n_batches: int,
                 what: str = "the evaluation split") -> None:
        if batch_size < 1 or n_batches < 1:
            raise UserError(f"batch_size and n_batches must be at least 1, got {batch_size} and {n_batches}")
        self.tokens = _as_1d_array(tokens)
        need_tokens(len(self.tokens), context_length, what)
        self.batch_size, self.context_length, self.n_batches = batch_size, context_length, n_batches
        count = batch_size * n_batches
        last = len(self.tokens) - context_length - 1  # the last start with a full target
        self.all_starts = np.linspace(0, last, count).round().astype(np.int64)  # (n_batches * B,)

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        B = self.batch_size
        for k in range(self.n_batches):
            yield _windows(self.tokens, self.all_starts[k * B:(k + 1) * B], self.context_length)
