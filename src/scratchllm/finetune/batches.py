"""Batches of examples for finetuning: shuffled epochs, optionally grouped by length, resumable.

Pretraining reads random windows of one long token stream (`data.datasets`); finetuning reads
whole examples of different lengths (a message, an instruction and its response, a preference
pair). `ExampleBatches` cuts a list of examples into batches, epoch after epoch, each epoch in the
order of a permutation drawn from `np.random.default_rng([seed, epoch])`, and hands each batch's
examples to a `collate` function (padding, targets) that the method supplies.

Grouping by length (`bucket=True`): each epoch's shuffled order is cut into pools of
`BUCKET_POOL` batches, each pool sorted by length and cut into batches, and the batches shuffled
again: a batch's examples then have similar lengths, so padding to the batch's longest wastes
little compute, while the order stays random (the "bucketing" of Khomenko et al. 2016, and of
torchtext's BucketIterator). Off, every batch is a random sample, as the book's DataLoader
(`shuffle=True, drop_last=True`).

Position is (epoch, batch index): `state_dict()` holds it and `load_state_dict` resumes exactly,
which is what the training loop checkpoints. Iteration is endless (the loop stops at max_steps);
`batches_per_epoch` says how many batches an epoch has.

Not here: what an example is or how it is padded (each method's `collate`), the loop (`train.loop`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from scratchllm.errors import UserError

# Batches per pool when grouping by length: large enough that a pool holds similar lengths, small
# enough that batches of every length range still come up in every part of an epoch.
BUCKET_POOL = 50


class ExampleBatches:
    """Endless shuffled epochs of `collate([examples])` batches of `batch_size` (see the module doc)."""

    def __init__(self, examples: Sequence[Any], batch_size: int, collate: Callable[[list[Any]], Any], *,
                 seed: int = 0, lengths: Sequence[int] | None = None, bucket: bool = False,
                 drop_last: bool = True) -> None:
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        if len(examples) == 0:
            raise UserError("no training examples: the training split is empty")
        if drop_last and len(examples) < batch_size:
            raise UserError(f"the training split has {len(examples)} examples, fewer than one batch of "
                            f"{batch_size}; lower train.batch_size")
        if bucket and lengths is None:
            raise ValueError("bucket=True needs the examples' lengths")
        self.examples, self.collate, self.batch_size = examples, collate, batch_size
        self.lengths = np.asarray(lengths) if lengths is not None else None
        self.seed, self.bucket, self.drop_last = int(seed), bucket, drop_last
        self.epoch, self.index = 0, 0
        self._order: list[np.ndarray] | None = None

    @property
    def batches_per_epoch(self) -> int:
        n = len(self.examples)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The example indices of each batch of `epoch`, in order (a pure function of seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.examples))
        n = self.batches_per_epoch * self.batch_size if self.drop_last else len(order)
        if not self.bucket:
            return [order[i:i + self.batch_size] for i in range(0, n, self.batch_size)]
        order = order[:n]
        batches: list[np.ndarray] = []
        pool = self.batch_size * BUCKET_POOL
        for start in range(0, n, pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]  # similar lengths side by side
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._order is None:
            self._order = self.epoch_batches(self.epoch)
        if self.index >= len(self._order):
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self.epoch_batches(self.epoch)
        idx = self._order[self.index]
        self.index += 1
        return self.collate([self.examples[int(i)] for i in idx])

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "index": self.index, "batch_size": self.batch_size,
                "n_examples": len(self.examples)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key, mine in (("batch_size", self.batch_size), ("n_examples", len(self.examples))):
            if key in state and int(state[key]) != mine:
                raise UserError(f"cannot resume the batches: they were saved with {key}={state[key]}, these "
                                f"have {key}={mine}; resume with the same data and train.batch_size")
        self.seed, self.epoch, self.index = int(state["seed"]), int(state["epoch"]), int(state["index"])
        self._order = None


def fixed_batches(examples: Sequence[Any], batch_size: int, collate: Callable[[list[Any]], Any],
                  limit: int | None = None) -> list[Any]:
    """Examples in their order, cut into collated batches (the last may be short): for evaluation.
    `limit`: at most this many batches (the book's eval_iter)."""
    out = []
    for i in range(0, len(examples), batch_size):
        if limit is not None and len(out) >= limit:
            break
        out.append(collate(list(examples[i:i + batch_size])))
    return out
