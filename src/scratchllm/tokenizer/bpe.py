"""Byte-level BPE tokenizer (GPT-2 style): encode, decode, save/load, GPT-2's files, two encoders.

A token is a byte string. Ids 0..n-1 are the vocabulary (for GPT-2 and our trained tokenizers every
byte value is one of them, so any text can be encoded), special tokens come after. Encoding cuts the
text with the pre-tokenisation regex, then merges each chunk's bytes: repeatedly join the adjacent
pair whose joined bytes form the token of lowest rank (rank = id: tokens are numbered in the order
they were learned), leftmost first on ties, until no adjacent pair forms a token. A chunk that is
itself one token is returned as that token. These are exactly tiktoken's rules, and for GPT-2's
files they reproduce OpenAI's encoder.py (which ranks the merge pairs of vocab.bpe).

Two paths give identical ids (tests check it on tinyshakespeare and random Unicode):
- "tiktoken" (default when installed): a `tiktoken.Encoding` built from our tokens, Rust speed.
- "python": the reference written out here, with a cache of already-encoded chunks.

Not here: training (bpe_train.py), GPT-2's byte<->unicode file spelling (bytelevel.py), the Hugging
Face export (hf.py). References: OpenAI gpt-2 src/encoder.py; tiktoken (src/lib.rs byte_pair_merge);
Karpathy's minbpe.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError
from scratchllm.tokenizer.base import ENDOFTEXT, AllowedSpecial, Tokenizer, resolve_allowed, split_special
from scratchllm.tokenizer.bpe_train import Merge
from scratchllm.tokenizer.patterns import GPT2_PATTERN, compiled, resolve_pattern

# The reference encoder remembers this many chunks (words) it has encoded: text repeats its words so
# much that most chunks are then looked up, not merged again (benchmarks/tokenizer.py times the path
# cold and warm; figures in benchmarks/RESULTS.md).
CACHE_SIZE = 200_000

_SINGLE_BYTES = [bytes([b]) for b in range(256)]
NO_MERGE = float("inf")  # rank of a pair that forms no token


def bpe_merge(chunk: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Encode one pre-tokenised chunk by merging adjacent parts in rank order (tiktoken's rule).

    >>> ranks = {bytes([i]): i for i in range(256)} | {b"ab": 256, b"bc": 257, b"abc": 258}
    >>> bpe_merge(b"abcd", ranks)  # "ab" ranks before "bc"; then "ab"+"c" is the token "abc"
    [258, 100]
    >>> bpe_merge(b"xbc", ranks)
    [120, 257]
    """
    token = ranks.get(chunk)
    if token is not None:  # the whole chunk is a token (tiktoken's shortcut)
        return [token]
    parts = [_SINGLE_BYTES[b] for b in chunk]
    # pair_ranks[i] = rank of the token parts[i] + parts[i + 1] would form (NO_MERGE if none);
    # after a merge only the two neighbours of the new part need a new lookup.
    pair_ranks = [ranks.get(a + b, NO_MERGE) for a, b in zip(parts, parts[1:])]
    while pair_ranks:
        best = min(pair_ranks)
        if best == NO_MERGE:
            break
        i = pair_ranks.index(best)  # leftmost of the lowest rank
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i < len(pair_ranks):
            pair_ranks[i] = ranks.get(parts[i] + parts[i + 1], NO_MERGE)
        if i > 0:
            pair_ranks[i - 1] = ranks.get(parts[i - 1] + parts[i], NO_MERGE)
    return [ranks[p] for p in parts]


class BPETokenizer(Tokenizer):
    """Byte-level BPE over a vocabulary of byte strings.

    `vocab[i]` is the bytes of token i (ranks = ids); `merges` lists (left, right, merged) ids in
    the order they were learned (kept for saving and for the Hugging Face export); `pattern` is
    the pre-tokenisation regex; `engine` is "tiktoken", "python" or "auto".
    """

    kind = "bpe"

    def __init__(
        self,
        vocab: Sequence[bytes],
        merges: Sequence[Merge],
        pattern: str = GPT2_PATTERN,
        special_tokens: dict[str, int] | None = None,
        engine: str = "auto",
        name: str = "bpe",
    ) -> None:
        super().__init__(special_tokens)
        self.vocab = list(vocab)
        self.merges = [tuple(m) for m in merges]
        self.pattern = resolve_pattern(pattern)
        self.name = name
        self.ranks = {t: i for i, t in enumerate(self.vocab)}
        if len(self.ranks) != len(self.vocab):
            raise UserError("BPE vocabulary has the same bytes under two ids; the tokenizer file is corrupt")
        for s, i in self.special_tokens.items():
            if i < len(self.vocab):
                raise UserError(f"special token {s!r} has id {i}, which is taken by a regular token")
        self._all_bytes = self.vocab + [b""] * (self.vocab_size - len(self.vocab))
        for s, i in self.special_tokens.items():
            self._all_bytes[i] = s.encode("utf-8")
        self._cache: dict[str, list[int]] = {}
        self._enc = None
        self.engine = engine

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        texts: Iterable[str] | str,
        vocab_size: int,
        pattern: str = "gpt2",
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        *,
        min_frequency: int = 1,
        progress: bool = False,
        engine: str = "auto",
    ) -> BPETokenizer:
        """Learn `vocab_size` tokens (256 bytes + merges + special tokens) from documents `texts`."""
        from scratchllm.tokenizer.bpe_train import train_bpe

        if isinstance(texts, str):
            texts = [texts]
        pat = resolve_pattern(pattern)
        vocab, merges = train_bpe(texts, vocab_size, pat, list(special_tokens),
                                  min_frequency=min_frequency, progress=progress)
        specials = {s: len(vocab) + i for i, s in enumerate(special_tokens)}
        return cls(vocab, merges, pat, specials, engine=engine)

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike,
                        engine: str = "auto") -> BPETokenizer:
        """GPT-2's tokenizer from its two files (encoder.json: token -> id; vocab.bpe: merges in order)."""
        from scratchllm.tokenizer.bytelevel import str_to_token

        encoder = _read_json(Path(encoder_json))
        lines = _read_text(Path(vocab_bpe)).split("\n")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merge_strs = [ln.rstrip("\r").split(" ") for ln in lines if ln.strip()]
        specials = {s: i for s, i in encoder.items() if s.startswith("<|") and s.endswith("|>")}
        try:
            by_id = {i: str_to_token(s) for s, i in encoder.items() if s not in specials}
        except KeyError:
            raise UserError(f"{encoder_json} is not a GPT-2 encoder.json (a token uses a character outside "
                            f"GPT-2's byte alphabet)") from None
        n = len(by_id)
        if sorted(by_id) != list(range(n)):
            raise UserError(f"{encoder_json}: token ids are not 0..{n - 1}")
        vocab = [by_id[i] for i in range(n)]
        merges = []
        for k, pair in enumerate(merge_strs):
            if len(pair) != 2 or pair[0] not in encoder or pair[1] not in encoder or "".join(pair) not in encoder:
                raise UserError(f"{vocab_bpe} line {k + 2}: {' '.join(pair)!r} is not a merge of two tokens "
                                f"of {Path(encoder_json).name}; are the two files from the same model?")
            merges.append((encoder[pair[0]], encoder[pair[1]], encoder["".join(pair)]))
        # Ranks must follow merge order (tiktoken assumes it): merged ids increase down vocab.bpe.
        if any(m2[2] <= m1[2] for m1, m2 in zip(merges, merges[1:])):
            raise UserError(f"{encoder_json} numbers the merged tokens out of vocab.bpe's order; cannot use it")
        return cls(vocab, merges, GPT2_PATTERN, specials, engine=engine, name="gpt2")

    # --- the Tokenizer interface ------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return max([len(self.vocab) - 1, *self.special_tokens.values()]) + 1

    @property
    def engine(self) -> str:
        return self._engine

    @engine.setter
    def engine(self, value: str) -> None:
        if value == "auto":
            try:
                import tiktoken  # noqa: F401

                value = "tiktoken"
            except ImportError:  # pragma: no cover - tiktoken is a core dependency
                value = "python"
        if value not in ("tiktoken", "python"):
            raise UserError(f"BPE engine {value!r} is unknown; use tiktoken, python or auto")
        self._engine = value

    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        if self._engine == "tiktoken":
            return self.encode_tiktoken(text, allowed_special)
        return self.encode_python(text, allowed_special)

    def encode_batch(self, texts: Sequence[str], allowed_special: AllowedSpecial = "none",
                     num_threads: int = 1) -> list[list[int]]:
        if self._engine == "tiktoken":
            allowed = resolve_allowed(allowed_special, self.special_tokens)
            for t in texts:
                self._check_special(t, allowed)
            return self.tiktoken_encoding.encode_batch(list(texts), num_threads=num_threads,
                                                      allowed_special=allowed, disallowed_special=())
        return [self.encode_python(t, allowed_special) for t in texts]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            if len(ids) and min(ids) < 0:  # a negative index would silently pick a token from the end
                raise IndexError
            return b"".join([self._all_bytes[i] for i in ids])
        except (IndexError, TypeError):
            self.check_ids([int(i) for i in ids])
            raise

    def token_bytes(self, id: int) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character; streaming joins them)."""
        if not 0 <= id < len(self._all_bytes):
            self.check_ids([id])
        return self._all_bytes[id]

    # --- the two encoders -------------------------------------------------------------------
    def encode_python(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Reference encoder: regex chunks, then `bpe_merge` per chunk (cached)."""
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        text = _fix_surrogates(text)
        rx = compiled(self.pattern)
        cache, ranks = self._cache, self.ranks
        ids: list[int] = []
        for piece, special in split_special(text, self.special_tokens, allowed):
            if special:
                ids.append(self.special_tokens[piece])
                continue
            for chunk in rx.findall(piece):
                out = cache.get(chunk)
                if out is None:
                    out = bpe_merge(chunk.encode("utf-8"), ranks)
                    if len(cache) >= CACHE_SIZE:
                        cache.clear()
                    cache[chunk] = out
                ids.extend(out)
        return ids

    def encode_tiktoken(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        """Fast encoder: the same rules run by tiktoken (ids equal its ranks, so no translation)."""
        enc = self.tiktoken_encoding
        if allowed_special == "none":
            self._check_special(text, ())
            return enc.encode_ordinary(text)
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        self._check_special(text, allowed)
        return enc.encode(text, allowed_special=allowed, disallowed_special=())

    def _check_special(self, text: str, allowed) -> None:
        for tok in self.special_tokens:
            if tok not in allowed and tok in text:
                split_special(text, {tok: 0}, set())  # raises the standard message

    @property
    def tiktoken_encoding(self):
        """A `tiktoken.Encoding` with our tokens as mergeable ranks (built once, on first use)."""
        if self._enc is None:
            import tiktoken

            self._enc = tiktoken.Encoding(
                name=f"scratchllm-{self.name}",
                pat_str=self.pattern,
                mergeable_ranks=self.ranks,
                special_tokens=self.special_tokens,
            )
        return self._enc

    # --- saving -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        byte_ids = [self.ranks[bytes([b])] for b in range(256)]
        return {
            "name": self.name,
            "pattern": self.pattern,
            "byte_ids": byte_ids,  # id of each byte value 0..255 (GPT-2 numbers them its own way)
            "merges": [list(m) for m in self.merges],
            "special_tokens": self.special_tokens,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BPETokenizer:
        try:
            byte_ids, merges = d["byte_ids"], d["merges"]
            n = 256 + len({m[2] for m in merges})
            vocab: list[bytes | None] = [None] * n
            for b, i in enumerate(byte_ids):
                vocab[i] = bytes([b])
            for a, b, z in merges:
                tok = vocab[a] + vocab[b]
                if vocab[z] is None:
                    vocab[z] = tok
                elif vocab[z] != tok:
                    raise ValueError(f"merge {a} {b} -> {z} disagrees with an earlier merge")
            if any(v is None for v in vocab):
                raise ValueError("token ids are not contiguous")
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise UserError(f"BPE tokenizer data is corrupt ({e}); re-save or retrain it") from None
        return cls(vocab, [tuple(m) for m in merges], d.get("pattern", GPT2_PATTERN),  # type: ignore[arg-type]
                   d.get("special_tokens", {}), name=d.get("name", "bpe"))

    def __getstate__(self) -> dict[str, Any]:  # picklable for worker processes; caches are rebuilt
        state = self.__dict__.copy()
        state["_enc"] = None
        state["_cache"] = {}
        return state

    def __repr__(self) -> str:
        return f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size}, engine={self._engine!r})"


def _fix_surrogates(text: str) -> str:
    """Lone surrogates cannot be UTF-8 encoded; replace them with U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"file {path} not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte offset {e.start})") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); it may be truncated") from None
