"""Where a tokenizer cuts a text: each token's piece and id, in colour on a terminal, and bytes per token.

`token_pieces(tokenizer, text)` is the text as (id, piece) pairs, a piece being the text of one token
(a byte-level token can hold part of a character: its bytes then show as `\\xNN`); `bytes_per_token`
is how much text one token carries on average, the measure that says how far a context window reaches.
`render` writes the pieces and their ids, with alternating background colours (ANSI escapes, for a
terminal) or, without colour, separated by `|`.

Not here: the tokenizers (`scratchllm.tokenizer`), comparing tokenizers trained on a corpus
(`scratchllm tokenizer inspect`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from scratchllm.errors import UserError

# Background colours of the xterm 256-colour palette, light enough for black text, in the order tokens
# take them (two tokens side by side never share one).
BACKGROUNDS = (153, 222, 151, 217, 183, 229)
RESET = "\x1b[0m"


def token_pieces(tokenizer: Any, text: str) -> list[tuple[int, str]]:
    """`text` as (token id, the token's text) pairs; special tokens in the text count as themselves.

    >>> from scratchllm.tokenizer.char import CharTokenizer
    >>> token_pieces(CharTokenizer.train("ab"), "aba")
    [(0, 'a'), (1, 'b'), (0, 'a')]
    """
    if not text:
        raise UserError("the text is empty; give some text to tokenize")
    ids = tokenizer.encode(text, allowed_special="all")
    return [(i, tokenizer.decode_bytes([i]).decode("utf-8", errors="backslashreplace")) for i in ids]


def bytes_per_token(text: str, n_tokens: int) -> float:
    """UTF-8 bytes of `text` per token.

    >>> bytes_per_token("héllo", 2)
    3.0
    """
    return len(text.encode("utf-8")) / max(n_tokens, 1)


def visible(piece: str) -> str:
    """A piece with newlines, tabs and carriage returns written as escapes, so each token stays on one line.

    >>> visible("a\\nb\\t")
    'a\\\\nb\\\\t'
    """
    return piece.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def paint(s: str, k: int) -> str:
    """`s` on the k-th background colour (black text), then back to the terminal's colours."""
    return f"\x1b[30;48;5;{BACKGROUNDS[k % len(BACKGROUNDS)]}m{s}{RESET}"


def render(pieces: Sequence[tuple[int, str]], color: bool) -> tuple[str, str]:
    """Two lines: the pieces and the ids. With `color` each token and its id share a background colour;
    without, pieces are separated by `|` and ids by spaces.

    >>> render([(5, "he"), (9, "llo")], color=False)
    ('he|llo', '5 9')
    """
    if not color:
        return "|".join(visible(p) for _, p in pieces), " ".join(str(i) for i, _ in pieces)
    text = "".join(paint(visible(p), k) for k, (_, p) in enumerate(pieces))
    ids = " ".join(paint(str(i), k) for k, (i, _) in enumerate(pieces))
    return text, ids
