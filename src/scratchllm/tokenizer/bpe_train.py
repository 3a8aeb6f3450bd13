"""Training a byte-level BPE vocabulary: repeatedly merge the most frequent adjacent pair of tokens.

The text is first cut into chunks by a pre-tokenisation regex (patterns.py); merges never cross a
chunk, a special token, or a document boundary. Every chunk starts as its UTF-8 bytes (ids 0..255
are the 256 byte values), and each merge adds one token, id 256, 257, ... in merge order, so a
token's id is also its merge rank (what tiktoken calls rank).

Fast because it never recounts: it works on the *unique* chunks with their counts, keeps
pair -> count and pair -> indices of the chunks that hold it, and after each merge updates only the
chunks that contained the merged pair. The most frequent pair comes from a max-heap with lazy
deletion: an entry whose count went stale is re-pushed with its current count when it surfaces
(counts of existing pairs only fall; pairs with the new token are pushed when they appear).

Tie-breaking is deterministic: highest count first, then the pair whose (left bytes, right bytes)
is lexicographically smallest. If the best pair spells a token that already exists (the same bytes
reached through a different split), the chunks are merged into that token and no id is added; the
merge is still recorded (the Hugging Face export lists it next to the first one).

References: Sennrich et al. 2016 (BPE for NMT); Karpathy's minbpe (pair counts and merge);
Hugging Face tokenizers' BpeTrainer (incremental pair counts with a heap). Not here: encoding
(bpe.py), which applies the merges by rank to new text.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Sequence

import regex

from scratchllm.errors import UserError
from scratchllm.tokenizer.patterns import compiled

Merge = tuple[int, int, int]  # (left id, right id, merged id)


def merge(ids: Sequence[int], a: int, b: int, new: int) -> list[int]:
    """Replace every non-overlapping occurrence of the pair (a, b), left to right, with `new`.

    >>> merge([1, 2, 3, 1, 2], 1, 2, 4)
    [4, 3, 4]
    >>> merge([7, 7, 7], 7, 7, 8)
    [8, 7]
    """
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def count_chunks(texts: Iterable[str], pattern: str, special_tokens: Sequence[str] = (),
                 progress: bool = False) -> Counter[str]:
    """Unique pre-tokenised chunks with their counts over all documents; special tokens are cut out.

    >>> sorted(count_chunks(["a b a", "a<|endoftext|>b"], r" ?\\w+|\\s", ["<|endoftext|>"]).items())
    [(' a', 1), (' b', 1), ('a', 2), ('b', 1)]
    """
    rx = compiled(pattern)
    split = regex.compile("|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True)))
    counts: Counter[str] = Counter()
    if progress:
        from tqdm.auto import tqdm

        texts = tqdm(texts, desc="pre-tokenising", unit="doc")
    for text in texts:
        pieces = split.split(text) if special_tokens and any(s in text for s in special_tokens) else [text]
        for piece in pieces:
            counts.update(rx.findall(piece))
    return counts


def train_merges(
    chunk_counts: dict[str, int],
    n_merges: int,
    *,
    min_frequency: int = 1,
    progress: bool = False,
) -> tuple[list[bytes], list[Merge]]:
    """Learn up to `n_merges` new tokens from chunk counts; returns (vocab by id, merges).

    Stops early (without error) when no pair occurs `min_frequency` times; the caller decides
    whether that is enough. Worked example (minbpe's): "aaabdaaabac" as one chunk. "aa" occurs 4
    times; then "aa a" and "a b" tie at 2 and b"a" < b"aa" picks "ab"; then "aa ab".

    >>> vocab, merges = train_merges({"aaabdaaabac": 1}, 3)
    >>> [vocab[i] for i in range(256, len(vocab))], merges
    ([b'aa', b'ab', b'aaab'], [(97, 97, 256), (97, 98, 257), (256, 257, 258)])
    """
    vocab = [bytes([i]) for i in range(256)]
    token_id = {t: i for i, t in enumerate(vocab)}
    words: list[list[int]] = []
    weights: list[int] = []
    for chunk, c in chunk_counts.items():
        ids = list(chunk.encode("utf-8"))
        if len(ids) > 1:  # a one-byte chunk has no pairs and can never change
            words.append(ids)
            weights.append(c)

    stats: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, ids in enumerate(words):
        c = weights[w]
        for pair in zip(ids, ids[1:]):
            stats[pair] = stats.get(pair, 0) + c
            s = where.get(pair)
            if s is None:
                where[pair] = {w}
            else:
                s.add(w)
    # max-heap via negated counts; ties: smallest (left bytes, right bytes)
    heap = [(-c, vocab[a], vocab[b], a, b) for (a, b), c in stats.items()]
    heapq.heapify(heap)

    merges: list[Merge] = []
    new_tokens = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_merges, desc="BPE merges", unit="merge")
    try:
        while new_tokens < n_merges and heap:
            neg, _, _, a, b = heapq.heappop(heap)
            c = stats.get((a, b), 0)
            if c != -neg:  # stale entry: re-queue with its current count
                if c > 0:
                    heapq.heappush(heap, (-c, vocab[a], vocab[b], a, b))
                continue
            if c < min_frequency:
                break
            tok = vocab[a] + vocab[b]
            z = token_id.get(tok)
            if z is None:
                z = len(vocab)
                vocab.append(tok)
                token_id[tok] = z
                new_tokens += 1
                if bar is not None:
                    bar.update(1)
            merges.append((a, b, z))
            _apply_merge(words, weights, stats, where, heap, vocab, a, b, z)
    finally:
        if bar is not None:
            bar.close()
    return vocab, merges


def _apply_merge(words, weights, stats, where, heap, vocab, a: int, b: int, z: int) -> None:
    """Merge (a, b) -> z in every chunk that holds it, updating pair counts and the heap."""
    touched: set[tuple[int, int]] = set()
    for w in where.pop((a, b), ()):
        ids = words[w]
        new = merge(ids, a, b, z)
        if len(new) == len(ids):  # the pair left this chunk in an earlier merge
            continue
        c = weights[w]
        for pair in zip(ids, ids[1:]):
            stats[pair] -= c
        for pair in zip(new, new[1:]):
            stats[pair] = stats.get(pair, 0) + c
            if z in pair:  # only pairs with the new token are new to this chunk
                touched.add(pair)
                s = where.get(pair)
                if s is None:
                    where[pair] = {w}
                else:
                    s.add(w)
        words[w] = new
    stats.pop((a, b), None)
    for pair in touched:
        c = stats.get(pair, 0)
        if c > 0:
            heapq.heappush(heap, (-c, vocab[pair[0]], vocab[pair[1]], pair[0], pair[1]))


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    pattern: str,
    special_tokens: Sequence[str] = (),
    *,
    min_frequency: int = 1,
    progress: bool = False,
) -> tuple[list[bytes], list[Merge]]:
    """Pre-tokenise `texts` and learn `vocab_size - 256 - len(special_tokens)` merges.

    Raises UserError when the vocabulary is smaller than the 256 bytes plus the special tokens, the
    text is empty, or the text cannot support that many merges (it says how many were possible).
    """
    base = 256 + len(special_tokens)
    if vocab_size < base:
        raise UserError(f"vocab_size {vocab_size} is smaller than the byte-level base alphabet: 256 bytes + "
                        f"{len(special_tokens)} special tokens = {base}; use a vocab_size of at least {base}")
    counts = count_chunks(texts, pattern, special_tokens, progress=progress)
    if not counts:
        raise UserError("cannot train BPE on empty text")
    n_merges = vocab_size - base
    vocab, merges = train_merges(counts, n_merges, min_frequency=min_frequency, progress=progress)
    done = len(vocab) - 256
    if done < n_merges:
        why = "every pre-tokenised chunk is already one token" if min_frequency <= 1 else \
            f"no pair occurs at least min_frequency={min_frequency} times"
        raise UserError(f"vocab_size {vocab_size} needs {n_merges} merges but this text supports only {done} "
                        f"({why}); use a vocab_size of at most {base + done} or more text")
    return vocab, merges
