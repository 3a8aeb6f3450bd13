"""A run folder as the training loop sees it: checkpoints, metrics, plot, TensorBoard, in one object.

`Run(folder)` is what `train.loop.train(..., run=...)` writes to; it holds the folder's lock
(`train.lock`) until `close()`, so one folder has one writer. In a job of several processes
(`train.distributed`) rank 0's Run is that writer; the other ranks' (`main=False`) take no lock and
write no metrics or plots, and join in saving and restoring checkpoints, which need every rank.
Without a run the loop trains in memory only (tests, notebooks). Not here: what goes in a checkpoint (`checkpoint`,
`train.checkpoint`) or how metrics are drawn (`train.logging`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from scratchllm.train.checkpoint import Checkpoints
from scratchllm.train.lock import TENSORBOARD, RunLock, not_writable
from scratchllm.train.logging import METRICS_FILE, PLOT_FILE, MetricsLog, TensorBoard, plot_losses, read_metrics


def ensure_writable(folder: Path) -> None:
    """Create `folder` and prove a file can be written there, or raise one clear UserError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise not_writable(folder, e) from None


class Run:
    """Checkpoints + metrics.jsonl + loss.png (+ TensorBoard) of one training run, its folder locked."""

    def __init__(self, folder: str | os.PathLike, *, keep_last: int = 2, tokenizer: Any = None,
                 meta: dict[str, Any] | None = None, tensorboard: bool = False, title: str = "",
                 files: dict[str, Any] | None = None, main: bool = True) -> None:
        self.folder = Path(folder)
        self.main = main
        if main:
            ensure_writable(self.folder)
        self.lock = RunLock.acquire(self.folder) if main else None  # released by close()
        self.checkpoints = Checkpoints(self.folder, keep_last=keep_last)
        self.metrics = MetricsLog(self.folder / METRICS_FILE)
        self.tokenizer = tokenizer
        # extra JSON saved in every checkpoint's state.json (e.g. the run config)
        self.meta = dict(meta or {})
        # more files in every checkpoint: name -> function that writes it (e.g. generation.json)
        self.files = dict(files or {})
        self.title = title or self.folder.name
        try:
            self.tb = TensorBoard(self.folder / TENSORBOARD) if tensorboard and main else None
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        self.metrics.write(record)
        if self.tb is not None:
            self.tb.write(record)

    def plot(self) -> Path | None:
        if not self.main:
            return None
        return plot_losses(read_metrics(self.metrics.path), self.folder / PLOT_FILE, title=self.title)

    def save(self, step: int, model: Any, optimizer: Any, state: dict[str, Any],
             val_loss: float | None = None) -> Path:
        return self.checkpoints.save(step, model, optimizer=optimizer, state={**self.meta, **state},
                                     tokenizer=self.tokenizer, val_loss=val_loss, files=self.files)

    def restore(self, model: Any, optimizer: Any) -> dict[str, Any] | None:
        """Load the newest good checkpoint; drop metrics logged after it. None if there is none."""
        found = self.checkpoints.restore(model, optimizer)
        if found is None:
            return None
        folder, state = found
        if self.main:
            self.metrics.truncate_after(int(state["step"]))
        state["checkpoint"] = str(folder)
        return state

    def close(self) -> None:
        self.metrics.close()
        if self.tb is not None:
            self.tb.close()
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
