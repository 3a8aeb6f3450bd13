"""The one interface every tokenizer shares, and the helpers they have in common.

A tokenizer turns text into a list of integer ids and back: `encode(text, allowed_special=...)`,
`decode(ids)`, `save(path)`, and `scratchllm.tokenizer.load(path)` for any kind. Special tokens
such as `<|endoftext|>` found in user text are refused unless allowed, as tiktoken does, so a
document cannot forge a document boundary.

Saved tokenizers are one JSON file in our own versioned format: `{"format": FORMAT,
"version": 1, "kind": ..., ...}`. Not here: the algorithms (char, words, bpe, wordpiece modules).
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from scratchllm.errors import UserError
from scratchllm.files import write_json_atomic

FORMAT = "scratchllm.tokenizer"
VERSION = 1
# File name a tokenizer gets inside a run or checkpoint folder.
TOKENIZER_FILE = "tokenizer.scratchllm.json"
ENDOFTEXT = "<|endoftext|>"

AllowedSpecial = str | Iterable[str]  # "all", "none", or a set of special-token strings


def resolve_allowed(allowed_special: AllowedSpecial, special_tokens: dict[str, int]) -> set[str]:
    """Normalise the `allowed_special` argument to a set of special-token strings.

    >>> sorted(resolve_allowed("all", {"<|endoftext|>": 5}))
    ['<|endoftext|>']
    >>> resolve_allowed("none", {"<|endoftext|>": 5})
    set()
    """
    if allowed_special == "all":
        return set(special_tokens)
    if allowed_special == "none" or allowed_special is None:
        return set()
    if isinstance(allowed_special, str):
        allowed_special = {allowed_special}
    allowed = set(allowed_special)
    unknown = allowed - set(special_tokens)
    if unknown:
        raise UserError(f"allowed_special names {sorted(unknown)[0]!r}, which is not a special token here; "
                        f"special tokens: {', '.join(special_tokens) or 'none'}")
    return allowed


def split_special(text: str, special_tokens: dict[str, int], allowed: set[str]) -> list[tuple[str, bool]]:
    """Split `text` around allowed special tokens; refuse disallowed ones that appear in it.

    Returns (piece, is_special) pairs in order.

    >>> split_special("a<|endoftext|>b", {"<|endoftext|>": 9}, {"<|endoftext|>"})
    [('a', False), ('<|endoftext|>', True), ('b', False)]
    """
    for tok in special_tokens:
        if tok not in allowed and tok in text:
            raise UserError(
                f"the text contains the special token {tok!r} at character {text.index(tok)}; "
                f"pass allowed_special={{{tok!r}}} (or --allow-special) to encode it as one token, "
                f"or remove it from the text"
            )
    if not allowed:
        return [(text, False)] if text else []
    out: list[tuple[str, bool]] = []
    i = 0
    # longest match first, so a special token that is a prefix of another cannot win
    ordered = sorted(allowed, key=len, reverse=True)
    start = 0
    while i < len(text):
        for tok in ordered:
            if text.startswith(tok, i):
                if start < i:
                    out.append((text[start:i], False))
                out.append((tok, True))
                i += len(tok)
                start = i
                break
        else:
            i += 1
    if start < len(text):
        out.append((text[start:], False))
    return out


class Tokenizer(ABC):
    """Base class: text <-> ids. Subclasses set `kind` and implement the abstract methods."""

    kind: ClassVar[str] = ""

    def __init__(self, special_tokens: dict[str, int] | None = None) -> None:
        self.special_tokens: dict[str, int] = dict(special_tokens or {})

    # --- what every tokenizer implements -------------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (ids are 0 .. vocab_size - 1)."""

    @abstractmethod
    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Text to ids; special tokens in `text` are an error unless in `allowed_special`."""

    @abstractmethod
    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """Ids to UTF-8 bytes (byte-level tokenizers may return bytes that are not valid UTF-8
        on their own, e.g. half an emoji; streaming uses this)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer (without the format header)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        """Inverse of `to_dict`."""

    # --- shared behaviour ----------------------------------------------------------------
    def encode_batch(self, texts: Sequence[str], allowed_special: AllowedSpecial = "none",
                     num_threads: int = 1) -> list[list[int]]:
        """Encode many texts (BPE's fast path runs them in `num_threads` native threads)."""
        return [self.encode(t, allowed_special) for t in texts]

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        """Ids to text; bytes that are not valid UTF-8 become U+FFFD unless errors="strict"."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    @property
    def eot_id(self) -> int | None:
        """Id of `<|endoftext|>` if this tokenizer has it (used as document separator and EOS)."""
        return self.special_tokens.get(ENDOFTEXT)

    def check_ids(self, ids: Sequence[int]) -> None:
        n = self.vocab_size
        for i in ids:
            if not 0 <= int(i) < n:
                raise UserError(f"token id {i} is outside this tokenizer's vocabulary (0..{n - 1})")

    def save(self, path: str | os.PathLike) -> Path:
        """Write to `path` (a file, or a folder that gets TOKENIZER_FILE) atomically."""
        p = Path(path)
        if p.is_dir():
            p = p / TOKENIZER_FILE
        data = {"format": FORMAT, "version": VERSION, "kind": self.kind, **self.to_dict()}
        write_json_atomic(p, data)
        return p

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


# kind -> "module:Class"; imported on demand so loading one kind does not import the others.
KINDS = {
    "char": "scratchllm.tokenizer.char:CharTokenizer",
    "words": "scratchllm.tokenizer.words:WordTokenizer",
    "bpe": "scratchllm.tokenizer.bpe:BPETokenizer",
    "wordpiece": "scratchllm.tokenizer.wordpiece:WordPieceTokenizer",
}


def tokenizer_class(kind: str) -> type[Tokenizer]:
    import importlib

    if kind not in KINDS:
        raise UserError(f"unknown tokenizer kind {kind!r}; known kinds: {', '.join(KINDS)}")
    module, cls = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), cls)


def from_dict(d: dict[str, Any], source: str = "tokenizer file") -> Tokenizer:
    """Rebuild any tokenizer from its saved dict (checks format, version and shape); `source` names it."""
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise UserError(f"{source} is not a scratchllm tokenizer file (no 'format': 'scratchllm.tokenizer' header)")
    version = d.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{source}: 'version' must be the integer {VERSION}, got {version!r} "
                        f"({type(version).__name__})")
    if version != VERSION:
        raise UserError(f"{source} has version {version}; this scratchllm reads version {VERSION}")
    kind = d.get("kind", "")
    cls = tokenizer_class(kind if isinstance(kind, str) else repr(kind))
    body = {k: v for k, v in d.items() if k not in ("format", "version", "kind")}
    try:
        return cls.from_dict(body)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        # valid JSON with the header but not the body a `kind` tokenizer saves (edited or damaged)
        raise UserError(f"{source} has a {kind} tokenizer header but the wrong content "
                        f"({type(e).__name__}: {e}); save the tokenizer again") from None


def load(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved by `Tokenizer.save` (a file, or a folder holding TOKENIZER_FILE)."""
    p = Path(path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
    return from_dict(read_json(p), f"tokenizer file {p}")


def read_json(path: Path) -> Any:
    """A tokenizer file's JSON, or one clear UserError: missing, not JSON, not UTF-8."""
    if not path.is_file():
        raise UserError(f"tokenizer file {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"tokenizer file {path} is not valid JSON ({e}); it may be truncated") from None
