"""One run folder, one writer: an exclusive lock held for the life of a run, and picking a new run's folder.

`RunLock.acquire(folder)` takes an exclusive `fcntl.flock` on `<folder>/.lock` and writes the
holder's pid inside; a second process that wants the folder gets `RunBusy`, one line naming that
pid. The lock is the kernel's, so it goes when the holder goes, however it ends: a normal exit, an
error, Ctrl-C, SIGKILL. Within one process the lock is re-entrant (the pretraining job holds it and
its `train.run.Run` shares it). `claim_fresh_folder` picks the folder of a new run while holding
the lock, so two runs started together never choose the same folder, and a folder left by a run
that failed before its first checkpoint is reused rather than blocking its name.

Not here: what a run writes (`train.run`), the checkpoint format (`checkpoint`).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

from scratchllm.checkpoint.pointers import BEST, CHECKPOINTS, LATEST, checkpoints
from scratchllm.errors import UserError
from scratchllm.train.logging import CARD_FILE, METRICS_FILE, PLOT_FILE

LOCK_FILE = ".lock"
RUN_CONFIG_FILE = "run_config.json"
TENSORBOARD = "tensorboard"
# What a run writes; a folder holding only these and no checkpoint is a run that failed early.
RUN_FILES = frozenset({CHECKPOINTS, METRICS_FILE, PLOT_FILE, CARD_FILE, RUN_CONFIG_FILE, TENSORBOARD})


def not_writable(folder: Path, e: OSError) -> UserError:
    """The one error for a run folder that cannot be created or written."""
    return UserError(f"run folder {folder} is not writable ({e.strerror or e}); "
                     f"choose another place with --runs_dir or fix its permissions")


class RunBusy(UserError):
    """Another process holds the run folder's lock (the message names its pid)."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        self.folder, self.pid = folder, pid
        who = f"pid {pid}" if pid else "its pid not yet written"
        super().__init__(f"run folder {folder} is in use by another training run ({who}); wait for it to "
                         f"finish or stop it, or train under another --name")


def _read_pid(fd: int) -> int | None:
    """The pid the holder wrote into the lock file (it writes it just after locking: retry briefly)."""
    for _ in range(20):
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None


class RunLock:
    """An exclusive lock on a run folder for the life of a run; `with RunLock.acquire(folder) as folder:`."""

    _held: ClassVar[dict[str, RunLock]] = {}  # this process's locks by real path (re-entrant)

    def __init__(self, folder: Path, fd: int | None, key: str, created: bool) -> None:
        self.folder, self.fd, self.key, self.created = folder, fd, key, created
        self.count = 1

    @classmethod
    def acquire(cls, folder: str | os.PathLike) -> RunLock:
        """Create `folder` if needed and lock it, or raise RunBusy naming the holder's pid."""
        import fcntl

        folder = Path(folder)
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise not_writable(folder, e) from None
        key = os.path.realpath(folder)
        held = cls._held.get(key)
        if held is not None:
            held.count += 1
            return held
        path = folder / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)  # the umask applies
            except OSError as e:
                raise not_writable(folder, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise RunBusy(folder, pid) from None
            except OSError as e:  # a file system without locks: run unprotected, but say so
                os.close(fd)
                warnings.warn(f"cannot lock run folder {folder} ({e.strerror or e}); two runs started into it "
                              f"at once would mix their files", stacklevel=2)
                lock = cls(folder, None, key, created)
                cls._held[key] = lock
                return lock
            try:  # the file locked is still the one at `path` (an earlier holder may have removed it)
                st, now = os.fstat(fd), os.stat(path)
                if (st.st_ino, st.st_dev) == (now.st_ino, now.st_dev):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
            folder.mkdir(parents=True, exist_ok=True)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        lock = cls(folder, fd, key, created)
        cls._held[key] = lock
        return lock

    def release(self) -> None:
        """Let go (the last holder in this process unlocks; a folder it created and left empty is removed)."""
        self.count -= 1
        if self.count > 0:
            return
        RunLock._held.pop(self.key, None)
        if self.fd is None:
            return
        try:
            only_lock = [p.name for p in self.folder.iterdir()] == [LOCK_FILE]
        except OSError:
            only_lock = False
        try:
            if self.created and only_lock:  # nothing was written: leave nothing behind
                (self.folder / LOCK_FILE).unlink()
                self.folder.rmdir()
            else:
                os.ftruncate(self.fd, 0)  # no stale pid for the next reader
        except OSError:
            pass
        os.close(self.fd)  # closing the file releases the flock
        self.fd = None

    def __enter__(self) -> Path:
        return self.folder

    def __exit__(self, *exc: Any) -> None:
        self.release()


def failed_run_leftovers(folder: Path) -> list[Path] | None:
    """The files of a run that failed before its first checkpoint (reusable), else None.

    None when the folder holds a run (a checkpoint or a pointer) or anything a run does not write.
    """
    if checkpoints(folder) or (folder / LATEST).exists() or (folder / BEST).exists():
        return None
    entries = [p for p in folder.iterdir() if p.name != LOCK_FILE]
    if all(p.name in RUN_FILES or _is_temporary(p) for p in entries):
        return entries
    return None


def _is_temporary(p: Path) -> bool:
    """A file a run writes for a moment: the writability probe, an atomic write's temp file."""
    return p.is_file() and (p.name.startswith(".write-test-") or (p.name.startswith(".") and p.name.endswith(".part")))


def claim_fresh_folder(base: Path) -> RunLock:
    """Lock the folder of a new run: `base`, else base-2, base-3, ... (never another run's folder).

    A folder is taken if nobody holds its lock and it is new, empty, or left by a run that failed
    before its first checkpoint (those leftovers are removed). Checked while holding the lock, so
    two runs started together get two folders.
    """
    folder, k, first_why = base, 1, ""
    while True:
        why = ""
        if folder.exists() and not folder.is_dir():
            why = "is a file"
        else:
            try:
                lock = RunLock.acquire(folder)
            except RunBusy as e:
                why = f"is in use by another run (pid {e.pid})" if e.pid else "is in use by another run"
            else:
                leftovers = failed_run_leftovers(folder)
                if leftovers is not None:
                    if leftovers:
                        print(f"{folder} holds a run that failed before its first checkpoint; starting over in it")
                    for p in leftovers:
                        if p.is_dir() and not p.is_symlink():
                            shutil.rmtree(p)
                        else:
                            p.unlink()
                    if folder != base:
                        hint = " (continue the old one with --resume)" if first_why == "already holds a run" else ""
                        print(f"{base} {first_why}; this one is {folder}{hint}")
                    return lock
                lock.release()
                why = "already holds a run"
        if folder == base:
            first_why = why
        k += 1
        folder = base.with_name(f"{base.name}-{k}")
        if k > 10_000:
            raise UserError(f"{base} {first_why}, and so do {base.name}-2 ... {folder.name}; choose another --name")
