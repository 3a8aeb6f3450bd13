"""Corpus statistics: bytes, documents, lines, characters, unique characters, tokens.

`corpus_stats(texts, tokenizer)` counts; `format_stats` lays the numbers out for the terminal.
`resolve_tokenizer("gpt2" | "char" | PATH, texts)` gives the tokenizer `scratchllm data stats
--tokenizer` asks for. Not here: changing the text (`clean`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def corpus_stats(texts: Sequence[str], tokenizer=None) -> dict[str, Any]:
    """Counts over `texts`; with a tokenizer also tokens and tokens per byte.

    >>> s = corpus_stats(["ab\\nc", "é"]); (s["bytes"], s["documents"], s["lines"], s["characters"])
    (6, 2, 3, 5)
    >>> s["unique_characters"]  # a b c é and the newline
    5
    """
    chars: set[str] = set()
    out: dict[str, Any] = {"documents": len(texts), "bytes": 0, "lines": 0, "characters": 0}
    for t in texts:
        out["bytes"] += len(t.encode("utf-8"))
        out["characters"] += len(t)
        out["lines"] += t.count("\n") + (1 if t and not t.endswith("\n") else 0)
        chars.update(t)
    out["unique_characters"] = len(chars)
    if tokenizer is not None:
        out["tokenizer"] = f"{tokenizer.kind} ({tokenizer.vocab_size:,} tokens)"
        out["tokens"] = sum(len(tokenizer.encode(t, allowed_special="all")) for t in texts)
        out["tokens_per_byte"] = round(out["tokens"] / max(1, out["bytes"]), 4)
    return out


def format_stats(stats: dict[str, Any], title: str = "") -> str:
    """Aligned `key  value` lines (numbers with thousands separators)."""
    lines = [title] if title else []
    width = max(len(k) for k in stats) if stats else 0
    for k, v in stats.items():
        value = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
        lines.append(f"  {k.replace('_', ' '):<{width}}  {value}")
    return "\n".join(lines)


def resolve_tokenizer(spec: str, texts: Sequence[str], data_dir: str | os.PathLike | None = None):
    """"gpt2": GPT-2's tokenizer; "char": a character vocabulary of `texts`; else a saved tokenizer path."""
    if spec == "gpt2":
        from scratchllm.data.sources import gpt2_tokenizer

        return gpt2_tokenizer(data_dir)
    if spec == "char":
        from scratchllm.tokenizer.char import CharTokenizer

        return CharTokenizer.train("".join(sorted(set("".join(texts)))))
    from scratchllm.tokenizer import load

    return load(spec)
