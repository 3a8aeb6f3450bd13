"""The book's word tokenizer (chapter 2, SimpleTokenizerV2): split on punctuation and whitespace.

Text is split with the regex `([,.:;?_!"()']|--|\\s)`, pieces are stripped and empty ones dropped,
so "Hello, world." becomes ["Hello", ",", "world", "."]. The vocabulary is the sorted set of words
of a training text (or its `vocab_size - 2` most frequent ones), then `<|endoftext|>` and
`<|unk|>`. Unknown words map to `<|unk|>`; decoding joins with spaces and removes the space before
punctuation. Whitespace is not kept, so decode(encode(s)) only approximates s: this is the
teaching tokenizer that motivates BPE, not one to train models on.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from scratchllm.errors import UserError
from scratchllm.tokenizer.base import ENDOFTEXT, AllowedSpecial, Tokenizer, resolve_allowed, split_special

UNK = "<|unk|>"
SPLIT = re.compile(r'([,.:;?_!"()\']|--|\s)')
NO_SPACE_BEFORE = re.compile(r'\s+([,.:;?!"()\'])')


def split_words(text: str) -> list[str]:
    """The book's pre-processing: split on punctuation and whitespace, strip, drop empties.

    >>> split_words("Hello, world. Is this-- a test?")
    ['Hello', ',', 'world', '.', 'Is', 'this', '--', 'a', 'test', '?']
    """
    return [p.strip() for p in SPLIT.split(text) if p.strip()]


def join_words(words: Sequence[str]) -> str:
    """Join with spaces, then drop the space before punctuation (the book's decode rule).

    >>> join_words(['Hello', ',', 'world', '.'])
    'Hello, world.'
    """
    return NO_SPACE_BEFORE.sub(r"\1", " ".join(words))


class WordTokenizer(Tokenizer):
    """Words of a training text plus `<|endoftext|>` and `<|unk|>`.

    >>> t = WordTokenizer.train(["the cat sat."]); t.decode(t.encode("the dog sat."))
    'the <|unk|> sat.'
    """

    kind = "words"

    def __init__(self, words: Sequence[str], special_tokens: dict[str, int] | None = None) -> None:
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: len(words), UNK: len(words) + 1}
        super().__init__(special_tokens)
        if UNK not in self.special_tokens:
            raise UserError(f"a word tokenizer needs the {UNK} token")
        self.words = list(words)
        self.stoi = {w: i for i, w in enumerate(self.words)}
        self.itos = dict(enumerate(self.words)) | {i: s for s, i in self.special_tokens.items()}

    @classmethod
    def train(cls, texts: Iterable[str] | str, vocab_size: int | None = None,
              special_tokens: Sequence[str] = (ENDOFTEXT, UNK)) -> WordTokenizer:
        """Vocabulary of all words in `texts`, or the `vocab_size - len(special_tokens)` most frequent."""
        if isinstance(texts, str):
            texts = [texts]
        specials = list(special_tokens) + ([UNK] if UNK not in special_tokens else [])
        counts: Counter[str] = Counter()
        for text in texts:
            for piece, special in split_special(text, {s: 0 for s in specials}, set(specials)):
                if not special:
                    counts.update(split_words(piece))
        if not counts:
            raise UserError("cannot build a word vocabulary from empty text")
        if vocab_size is None:
            words = sorted(counts)
        else:
            if vocab_size <= len(specials):
                raise UserError(f"vocab_size {vocab_size} leaves no room for words after the "
                                f"{len(specials)} special tokens; use at least {len(specials) + 1}")
            keep = vocab_size - len(specials)
            if keep > len(counts):
                raise UserError(f"vocab_size {vocab_size} is larger than the text supports: it has "
                                f"{len(counts)} distinct words (+{len(specials)} special tokens = "
                                f"{len(counts) + len(specials)}); use at most that")
            # most frequent first, ties alphabetical; then sorted like the book's vocabulary
            words = sorted(sorted(counts, key=lambda w: (-counts[w], w))[:keep])
        return cls(words, {s: len(words) + i for i, s in enumerate(specials)})

    @property
    def vocab_size(self) -> int:
        return len(self.words) + len(self.special_tokens)

    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        unk = self.special_tokens[UNK]
        ids: list[int] = []
        for piece, special in split_special(text, self.special_tokens, allowed):
            if special:
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self.stoi.get(w, unk) for w in split_words(piece))
        return ids

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        try:
            return join_words([self.itos[int(i)] for i in ids])
        except KeyError:
            self.check_ids(ids)
            raise

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        return {"words": self.words, "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WordTokenizer:
        return cls(d["words"], d.get("special_tokens"))
