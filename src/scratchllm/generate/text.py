"""Generation as text: whole UTF-8 characters only, stop strings, and the text-facing API.

A byte-level tokenizer can split one character over several tokens (an emoji is 4 bytes, a CJK
character 3), so decoding token by token would print U+FFFD halves. `TextTracker` feeds
`tokenizer.decode_bytes` of each token to an incremental UTF-8 decoder, which keeps an incomplete
character until its last byte arrives. It also watches for stop strings: text that could still be
the start of a stop string is held back, a completed stop string ends the text (the stop string
and anything after it are never emitted), and `keep_tokens` says how many tokens lie wholly
before the stop (for callers that want ids).

The text API drives the engine's `Decoder` with one tracker per row: `stream` yields one prompt's
text as it is produced, `generate_text` returns it whole, and `complete_batch` generates several
prompts at once and returns each one's ids, text and why it ended. Prompts are text (encoded with
the tokenizer, special tokens allowed) or ids; `eos_id` defaults to the tokenizer's
`<|endoftext|>` (`TOKENIZER_EOS`; None: no end-of-text id; or an id), the engine's one convention.

Not here: the decode loop (`generate.engine`), the sampling math (`generate.sampling`).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate.engine import TOKENIZER_EOS, Decoder, EosId, end_of_text


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


# --- the text API ----------------------------------------------------------------------------------
def prompt_ids(tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """`prompt` as ids: text is encoded (special tokens allowed), ids pass through. An empty prompt
    starts from a document boundary: the tokenizer's `<|endoftext|>`, else id 0 (a character
    vocabulary's first character, as nanoGPT starts from "\\n")."""
    ids = tokenizer.encode(prompt, allowed_special="all") if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:
        ids = [tokenizer.eot_id if tokenizer.eot_id is not None else 0]
    return ids


@dataclass
class Completion:
    """One prompt's generation: the new ids (cut before a stop string), their text, and why it
    ended: "eos" (the end-of-text id, not included), "stop" (a stop string, not included) or
    "length" (max_new_tokens)."""

    ids: list[int]
    text: str
    finish_reason: str


def complete_batch(model, tokenizer, prompts: Sequence[str | Sequence[int]], config: SampleConfig, *,
                   eos_id: EosId = TOKENIZER_EOS, generator=None) -> list[Completion]:
    """Generate after each prompt in one batch (left-padded, each row stopping on its own).

    With greedy decoding each row is what generating its prompt alone gives; sampling draws every
    row from one generator (`generator`, else `config.seed`), so rows differ from solo runs.
    """
    if not prompts:
        raise UserError("no prompts given")
    rows = [prompt_ids(tokenizer, p) for p in prompts]
    trackers = [TextTracker(tokenizer, config.stop) for _ in rows]
    out: list[list[int]] = [[] for _ in rows]
    ended = ["length"] * len(rows)
    with Decoder(model, rows, config, eos_id=end_of_text(eos_id, tokenizer), generator=generator) as dec:
        for step in dec:
            for i, t in enumerate(step):
                if t is None:  # the row drew its end-of-text id (rows we stopped are already marked)
                    if ended[i] == "length":
                        ended[i] = "eos"
                    continue
                out[i].append(t)
                trackers[i].push(t)
                if trackers[i].stopped:
                    ended[i] = "stop"
                    dec.done[i] = True
    for tr in trackers:
        tr.finish()
    return [Completion(ids[: tr.keep_tokens], tr.text, why) for ids, tr, why in zip(out, trackers, ended)]


def stream(model, tokenizer, prompt: str | Sequence[int], config: SampleConfig, *, eos_id: EosId = TOKENIZER_EOS,
           generator=None) -> Iterator[str]:
    """Yield the generated text piece by piece as it is produced.

    Never yields half a UTF-8 character; holds back text that may be the start of a stop string;
    the stop string and anything after it are never yielded. `prompt` is text or ids (see
    `prompt_ids`); `eos_id` is the tokenizer's `<|endoftext|>` by default (see the module doc).
    """
    ids = prompt_ids(tokenizer, prompt)
    tracker = TextTracker(tokenizer, config.stop)
    with Decoder(model, [ids], config, eos_id=end_of_text(eos_id, tokenizer), generator=generator) as dec:
        for (t,) in dec:
            if t is None:
                break
            piece = tracker.push(t)
            if piece:
                yield piece
            if tracker.stopped:
                dec.done[0] = True
                break
    rest = tracker.finish()
    if rest:
        yield rest


def generate_text(model, tokenizer, prompt: str | Sequence[int], config: SampleConfig, *,
                  eos_id: EosId = TOKENIZER_EOS, generator=None) -> str:
    """The generated text (without the prompt, cut before any stop string); see `stream`."""
    return "".join(stream(model, tokenizer, prompt, config, eos_id=eos_id, generator=generator))
