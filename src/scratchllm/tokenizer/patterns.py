"""Pre-tokenisation patterns: the regexes that cut text into chunks before BPE merges bytes.

BPE never merges across a chunk boundary, so "dog." and "dog!" share the token " dog". GPT-2's
pattern splits off English contractions, runs of letters, runs of digits, runs of other symbols
(each optionally with one leading space) and whitespace; GPT-4's cl100k pattern also caps
digit runs at three and keeps newlines apart. Both need the `regex` module for \\p{L}/\\p{N}.

The strings are tiktoken's (tiktoken_ext/openai_public.py), which use possessive quantifiers to
run faster; `GPT2_PATTERN_ORIGINAL` is the one in OpenAI's encoder.py and splits identically
(tests/tokenizer check it). Not here: special tokens (base.split_special) and the merges.
"""

from __future__ import annotations

from functools import lru_cache

import regex

# GPT-2 (r50k): contractions | letters | digits | other symbols | trailing or inner whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# The pattern as first published in OpenAI's gpt-2/src/encoder.py (slower, same splits).
GPT2_PATTERN_ORIGINAL = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4 (cl100k_base): case-insensitive contractions, digits in groups of at most 3, newlines apart.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)

PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def resolve_pattern(pattern: str) -> str:
    """A pattern name ("gpt2", "gpt4") or a regex -> the regex string (checked to compile).

    >>> resolve_pattern("gpt2") == GPT2_PATTERN
    True
    """
    from scratchllm.errors import UserError

    if pattern in PATTERNS:
        return PATTERNS[pattern]
    if not pattern:
        raise UserError("the pre-tokenisation pattern is empty; use gpt2, gpt4 or a regex")
    try:
        compiled(pattern)
    except regex.error as e:
        raise UserError(f"pre-tokenisation pattern {pattern!r} is not a valid regex: {e}") from None
    return pattern


@lru_cache(maxsize=16)
def compiled(pattern: str) -> regex.Pattern:
    """The compiled form of a pattern string, cached."""
    return regex.compile(pattern)


def pretokenize(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """Cut `text` into the chunks BPE works within.

    >>> pretokenize("Hello world's  end!!")
    ['Hello', ' world', "'s", ' ', ' end', '!!']
    """
    return compiled(pattern).findall(text)
