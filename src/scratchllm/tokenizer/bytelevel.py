"""GPT-2's byte <-> unicode mapping, used to read encoder.json/vocab.bpe and write Hugging Face files.

GPT-2 stores its tokens as text. To keep every byte printable, each of the 256 byte values is
mapped to one visible character: printable Latin-1 bytes map to themselves, the other 68 (control
codes, space, ...) to U+0100 onwards, in byte order. So a space is "Ġ" and a newline "Ċ".
This is only a file encoding: scratchllm's tokens are raw bytes. Reference: OpenAI gpt-2
src/encoder.py `bytes_to_unicode`.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte value -> the printable character GPT-2's files use for it.

    >>> m = bytes_to_unicode(); m[ord("a")], m[ord(" ")], m[ord("\\n")], len(set(m.values()))
    ('a', 'Ġ', 'Ċ', 256)
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    out = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in out:
            out[b] = chr(256 + n)
            n += 1
    return out


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """Inverse of `bytes_to_unicode`."""
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_str(token: bytes) -> str:
    """Raw token bytes -> GPT-2's printable spelling.

    >>> token_to_str(b" the\\n")
    'ĠtheĊ'
    """
    m = bytes_to_unicode()
    return "".join(m[b] for b in token)


def str_to_token(s: str) -> bytes:
    """GPT-2's printable spelling -> raw bytes; raises KeyError on a character outside the mapping.

    >>> str_to_token("Ġworld")
    b' world'
    """
    m = unicode_to_bytes()
    return bytes(m[c] for c in s)
