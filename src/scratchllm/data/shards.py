"""Token shards: a corpus tokenised once into flat binary files that training reads as memmaps.

`write_shards(docs, tokenizer, out_dir)` writes `train.bin` and `val.bin` (the token ids of every
document, each followed by the tokenizer's `<|endoftext|>` when it has one, as nanoGPT's
openwebtext/prepare.py does), the tokenizer (`tokenizer.scratchllm.json`) and `meta.json` (dtype,
counts, split). Ids are uint16 when the vocabulary fits in 16 bits, else uint32. Documents are
tokenised by a pool of processes that rebuild the tokenizer from its saved dict. Every file is
written to a temp name and renamed; `meta.json` comes last, so a folder with a meta.json is whole.

The validation split is either a seeded choice of `val_fraction` of the documents, or (nanoGPT's
way, needed for a single-document corpus) the last `val_fraction` of the token stream.

Not here: reading batches from the shards (`datasets`), the full pipeline (`prepare`).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.errors import UserError
from scratchllm.files import temp_file, write_json_atomic
from scratchllm.tokenizer.base import FORMAT, TOKENIZER_FILE, VERSION

META_FILE = "meta.json"
SHARDS_FORMAT = "scratchllm.shards"
SPLITS = ("train", "val")
# Below this many characters the corpus is tokenised in-process: starting workers costs more.
PARALLEL_MIN_CHARS = 2_000_000


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding ids 0 .. vocab_size - 1.

    >>> dtype_for(50257).name, dtype_for(65536).name, dtype_for(65537).name
    ('uint16', 'uint16', 'uint32')
    """
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def val_documents(n_docs: int, val_fraction: float, seed: int = 0) -> np.ndarray:
    """A boolean mask choosing round(n_docs * val_fraction) validation documents (at least one
    when the fraction is positive), the same for the same seed.

    >>> val_documents(10, 0.2, seed=0).sum()
    np.int64(2)
    """
    mask = np.zeros(n_docs, dtype=bool)
    if val_fraction <= 0 or n_docs == 0:
        return mask
    k = min(n_docs - 1, max(1, round(n_docs * val_fraction)))
    mask[np.random.default_rng(seed).choice(n_docs, size=k, replace=False)] = True
    return mask


def resolve_split(split_by: str, n_docs: int, val_fraction: float) -> str:
    """The split to use; "auto" is by document when there are 10+ documents and the fraction picks one.

    >>> resolve_split("auto", 42, 0.1), resolve_split("auto", 1, 0.1)
    ('document', 'tokens')
    """
    if split_by not in ("auto", "document", "tokens"):
        raise UserError(f"split_by must be auto, document or tokens, got {split_by!r}")
    if split_by == "auto":
        return "document" if val_fraction <= 0 or (n_docs >= 10 and n_docs * val_fraction >= 1) else "tokens"
    if split_by == "document" and val_fraction > 0 and n_docs < 2:
        raise UserError(f"cannot split {n_docs} document by document into train and validation; "
                        f"use split_by tokens")
    return split_by


# --- tokenising in worker processes ------------------------------------------------------
_worker_tokenizer = None


def _init_worker(tokenizer_dict: dict) -> None:
    global _worker_tokenizer
    from scratchllm.tokenizer.base import from_dict

    _worker_tokenizer = from_dict(tokenizer_dict)


def _encode_doc(args: tuple[int, str, str]) -> np.ndarray:
    index, text, dtype = args
    tok = _worker_tokenizer
    assert tok is not None
    try:
        ids = tok.encode(text)
    except UserError as e:
        hint = ""
        if any(s in text for s in tok.special_tokens):
            hint = " (if the corpus uses it as a document separator, read it with --separator '<|endoftext|>')"
        raise UserError(f"document {index}: {e}{hint}") from None
    if tok.eot_id is not None:
        ids.append(tok.eot_id)
    return np.asarray(ids, dtype=dtype)


def tokenizer_dict(tokenizer) -> dict:
    """The tokenizer's saved form (what `Tokenizer.save` writes), used to rebuild it in workers."""
    return {"format": FORMAT, "version": VERSION, "kind": tokenizer.kind, **tokenizer.to_dict()}


def encode_documents(docs: Sequence[str], tokenizer, *, workers: int = 0, progress: bool = True):
    """Yield each document's ids (plus <|endoftext|>) as a numpy array, in order, using `workers` processes.

    workers=0 picks min(cpu count, 8) for a large corpus and 1 (in-process) for a small one.
    """
    from tqdm.auto import tqdm

    dtype = dtype_for(tokenizer.vocab_size).name
    total_chars = sum(len(d) for d in docs)
    if workers <= 0:
        workers = min(os.cpu_count() or 1, 8) if total_chars >= PARALLEL_MIN_CHARS else 1
    workers = min(workers, max(1, len(docs)))
    bar = tqdm(total=total_chars, unit="char", unit_scale=True, desc="tokenizing", disable=not progress,
               leave=False)
    with bar:
        if workers == 1:
            global _worker_tokenizer
            saved, _worker_tokenizer = _worker_tokenizer, tokenizer
            try:
                for i, d in enumerate(docs):
                    yield _encode_doc((i, d, dtype))
                    bar.update(len(d))
            finally:
                _worker_tokenizer = saved
            return
        # fork where there is one (Linux): workers start at once and need no importable __main__ (a
        # notebook, `python -`); they only tokenise, never touch torch. Elsewhere: spawn.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() and sys.platform != "darwin" else "spawn")
        chunksize = max(1, len(docs) // (workers * 16))
        with ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_dict(tokenizer),)) as pool:
            for d, ids in zip(docs, pool.imap(_encode_doc, ((i, d, dtype) for i, d in enumerate(docs)),
                                                          chunksize=chunksize)):
                yield ids
                bar.update(len(d))


class _AtomicBin:
    """A binary file written to a temp name in `folder`, renamed to `name` on commit."""

    def __init__(self, folder: Path, name: str) -> None:
        self.path = folder / name
        fd, self.tmp = temp_file(self.path)
        self.f = os.fdopen(fd, "wb")
        self.count = 0

    def write(self, arr: np.ndarray) -> None:
        self.f.write(arr.tobytes())
        self.count += len(arr)

    def commit(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if not self.f.closed:
            self.f.close()
        Path(self.tmp).unlink(missing_ok=True)


def write_shards(docs: Sequence[str], tokenizer, out_dir: str | os.PathLike, val_fraction: float = 0.1,
                 split_by: str = "auto", *, workers: int = 0, seed: int = 0, progress: bool = True,
                 extra_meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Tokenise `docs` into `out_dir`/{train,val}.bin + tokenizer + meta.json; returns the meta dict."""
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    docs = list(docs)
    if not docs:
        raise UserError("no documents to tokenise")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)  # the folder is unfinished until meta.json is back
    split = resolve_split(split_by, len(docs), val_fraction)
    dtype = dtype_for(tokenizer.vocab_size)
    is_val = val_documents(len(docs), val_fraction, seed) if split == "document" else np.zeros(len(docs), bool)
    files = {s: _AtomicBin(out, f"{s}.bin") for s in SPLITS}
    n_docs = {"train": 0, "val": 0}
    try:
        for i, ids in enumerate(encode_documents(docs, tokenizer, workers=workers, progress=progress)):
            s = "val" if is_val[i] else "train"
            files[s].write(ids)
            n_docs[s] += 1
        if split == "tokens":
            _split_tail(files, val_fraction, dtype)
            n_docs = {"train": None, "val": None}  # a document may straddle the boundary
        for f in files.values():
            f.commit()
    except BaseException:
        for f in files.values():
            f.discard()
        raise
    tokens = {s: files[s].count for s in SPLITS}
    tokenizer.save(out / TOKENIZER_FILE)
    meta = {
        "format": SHARDS_FORMAT, "version": 1,
        "dtype": dtype.name,
        "tokenizer": {"file": TOKENIZER_FILE, "kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size,
                      "eot_id": tokenizer.eot_id},
        "split": {"by": split, "val_fraction": val_fraction, "seed": seed},
        "documents": {"total": len(docs), **n_docs},
        "tokens": {"total": tokens["train"] + tokens["val"], **tokens},
        "characters": sum(len(d) for d in docs),
        "bytes": sum(len(d.encode("utf-8")) for d in docs),
        **(extra_meta or {}),
    }
    write_json_atomic(out / META_FILE, meta)
    return meta


def _split_tail(files: dict[str, _AtomicBin], val_fraction: float, dtype: np.dtype) -> None:
    """Move the last `val_fraction` of the tokens written to train into val (nanoGPT's split)."""
    train = files["train"]
    train.f.flush()
    n = train.count
    n_val = min(n - 1, math.ceil(n * val_fraction)) if val_fraction > 0 else 0
    if n_val <= 0:
        return
    cut = n - n_val
    data = np.memmap(train.tmp, dtype=dtype, mode="r", shape=(n,))
    files["val"].write(np.array(data[cut:]))
    del data
    train.f.truncate(cut * dtype.itemsize)
    train.f.seek(0, os.SEEK_END)
    train.count = cut


def read_meta(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The meta.json of a finished shard folder (a clear error when there is none)."""
    p = Path(out_dir) / META_FILE
    if not p.is_file():
        raise UserError(f"{Path(out_dir)} holds no finished token shards ({META_FILE} missing); "
                        f"run `scratchllm data prepare --out {out_dir}`")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p} is not valid JSON ({e}); run `scratchllm data prepare` again") from None
    if not isinstance(meta, dict) or meta.get("format") != SHARDS_FORMAT:
        raise UserError(f"{p} is not a scratchllm shards meta file")
    try:  # the fields readers use, so that an edited or damaged file is one clear line
        np.dtype(meta["dtype"])
        int(meta["tokens"]["train"]), int(meta["tokens"]["val"])
        Path(meta["tokenizer"]["file"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{p} is damaged ({type(e).__name__}: {e}); run `scratchllm data prepare` again") from None
    return meta


def open_split(out_dir: str | os.PathLike, split: str = "train") -> np.ndarray:
    """The token ids of split "train" or "val" as a read-only memmap (an empty array if the split is empty)."""
    if split not in SPLITS:
        raise UserError(f"split must be train or val, got {split!r}")
    meta = read_meta(out_dir)
    dtype = np.dtype(meta["dtype"])
    n = int(meta["tokens"][split])
    p = Path(out_dir) / f"{split}.bin"
    if not p.is_file() or p.stat().st_size != n * dtype.itemsize:
        raise UserError(f"{p} is missing or has the wrong size for {n} tokens; run `scratchllm data prepare` again")
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(p, dtype=dtype, mode="r", shape=(n,))
