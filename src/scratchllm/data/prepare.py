"""The text pipeline, start to finish: fetch -> read -> clean -> train tokenizer -> write shards.

`prepare(config, out_dir)` leaves in `out_dir`: `tokenizer.scratchllm.json`, `train.bin`, `val.bin`,
`clean_report.json` and `meta.json` (written last; it holds a hash of the config and of the input,
so a later call with the same config finds the finished folder and reuses it instead of redoing
the work). It prints the corpus statistics and the time each stage took. This is what
`scratchllm data prepare` runs and what `scratchllm train` calls before training. Preparations of one
folder take turns, so threads or processes preparing it at once (a sweep's parallel trials, two commands
started together) prepare it once and the others reuse it; a distributed job's ranks wait for rank 0's
(`train.pretrain`). Between processes the turns are an flock on a file in the system's temporary folder,
named by a hash of the folder's path: never a file beside the folder, so a preparation that fails on bad
input leaves nothing behind there.

Not here: the stages themselves (`sources`, `clean`, the tokenizer package, `shards`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.config.data import DataConfig
from scratchllm.data import shards
from scratchllm.data.clean import clean_documents
from scratchllm.data.sources import DATASETS, fetch, is_path, load_corpus
from scratchllm.data.stats import format_stats
from scratchllm.errors import UserError

# Bump when a change in this pipeline changes its output, so old folders are rebuilt.
PREPARE_VERSION = 1
CLEAN_REPORT = "clean_report.json"
# Settings that do not change the prepared data, left out of its hash.
NOT_HASHED = ("data_dir", "workers", "offline")


@dataclass
class Prepared:
    """A finished preparation: its folder, tokenizer, token memmaps and meta.json contents."""

    dir: Path
    tokenizer: Any
    train: np.ndarray
    val: np.ndarray
    meta: dict[str, Any]
    reused: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def input_fingerprint(dataset: str) -> str:
    """What identifies the input: the registry checksum, or the size and mtime of local files."""
    if not is_path(dataset) and dataset in DATASETS:
        return DATASETS[dataset].sha256
    p = Path(dataset).expanduser()
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def config_hash(config: DataConfig) -> str:
    """A hash of everything that decides the prepared data: settings, input, pipeline version."""
    d = {k: v for k, v in config.to_dict().items() if k not in NOT_HASHED}
    inputs = [input_fingerprint(config.dataset)]
    if config.tokenizer.path:
        inputs.append(input_fingerprint(config.tokenizer.path))
    blob = json.dumps({"version": PREPARE_VERSION, "config": d, "input": inputs}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_tokenizer(tok_config: Any, texts: list[str], data_dir: str | os.PathLike | None = None,
                    progress: bool = True):
    """The tokenizer `tok_config` describes: GPT-2's (fetched here), a saved file, or trained on `texts`."""
    import scratchllm.tokenizer as tk

    if tok_config.kind == "gpt2" and not tok_config.path:
        from scratchllm.data.sources import gpt2_tokenizer

        return gpt2_tokenizer(data_dir)
    return tk.build(tok_config, texts, data_dir=data_dir, progress=progress)


def load_prepared(out_dir: str | os.PathLike, meta: dict[str, Any] | None = None) -> Prepared:
    """Open a finished preparation folder (tokenizer, memmaps, meta)."""
    from scratchllm.tokenizer import load

    out = Path(out_dir)
    meta = meta or shards.read_meta(out)
    tokenizer = load(out / meta["tokenizer"]["file"])
    return Prepared(out, tokenizer, shards.open_split(out, "train"), shards.open_split(out, "val"), meta)


def _reusable(out: Path, digest: str) -> Prepared | None:
    try:
        meta = shards.read_meta(out)
        if meta.get("prepare", {}).get("config_hash") != digest:
            return None
        return load_prepared(out, meta)
    except UserError:
        return None


_TURNS: dict[str, threading.Lock] = {}  # a lock per prepared folder (its resolved path)
_TURNS_GUARD = threading.Lock()


@contextmanager
def _turn(out: Path):
    """Hold `out`'s turn: first this process's lock for it (threads), then an flock that other processes
    preparing it wait on (where the platform has flock). The lock file lives in the temporary folder and is
    left there, empty, for the next turn (removing it could let two processes lock two different files)."""
    key = str(out.resolve())
    with _TURNS_GUARD:
        lock = _TURNS.setdefault(key, threading.Lock())
    with lock:
        try:
            import fcntl
        except ImportError:  # (not on Windows: there the turns are this process's only)
            yield
            return
        folder = Path(tempfile.gettempdir()) / f"scratchllm-locks-{os.getuid()}"  # (a user's own)
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            f = open(folder / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".lock"), "a+b")
        except OSError:  # no writable temporary folder: the turns are this process's only
            yield
            return
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)  # (released when the file closes)
            yield


def prepare(config: DataConfig, out_dir: str | os.PathLike, progress: bool = True) -> Prepared:
    """Fetch, clean, train the tokenizer and write shards into `out_dir`; reuse it if already done (by this call's
    turn: another preparing the same folder at once finishes first)."""
    out = Path(out_dir)
    digest = config_hash(config)
    say = print if progress else (lambda *a, **k: None)
    done = _reusable(out, digest)
    if done is None:
        with _turn(out):
            done = _reusable(out, digest)
            if done is None:
                return _prepare_into(out, config, digest, say, progress)
    done.reused = True
    done.timings = done.meta["prepare"].get("timings", {})
    say(f"reusing the prepared data in {out} (same config, hash {digest})")
    say(summary(done.meta))
    return done


def _prepare_into(out: Path, config: DataConfig, digest: str, say, progress: bool) -> Prepared:
    """`prepare`'s work, in its turn: every stage, the shards and meta.json (last) written into `out`."""
    timings: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        timings[name] = round(now - t, 3)
        t = now

    say(f"preparing {config.dataset} in {out}")
    if not is_path(config.dataset):
        fetch(config.dataset, config.data_dir, offline=config.offline, progress=progress)
    lap("fetch")
    docs = load_corpus(config.dataset, config.data_dir, config.text_field, separator=config.separator,
                       errors=config.errors, offline=config.offline, progress=progress)
    lap("read")
    raw = {"documents": len(docs), "bytes": sum(len(d.text.encode("utf-8")) for d in docs)}
    texts, report = clean_documents(docs, nfc=config.nfc, strip_gutenberg=config.strip_gutenberg,
                                    collapse_whitespace=config.collapse_whitespace, dedup=config.dedup,
                                    near_dedup=config.near_dedup, near_threshold=config.near_threshold,
                                    shingle=config.shingle, shingle_size=config.shingle_size,
                                    num_perm=config.num_perm)
    if not texts:
        raise UserError(f"cleaning left no text in {config.dataset} ({report.documents_in} documents in)")
    lap("clean")
    say(report.summary())
    tokenizer = train_tokenizer(config.tokenizer, texts, config.data_dir, progress)
    lap("tokenizer")
    from scratchllm.files import write_json_atomic

    created = not out.exists()  # a folder this call makes is removed again if writing fails
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / shards.META_FILE).unlink(missing_ok=True)
        report.save(out / CLEAN_REPORT)
        meta = shards.write_shards(texts, tokenizer, out, config.val_fraction, config.split_by,
                                   workers=config.workers, seed=config.split_seed, progress=progress)
        lap("shards")
        meta["prepare"] = {"config_hash": digest, "config": config.to_dict(), "raw": raw, "timings": timings,
                           "clean": {k: v for k, v in report.to_dict().items() if not isinstance(v, (list, dict))}}
        write_json_atomic(out / shards.META_FILE, meta)  # last: a folder without it is never reused
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    prepared = load_prepared(out, meta)
    prepared.timings = timings
    say(summary(meta))
    return prepared


def summary(meta: dict[str, Any]) -> str:
    """The statistics block printed after preparing."""
    p = meta.get("prepare", {})
    tok = meta["tokenizer"]
    stats = {
        "dataset": p.get("config", {}).get("dataset", "?"),
        "raw documents": p.get("raw", {}).get("documents", meta["documents"]["total"]),
        "raw bytes": p.get("raw", {}).get("bytes", meta["bytes"]),
        "clean documents": meta["documents"]["total"],
        "clean bytes": meta["bytes"],
        "tokenizer": f"{tok['kind']}, {tok['vocab_size']:,} tokens",
        "train tokens": meta["tokens"]["train"],
        "val tokens": meta["tokens"]["val"],
        "tokens per byte": round(meta["tokens"]["total"] / max(1, meta["bytes"]), 4),
        "split": f"{meta['split']['by']}, val fraction {meta['split']['val_fraction']}",
        "dtype": meta["dtype"],
    }
    for stage, secs in p.get("timings", {}).items():
        stats[f"time {stage}"] = f"{secs:.2f} s"
    return format_stats(stats)
