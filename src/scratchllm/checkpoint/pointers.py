"""The checkpoints of a run folder: where they live, the `latest` and `best` pointers, the order to try them.

    runs/<name>/   checkpoints/step-0000500/   one folder per save (`checkpoint.folder`)
                   latest                      one line: the newest good checkpoint's name (step-0000500)
                   best                        one line: the name of the one with the lowest validation loss
    runs/latest                                one line: the most recent run folder's name (`checkpoint.load`)

A pointer holds a name, never a path: it must be a plain `step-NNNNNNN` naming a folder inside the
run's `checkpoints/` (a step folder that is a symlink leading elsewhere is refused too). Anything
else, such as an edited `../../../../etc`, is a `CheckpointError` naming the pointer file; it is
never followed. Pointers are replaced atomically (`files.write_atomic`) and only after the folder
they name is complete, so a crash leaves them naming a whole checkpoint.

Not here: what is inside a checkpoint folder (`checkpoint.folder`), when to save and which to keep
(`train.checkpoint`).
"""

from __future__ import annotations

import os
from pathlib import Path

from scratchllm.checkpoint.folder import STEP_RE, CheckpointError
from scratchllm.files import write_atomic

CHECKPOINTS = "checkpoints"
LATEST = "latest"
BEST = "best"
# A pointer is one short line; reading more than this means the file is not a pointer.
MAX_POINTER_BYTES = 256


def step_of(folder: Path) -> int:
    """The step a checkpoint folder was saved at.

    >>> step_of(Path("runs/r/checkpoints/step-0000500"))
    500
    """
    m = STEP_RE.match(folder.name)
    if m is None:
        raise ValueError(f"{folder} is not named step-NNNNNNN")
    return int(m.group(1))


def _inside(folder: Path, parent: Path) -> bool:
    """`folder` is a real folder directly inside `parent` (after following symlinks)."""
    try:
        return folder.is_dir() and folder.resolve().parent == parent.resolve()
    except OSError:
        return False


def checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders of a run, newest (highest step) first."""
    d = Path(run_dir) / CHECKPOINTS
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if STEP_RE.match(p.name) and _inside(p, d)]
    return sorted(found, key=step_of, reverse=True)


def read_name(pointer: Path) -> str | None:
    """The one name a pointer file holds (None if there is no such file); errors name the file."""
    if not pointer.exists() and not pointer.is_symlink():
        return None
    try:
        with open(pointer, "rb") as f:
            raw = f.read(MAX_POINTER_BYTES + 1)
        name = raw.decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        what = "is not text" if isinstance(e, UnicodeDecodeError) else f"cannot be read ({e.strerror or e})"
        raise CheckpointError(f"pointer file {pointer} {what}; fix or delete it") from None
    if len(raw) > MAX_POINTER_BYTES or not name:
        raise CheckpointError(f"pointer file {pointer} does not hold one name (it is "
                              f"{'empty' if not name else 'too long'}); fix or delete it")
    return name


def read_pointer(run_dir: str | os.PathLike, name: str = LATEST) -> Path | None:
    """The checkpoint folder the run's `name` pointer (latest or best) names, or None if it has none.

    Raises CheckpointError naming the pointer file when it names anything but an existing
    step-NNNNNNN folder inside the run's checkpoints/.
    """
    run_dir = Path(run_dir)
    pointer = run_dir / name
    target = read_name(pointer)
    if target is None:
        return None
    where = run_dir / CHECKPOINTS
    if not STEP_RE.match(target):
        raise CheckpointError(f"pointer file {pointer} holds {target[:60]!r}, not the name of a checkpoint "
                              f"folder in {where} (step-NNNNNNN); fix or delete it")
    folder = where / target
    if not _inside(folder, where):
        raise CheckpointError(f"pointer file {pointer} names {target}, which is not a checkpoint folder in "
                              f"{where}; fix or delete it")
    return folder


def write_pointer(run_dir: str | os.PathLike, name: str, folder: Path) -> None:
    """Point the run's `name` pointer (latest or best) at checkpoint `folder`, atomically."""
    write_atomic(Path(run_dir) / name, folder.name + "\n")


def candidates(run_dir: str | os.PathLike) -> list[Path]:
    """The order to try a run's checkpoints: `latest` first, then older ones newest first.

    Checkpoints newer than `latest` (left by a save that crashed before moving the pointer, or by
    an attempt past the point a run was resumed from) are not trusted and not listed.
    """
    latest = read_pointer(run_dir, LATEST)
    older = [p for p in checkpoints(run_dir) if latest is None or step_of(p) < step_of(latest)]
    return ([latest] if latest is not None else []) + older
