"""Hugging Face tokenizer files, both ways: read `tokenizer.json` (byte-level BPE) or GPT-2's
`vocab.json` + `merges.txt` into our `BPETokenizer`; write ours as `tokenizer.json`.

Reading: the vocabulary's tokens are spelled in GPT-2's byte alphabet (bytelevel.py); the
pre-tokenizer is a ByteLevel one (GPT-2's regex) or a Split on a regex in front of a ByteLevel one
without its own regex (Llama 3, Qwen, SmolLM2); added tokens become special tokens. Our BPE ranks a
token by its id, HF by its merge's position; the two agree when merged tokens are numbered in merge
order, which `from_hf_dict` checks (and refuses, saying so, when not); tests/interop check the
ids against the `tokenizers` library for GPT-2's files and ours. An NFC normalizer (Qwen) is kept
with a warning (we do not normalise: text already in NFC, most text, encodes the same); any other
normalizer, a byte fallback or an `unk_token` (SentencePiece-style BPE) is refused with the reason.
`hf_folder_tokenizer(folder)` picks whichever of the two file sets a model folder holds.

Writing: the file holds a ByteLevel pre-tokenizer and decoder (GPT-2's byte <-> unicode spelling), a
BPE model with the vocabulary and the merges, and the special tokens as added tokens; `tokenizers.Tokenizer.
from_file` loads it and encodes text as we do (tests/tokenizer check it). A pattern other than
GPT-2's goes in a Split pre-tokenizer in front of ByteLevel.

Hugging Face ranks merge *pairs*; we (like tiktoken) rank the *tokens* a pair joins into. To make the
two agree, the merges list gives, for each token in rank order, every way of splitting it into two
tokens (the one it was learned from first), and `ignore_merges` makes a chunk that is itself a
token map straight to it, as tiktoken does.
Not here: model folders' weights and configs (interop.hf).
Schema reference: huggingface/tokenizers, `Tokenizer.to_str()`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError
from scratchllm.files import write_json_atomic
from scratchllm.tokenizer.base import read_json
from scratchllm.tokenizer.bpe import BPETokenizer
from scratchllm.tokenizer.bytelevel import str_to_token, token_to_str
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


# --- reading ------------------------------------------------------------------------------------
def _pattern(pre: dict | None, where: str) -> str:
    """The pre-tokenisation regex of a `pre_tokenizer` entry (ByteLevel, or Split + ByteLevel)."""
    if pre is None:
        raise UserError(f"{where}: no pre_tokenizer; scratchllm reads byte-level BPE (GPT-2, Llama 3, Qwen style)")
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    pattern = None
    byte_level = False
    for step in steps:
        kind = step.get("type")
        if kind == "ByteLevel":
            if step.get("add_prefix_space"):
                raise UserError(f"{where}: ByteLevel add_prefix_space=true is not supported")
            byte_level = True
            if step.get("use_regex", True):
                if pattern is not None:
                    raise UserError(f"{where}: two pre-tokenisation regexes in a row are not supported")
                pattern = GPT2_PATTERN
        elif kind == "Split" and pattern is None and not byte_level:
            regex = step.get("pattern", {}).get("Regex")
            if regex is None or step.get("behavior") != "Isolated" or step.get("invert"):
                raise UserError(f"{where}: pre-tokenizer Split must be a Regex with behavior Isolated")
            pattern = regex
        else:
            raise UserError(f"{where}: pre-tokenizer {kind!r} is not supported here; scratchllm reads ByteLevel, "
                            f"or a Split regex followed by ByteLevel")
    if not byte_level or pattern is None:
        raise UserError(f"{where}: not a byte-level BPE pre-tokenizer (ByteLevel, or Split regex + ByteLevel)")
    return pattern


def from_hf_dict(d: dict, where: str = "tokenizer.json") -> BPETokenizer:
    """Our BPETokenizer from the content of a Hugging Face `tokenizer.json` (byte-level BPE only)."""
    model = d.get("model") if isinstance(d, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise UserError(f"{where}: model type {kind!r} is not supported; scratchllm reads byte-level BPE")
    if model.get("byte_fallback") or model.get("unk_token") or model.get("continuing_subword_prefix") \
            or model.get("end_of_word_suffix"):
        raise UserError(f"{where}: a SentencePiece-style BPE (byte_fallback, unk_token or subword affixes) is not "
                        f"supported; scratchllm reads byte-level BPE")
    norm = d.get("normalizer")
    if norm is not None:
        if norm.get("type") != "NFC":
            raise UserError(f"{where}: normalizer {norm.get('type')!r} is not supported (only none or NFC)")
        warnings.warn(f"{where} normalises text to NFC; scratchllm's BPE does not, so text not already in NFC "
                      f"may encode differently", stacklevel=2)
    pattern = _pattern(d.get("pre_tokenizer"), where)
    added = {t["content"]: int(t["id"]) for t in d.get("added_tokens") or []}
    vocab_json = model.get("vocab") or {}
    by_id: dict[int, bytes] = {}
    try:
        for s, i in vocab_json.items():
            if s in added:
                continue
            by_id[int(i)] = str_to_token(s)
    except KeyError:
        raise UserError(f"{where}: a token uses a character outside GPT-2's byte alphabet; not a byte-level "
                        f"BPE vocabulary") from None
    n = len(by_id)
    if sorted(by_id) != list(range(n)):
        raise UserError(f"{where}: the vocabulary's ids are not 0..{n - 1} (added tokens aside)")
    vocab = [by_id[i] for i in range(n)]
    ranks = {t: i for i, t in enumerate(vocab)}
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise UserError(f"{where}: byte {missing[0]} has no token; scratchllm's byte-level BPE needs all 256")
    merges = []
    for k, m in enumerate(model.get("merges") or []):
        pair = m.split(" ") if isinstance(m, str) else list(m)
        try:
            a, b = str_to_token(pair[0]), str_to_token(pair[1])
        except (KeyError, IndexError):
            raise UserError(f"{where}: merge {k} {m!r} is not two byte-level tokens") from None
        if a not in ranks or b not in ranks or a + b not in ranks:
            raise UserError(f"{where}: merge {k} {m!r} joins tokens that are not in the vocabulary")
        merges.append((ranks[a], ranks[b], ranks[a + b]))
    seen: set[int] = set()
    last = -1
    for _, _, z in merges:
        if z in seen:
            continue  # another way to spell an already merged token (our own export writes these)
        if z <= last:
            raise UserError(f"{where}: merged tokens are not numbered in merge order ({token_to_str(vocab[z])!r}); "
                            f"scratchllm's BPE (ranks = ids) cannot reproduce this tokenizer")
        seen.add(z)
        last = z
    specials = dict(added)
    for s, i in specials.items():
        if i < n:
            raise UserError(f"{where}: added token {s!r} has id {i}, which is also a vocabulary token")
    first: dict[int, tuple[int, int, int]] = {}
    for m in merges:
        first.setdefault(m[2], m)  # the merge each token was learned from (the first that makes it)
    if len(first) != n - 256:
        raise UserError(f"{where}: {n - 256 - len(first)} vocabulary tokens are made by no merge; scratchllm's BPE "
                        f"needs every token above the 256 bytes to come from a merge")
    return BPETokenizer(vocab, sorted(first.values(), key=lambda m: m[2]), pattern, specials, name="hf")


def from_hf_json(path: str | os.PathLike) -> BPETokenizer:
    """Read a `tokenizer.json` file (see `from_hf_dict`)."""
    p = Path(path)
    return from_hf_dict(read_json(p), f"tokenizer file {p}")


def hf_folder_tokenizer(folder: str | os.PathLike) -> BPETokenizer | None:
    """The tokenizer of a Hugging Face model folder: `tokenizer.json`, else GPT-2's `vocab.json` +
    `merges.txt`; None if it has neither."""
    f = Path(folder)
    if (f / "tokenizer.json").is_file():
        return from_hf_json(f / "tokenizer.json")
    if (f / "vocab.json").is_file() and (f / "merges.txt").is_file():
        return BPETokenizer.from_gpt2_files(f / "vocab.json", f / "merges.txt")
    return None
