"""Export a byte-level BPE tokenizer as a Hugging Face `tokenizer.json`.

The file holds a ByteLevel pre-tokenizer and decoder (GPT-2's byte <-> unicode spelling), a BPE model
with the vocabulary and the merges, and the special tokens as added tokens; `tokenizers.Tokenizer.
from_file` loads it and encodes text as we do (tests/tokenizer check it). A pattern other than
GPT-2's goes in a Split pre-tokenizer in front of ByteLevel.

Hugging Face ranks merge *pairs*; we (like tiktoken) rank the *tokens* a pair joins into. To make the
two agree, the merges list gives, for each token in rank order, every way of splitting it into two
tokens (the one it was learned from first), and `ignore_merges` makes a chunk that is itself a
token map straight to it, as tiktoken does. Not here: reading Hugging Face files.
Schema reference: huggingface/tokenizers, `Tokenizer.to_str()`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from scratchllm.files import write_json_atomic
from scratchllm.tokenizer.bpe import BPETokenizer
from scratchllm.tokenizer.bytelevel import token_to_str
from scratchllm.tokenizer.patterns import GPT2_PATTERN, GPT2_PATTERN_ORIGINAL


def hf_merges(tok: BPETokenizer) -> list[tuple[int, int]]:
    """Every (left, right) pair of tokens that joins into a token, ordered by the joined token's rank.

    >>> t = BPETokenizer([bytes([i]) for i in range(256)] + [b"ab", b"bc", b"abc"],
    ...                  [(97, 98, 256), (98, 99, 257), (256, 99, 258)])
    >>> hf_merges(t)
    [(97, 98), (98, 99), (256, 99), (97, 257)]
    """
    learned: dict[int, list[tuple[int, int]]] = {}
    for a, b, z in tok.merges:
        learned.setdefault(z, []).append((a, b))
    out: list[tuple[int, int]] = []
    for z in sorted(learned):
        pairs = list(learned[z])
        t = tok.vocab[z]
        for k in range(1, len(t)):
            a, b = tok.ranks.get(t[:k]), tok.ranks.get(t[k:])
            if a is not None and b is not None and (a, b) not in pairs:
                pairs.append((a, b))
        out.extend(pairs)
    return out


def to_hf_dict(tok: BPETokenizer) -> dict[str, Any]:
    """The `tokenizer.json` content for `tok`."""
    vocab = {token_to_str(t): i for i, t in enumerate(tok.vocab)}
    merges = [[token_to_str(tok.vocab[a]), token_to_str(tok.vocab[b])] for a, b in hf_merges(tok)]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if tok.pattern in (GPT2_PATTERN, GPT2_PATTERN_ORIGINAL):
        pre = byte_level  # ByteLevel's built-in regex is GPT-2's
    else:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": tok.pattern}, "behavior": "Isolated", "invert": False},
            byte_level | {"use_regex": False},
        ]}
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(tok.special_tokens.items(), key=lambda x: x[1])]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def export_hf(tok: BPETokenizer, path: str | os.PathLike) -> Path:
    """Write `tokenizer.json` (a file path, or a folder that gets one) atomically."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    write_json_atomic(p, to_hf_dict(tok))
    return p
