"""Generated ids to text, one token at a time: whole UTF-8 characters only, and stop strings.

A byte-level tokenizer can split one character over several tokens (an emoji is 4 bytes, a CJK
character 3), so decoding token by token would print U+FFFD halves. `TextTracker` feeds
`tokenizer.decode_bytes` of each token to an incremental UTF-8 decoder, which keeps an incomplete
character until its last byte arrives. It also watches for stop strings: text that could still be
the start of a stop string is held back, a completed stop string ends the text (the stop string
and anything after it are never emitted), and `keep_tokens` says how many tokens lie wholly
before the stop (for callers that want ids).

Not here: the model or sampling (`generate.engine`, `generate.sampling`).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index where the earliest stop string starts in `text`, or -1.

    >>> find_stop("Hello\\n\\nUser:", ["User:", "\\n\\n"])
    5
    >>> find_stop("Hello", ["User:"])
    -1
    """
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


def partial_stop_start(text: str, stops: Sequence[str]) -> int:
    """Start of the longest suffix of `text` that is a proper prefix of some stop string, else len(text).

    Text from there on must be held back: the next token may complete the stop string.

    >>> partial_stop_start("Hello Us", ["User:"])
    6
    >>> partial_stop_start("Hello", ["User:"])
    5
    """
    longest = max((len(s) for s in stops), default=0)
    for i in range(max(0, len(text) - longest + 1), len(text)):
        tail = text[i:]
        if any(s.startswith(tail) and len(s) > len(tail) for s in stops):
            return i
    return len(text)


class TextTracker:
    """Incremental text of one generated sequence: `push(token_id) -> str` gives the new safe text.

    >>> class Bytes:  # a toy byte-level tokenizer
    ...     def decode_bytes(self, ids): return bytes(ids)
    >>> t = TextTracker(Bytes(), stops=["!!"])
    >>> [t.push(b) for b in "hi 🙂!!x".encode()]
    ['h', 'i', ' ', '', '', '', '🙂', '', '', '']
    >>> t.stopped, t.text, t.keep_tokens
    (True, 'hi 🙂', 7)
    """

    def __init__(self, tokenizer, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text not yet emitted (may be the start of a stop string)
        self._emitted: list[str] = []
        self._n_emitted = 0  # characters emitted so far
        self._ends: list[int] = []  # characters decoded after each token (emitted + held)
        self.stopped = False
        self.stop_at: int | None = None  # character index where the stop string starts

    @property
    def text(self) -> str:
        """All text emitted so far."""
        return "".join(self._emitted)

    @property
    def keep_tokens(self) -> int:
        """Tokens whose text lies wholly before the stop string (all tokens when not stopped)."""
        if self.stop_at is None:
            return len(self._ends)
        return sum(1 for e in self._ends if e <= self.stop_at)

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show ('' while holding back)."""
        if self.stopped:
            return ""
        new = self._decoder.decode(self.tokenizer.decode_bytes([int(token_id)]))
        self._ends.append(self._n_emitted + len(self._held) + len(new))
        return self._release(self._held + new, final=False)

    def finish(self) -> str:
        """Generation ended without a stop string: flush held text and any trailing partial bytes."""
        if self.stopped:
            return ""
        tail = self._decoder.decode(b"", final=True)
        out = self._release(self._held + tail, final=True)
        self.stopped = True
        return out

    def _release(self, buf: str, final: bool) -> str:
        i = find_stop(buf, self.stops)
        if i >= 0:
            self.stopped = True
            self.stop_at = self._n_emitted + i
            out, self._held = buf[:i], ""
        elif final:
            out, self._held = buf, ""
        else:
            j = partial_stop_start(buf, self.stops)
            out, self._held = buf[:j], buf[j:]
        self._emitted.append(out)
        self._n_emitted += len(out)
        return out
