"""Reading text the user gives a command: one rule for every command and every source.

Text comes from a file (`--file`), from standard input, or from an argument. It must be UTF-8:
a byte that is not is one `error:` line naming the source and the byte offset (never a
traceback, never a silent U+FFFD), unless the user asks for `--errors replace`. `generate` and
`tokenizer encode/decode/train/inspect` read through here. Backslash escapes typed in an option
(generate's `--stop`, the data commands' `--separator`) mean the same everywhere (`unescape`).

Not here: what a command does with the text (its own module), tokenizing it (`tokenizer`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ERRORS = ("strict", "replace")  # strict: a bad byte is an error; replace: it becomes U+FFFD


def add_errors_option(parser) -> None:
    """The `--errors strict|replace` flag that says what to do with bytes that are not UTF-8."""
    parser.add_argument("--errors", choices=ERRORS, default="strict",
                        help="bytes that are not UTF-8: strict = stop with an error, replace = use U+FFFD")


def decode_utf8(data: bytes, source: str, errors: str = "strict") -> str:
    """UTF-8 bytes -> str; with errors="strict" a bad byte is one clear error naming source and offset.

    >>> decode_utf8(b"caf\\xc3\\xa9", "x.txt")
    'café'
    >>> decode_utf8(b"caf\\xe9", "x.txt", errors="replace")
    'caf\\ufffd'
    """
    from scratchllm.errors import UserError

    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(f"{source} is not UTF-8 text: byte offset {e.start} (0x{data[e.start]:02x}); "
                        f"convert it to UTF-8 or pass --errors replace") from None


def read_file(path: str | Path, errors: str = "strict", what: str = "file") -> str:
    """The UTF-8 text of a file; a missing file or a bad byte is one clear error."""
    from scratchllm.errors import UserError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} not found")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None
    return decode_utf8(data, str(p), errors)


def read_stdin(errors: str = "strict") -> str:
    """Standard input as UTF-8 text (read as bytes, so the locale's encoding plays no part)."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream without bytes underneath (e.g. replaced in tests): already text
        return sys.stdin.read()
    return decode_utf8(stream.read(), "standard input", errors)


ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}  # what `\n`, `\t`, `\r`, `\\` typed in a shell mean


def unescape(text: str | None) -> str | None:
    r"""Backslash escapes typed on a command line as the characters they name: `\n` newline, `\t` tab,
    `\r` carriage return, `\\` one backslash (so `--stop '\n\n'` is two newlines). Any other backslash
    stays as typed; None stays None.

    >>> unescape(r"\n\n"), unescape(r"a\tb"), unescape(None)
    ('\n\n', 'a\tb', None)
    >>> unescape(r"a\nb\t\\")
    'a\nb\t\\'
    >>> unescape(r"\\n"), unescape(r"C:\x\r")  # an escaped backslash then a plain n; an unknown escape stays
    ('\\n', 'C:\\x\r')
    """
    if text is None:
        return None
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in ESCAPES:
            out.append(ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def read_argument(text: str, source: str, errors: str = "strict") -> str:
    """A command-line argument as UTF-8 text. Python hands over bytes that are not UTF-8 as lone
    surrogates; they are the same error here as in a file.

    >>> read_argument("café", "the prompt")
    'café'
    """
    if not any("\udc80" <= ch <= "\udcff" for ch in text):
        return text
    return decode_utf8(os.fsencode(text), source, errors)
