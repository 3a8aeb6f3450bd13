"""Writing files so that no work is ever half-written: temp file beside the target, fsync, rename.

A reader sees either the old file or the new one, never a torn mix, even if the process is killed
or the disk fills up mid-write (the temp file is removed and the error raised). Used by tokenizers,
data shards and downloads, checkpoints and logs. Also where scratchllm keeps files it can make
again (`cache_dir`: downloads, compiled kernels), and the check that a data folder the user named
exists (`check_data_dir`). Not here: what goes into the files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV = "SCRATCHLLM_CACHE_DIR"


def cache_dir() -> Path:
    """The cache folder: $SCRATCHLLM_CACHE_DIR, else $XDG_CACHE_HOME/scratchllm, else ~/.cache/scratchllm."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "scratchllm"


def check_data_dir(data_dir: str | os.PathLike) -> Path:
    """An explicit data folder (`--data-dir`) must exist: a typo is an error, never silently ignored."""
    from scratchllm.errors import UserError

    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise UserError(f"data folder {folder} (--data-dir) does not exist or is not a folder; "
                        f"give an existing folder or leave it out")
    return folder


def fsync_dir(path: Path) -> None:
    """Make a rename inside folder `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_file(path: Path) -> tuple[int, str]:
    """(fd, name) of a new temp file beside `path`, with the permissions a plainly created file gets.

    `tempfile.mkstemp` makes files readable by their owner only (0600), whatever the umask; a file
    renamed from it into place keeps that. Here it gets 0666 minus the umask, as `open(path, "w")` would.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd, tmp


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (bytes, or text as UTF-8) to `path` atomically; returns the path.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> write_atomic(p, "hi").read_text()
    'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = None) -> Path:
    """`write_atomic` of `obj` as JSON (UTF-8, non-ASCII kept)."""
    return write_atomic(path, json.dumps(obj, ensure_ascii=False, indent=indent))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write a matplotlib figure as a PNG atomically (a temporary file beside it, then a rename: a
    reader never sees half a picture) and close it."""
    import matplotlib.pyplot as plt

    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    os.replace(tmp, p)
    return p
