"""Making tokenizers by name: `train(kind, texts, vocab_size, **options)`, `gpt2(...)`, `build(config, texts)`.

What it is not: the algorithms (char.py, words.py, bpe.py, wordpiece.py). This layer cannot import
scratchllm.data, so GPT-2's files are found here only in an explicit folder or $SCRATCHLLM_DATA_DIR;
the data layer fetches them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError
from scratchllm.tokenizer.base import ENDOFTEXT, Tokenizer

GPT2_URLS = {
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/encoder.json",
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/vocab.bpe",
}
# vocab_size when none is given, for the kinds that need one (see TokenizerConfig)
DEFAULT_VOCAB = {"bpe": 4096, "wordpiece": 4096}


def train(kind: str, texts: Iterable[str], vocab_size: int | None = None, **options: Any) -> Tokenizer:
    """Train a tokenizer of `kind` (char | words | bpe | wordpiece) on documents `texts`.

    Options: bpe: pattern ("gpt2", "gpt4" or a regex), special_tokens (default ["<|endoftext|>"]),
    min_frequency, progress; wordpiece: special_tokens, lowercase, progress; char/words: special_tokens.

    >>> train("char", ["abca"]).vocab_size  # a, b, c
    3
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if vocab_size is not None and (isinstance(vocab_size, bool) or vocab_size <= 0):
        raise UserError(f"vocab_size must be a positive number of tokens, got {vocab_size} "
                        f"(leave it unset for the {kind} default)")
    if not any(texts):
        raise UserError(f"cannot train a {kind} tokenizer on empty text")
    opts = dict(options)
    if kind == "char":
        from scratchllm.tokenizer.char import CharTokenizer

        _only(kind, opts, {"special_tokens"})
        text = "".join(texts)
        tok = CharTokenizer.train(text, special_tokens=opts.get("special_tokens", ()))
        if vocab_size is not None and vocab_size != tok.vocab_size:
            raise UserError(f"a char tokenizer's vocab_size is the number of distinct characters "
                            f"({tok.vocab_size} here); leave vocab_size unset")
        return tok
    if kind == "words":
        from scratchllm.tokenizer.words import WordTokenizer

        _only(kind, opts, {"special_tokens"})
        return WordTokenizer.train(texts, vocab_size, **opts)
    if kind == "bpe":
        from scratchllm.tokenizer.bpe import BPETokenizer

        _only(kind, opts, {"pattern", "special_tokens", "min_frequency", "progress", "engine"})
        opts.setdefault("special_tokens", (ENDOFTEXT,))
        return BPETokenizer.train(texts, vocab_size or DEFAULT_VOCAB["bpe"], **opts)
    if kind == "wordpiece":
        from scratchllm.tokenizer.wordpiece import WordPieceTokenizer

        _only(kind, opts, {"special_tokens", "lowercase", "progress"})
        return WordPieceTokenizer.train(texts, vocab_size or DEFAULT_VOCAB["wordpiece"], **opts)
    raise UserError(f"cannot train a tokenizer of kind {kind!r}; kinds: char, words, bpe, wordpiece")


def _only(kind: str, opts: dict[str, Any], known: set[str]) -> None:
    extra = sorted(set(opts) - known)
    if extra:
        raise UserError(f"option {extra[0]!r} does not apply to {kind} tokenizers; "
                        f"they take: {', '.join(sorted(known))}")


def gpt2_files(data_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(encoder.json, vocab.bpe) already on disk: in `data_dir`/gpt2 (or `data_dir` itself), then
    $SCRATCHLLM_DATA_DIR/gpt2, then the cache (where `scratchllm data get gpt2` puts them); a clear error
    if absent. Never downloads (that is `scratchllm.data.sources.gpt2_tokenizer`)."""
    from scratchllm.files import cache_dir, check_data_dir

    if data_dir is not None:
        check_data_dir(data_dir)
    folders = [Path(f) for f in (data_dir, os.environ.get("SCRATCHLLM_DATA_DIR")) if f]
    for cand in [c for d in folders for c in (d / "gpt2", d)] + [cache_dir() / "gpt2"]:
        if (cand / "encoder.json").is_file() and (cand / "vocab.bpe").is_file():
            return cand / "encoder.json", cand / "vocab.bpe"
    where = ", ".join(str(d / "gpt2") for d in folders) or "no data folder given"
    raise UserError(f"GPT-2's tokenizer files gpt2/encoder.json and gpt2/vocab.bpe were not found ({where}); "
                    f"run `scratchllm data get gpt2`, or download {GPT2_URLS['encoder.json']} and "
                    f"{GPT2_URLS['vocab.bpe']} into <folder>/gpt2/ and pass --data-dir <folder> or set "
                    f"SCRATCHLLM_DATA_DIR")


def gpt2(data_dir: str | os.PathLike | None = None, engine: str = "auto"):
    """GPT-2's tokenizer (50257 ids) from encoder.json + vocab.bpe found by `gpt2_files`."""
    from scratchllm.tokenizer.bpe import BPETokenizer

    encoder_json, vocab_bpe = gpt2_files(data_dir)
    return BPETokenizer.from_gpt2_files(encoder_json, vocab_bpe, engine=engine)


def build(config, texts: Iterable[str] = (), *, data_dir: str | os.PathLike | None = None,
          progress: bool = False) -> Tokenizer:
    """The tokenizer a `TokenizerConfig` describes: loaded (config.path), GPT-2's, or trained on `texts`."""
    from scratchllm.tokenizer.base import load

    if config.path:
        return load(config.path)
    if config.kind == "gpt2":
        return gpt2(data_dir)
    opts: dict[str, Any] = {}
    specials = tuple(config.special_tokens)
    if config.kind == "bpe":
        opts = {"pattern": config.pattern, "special_tokens": specials, "min_frequency": config.min_frequency,
                "progress": progress}
    elif config.kind == "wordpiece":
        from scratchllm.tokenizer.wordpiece import SPECIAL_TOKENS

        opts = {"lowercase": config.lowercase, "progress": progress,
                "special_tokens": SPECIAL_TOKENS if specials == (ENDOFTEXT,) else specials}
    elif config.kind == "words":
        from scratchllm.tokenizer.words import UNK

        opts = {"special_tokens": specials + ((UNK,) if UNK not in specials else ())}
    else:
        opts = {"special_tokens": specials}
    return train(config.kind, texts, config.vocab_size, **opts)
