"""Character-level tokenizer: one id per distinct character, as nanoGPT's Shakespeare model uses.

The vocabulary is the sorted set of characters in the training text (65 for tinyshakespeare),
followed by any special tokens. Characters not in the vocabulary are an error that names them.
Not a byte-level scheme: it cannot represent text with unseen characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scratchllm.errors import UserError
from scratchllm.tokenizer.base import AllowedSpecial, Tokenizer, resolve_allowed, split_special


class CharTokenizer(Tokenizer):
    """One id per distinct character of the training text, in sorted order, then special tokens.

    >>> t = CharTokenizer.train("hello"); t.encode("hole"), t.decode([2, 1])
    ([1, 3, 2, 0], 'lh')
    """

    kind = "char"

    def __init__(self, chars: Sequence[str], special_tokens: dict[str, int] | None = None) -> None:
        super().__init__(special_tokens)
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.itos = {i: c for c, i in self.stoi.items()} | {i: s for s, i in self.special_tokens.items()}

    @classmethod
    def train(cls, text: str, special_tokens: Sequence[str] = ()) -> CharTokenizer:
        if not text:
            raise UserError("cannot build a character vocabulary from empty text")
        chars = sorted(set(text))
        specials = {s: len(chars) + i for i, s in enumerate(special_tokens)}
        return cls(chars, specials)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.special_tokens)

    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        out: list[int] = []
        for piece, special in split_special(text, self.special_tokens, allowed):
            if special:
                out.append(self.special_tokens[piece])
                continue
            try:
                out.extend(self.stoi[c] for c in piece)
            except KeyError:
                bad = next(c for c in piece if c not in self.stoi)
                raise UserError(f"character {bad!r} (U+{ord(bad):04X}) is not in this character "
                                f"vocabulary of {len(self.chars)}; retrain on text that has it") from None
        return out

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        try:
            return "".join(self.itos[int(i)] for i in ids).encode("utf-8")
        except KeyError:
            self.check_ids(ids)
            raise

    def to_dict(self) -> dict[str, Any]:
        return {"chars": self.chars, "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        return cls(d["chars"], d.get("special_tokens", {}))
