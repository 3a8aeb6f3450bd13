"""Duplicate detection: exact (a hash of the normalised text) and near (MinHash with LSH banding).

MinHash (Broder 1997): a document is a set of shingles (runs of k words or k characters); for a
random hash function h, P[min h(A) = min h(B)] = |A & B| / |A | B|, the Jaccard similarity. With
`num_perm` hash functions over 32-bit shingle hashes, the fraction of equal minima estimates it.
LSH banding (Leskovec, Rajaraman & Ullman, *Mining of Massive Datasets*, ch. 3): cut the
signature into b bands of r rows; documents sharing one band exactly become candidates, which
happens with probability 1 - (1 - s^r)^b, an S-curve; we pick b, r so that pairs at the threshold
are found 95% of the time, then keep the candidates whose estimated similarity reaches it.

Everything is deterministic: CRC-32 word hashes and hash parameters from a fixed seed.
Not here: what counts as a document or how text is normalised (`clean`).
"""

from __future__ import annotations

import hashlib
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Multiplier of the polynomial shingle hash (an odd 64-bit constant, from splitmix64).
_POLY = np.uint64(0x9E3779B97F4A7C15)
SEED = 1  # fixed: the same corpus always gives the same signatures


def text_key(text: str) -> str:
    """Hex digest of the text with whitespace runs made single spaces (exact-duplicate key).

    >>> text_key("a  b\\n") == text_key("a b")
    True
    """
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=16).hexdigest()


def shingles(text: str, size: int = 5, kind: str = "word") -> set[str]:
    """The set of `size`-word (or `size`-character) runs in lowercased `text` (what is hashed below).

    >>> sorted(shingles("a b C d", size=3))
    ['a b c', 'b c d']
    >>> sorted(shingles("abcd", size=3, kind="char"))
    ['abc', 'bcd']
    """
    if kind == "word":
        words = text.lower().split()
        return {" ".join(words[i:i + size]) for i in range(max(1, len(words) - size + 1))} if words else set()
    if kind == "char":
        t = " ".join(text.lower().split())
        return {t[i:i + size] for i in range(max(1, len(t) - size + 1))} if t else set()
    raise ValueError(f"shingle kind must be word or char, got {kind!r}")


def shingle_hashes(text: str, size: int = 5, kind: str = "word") -> np.ndarray:
    """The distinct 32-bit hashes of `shingles(text, size, kind)`, computed without building strings.

    Each word gets its CRC-32 (each character its code point); a shingle's hash is the polynomial
    sum(h_j * M^(size-1-j)) mod 2**64 over its tokens, folded to 32 bits. Equal shingles give equal
    hashes; different ones collide with probability about 2**-32.

    >>> len(shingle_hashes("a b c a b c", 3)) == len(shingles("a b c a b c", 3)) == 3
    True
    """
    if kind == "word":
        words = text.lower().split()
        ids = {w: i for i, w in enumerate(dict.fromkeys(words))}  # distinct words, first-seen order
        seq = np.fromiter(map(ids.__getitem__, words), dtype=np.int64, count=len(words))
        codes = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in ids), dtype=np.uint64, count=len(ids))
        tokens = codes[seq]  # (n_words,)
    elif kind == "char":
        t = " ".join(text.lower().split())
        tokens = np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)  # (n_chars,)
    else:
        raise ValueError(f"shingle kind must be word or char, got {kind!r}")
    n = len(tokens)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    k = min(size, n)
    h = np.zeros(n - k + 1, dtype=np.uint64)
    for j in range(k):  # Horner's rule over the k tokens of every shingle at once; wraps mod 2**64
        h = h * _POLY + tokens[j:n - k + 1 + j]
    return np.unique((h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF)))


class MinHasher:
    """`num_perm` hash functions; `signature(hashes)` is the vector of their minima over a shingle set.

    h_i(x) = ((a_i x + b_i) mod 2**64) >> 32 with random odd a_i, the multiply-add-shift family
    (Dietzfelbinger 1996): universal for 32-bit keys and free of slow modulo arithmetic.
    """

    def __init__(self, num_perm: int = 128, seed: int = SEED) -> None:
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # (P,)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)  # (P,)

    def signature(self, hashes: np.ndarray, chunk: int = 8192) -> np.ndarray:
        """uint64 signature of a set of 32-bit shingle hashes (all 2**32, above any value, if empty)."""
        sig = np.full(self.num_perm, 2**32, dtype=np.uint64)
        hashes = np.asarray(hashes, dtype=np.uint64)
        buf = np.empty((self.num_perm, min(chunk, len(hashes))), dtype=np.uint64)  # (P, C), reused
        for i in range(0, len(hashes), chunk):
            x = hashes[i:i + chunk]  # (c,)
            h = buf[:, :len(x)]  # (P, c)
            np.multiply(self.a[:, None], x[None, :], out=h)
            h += self.b[:, None]
            h >>= np.uint64(32)
            np.minimum(sig, h.min(axis=1), out=sig)
        return sig


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sets of hashes (for checking the estimate).

    >>> jaccard(np.array([1, 2, 3]), np.array([2, 3, 4]))
    0.5
    """
    inter = len(np.intersect1d(a, b))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal signature entries.

    >>> jaccard_estimate(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4]))
    0.75
    """
    return float(np.mean(sig_a == sig_b))


def lsh_params(num_perm: int, threshold: float, recall: float = 0.95) -> tuple[int, int]:
    """Bands b and rows r (b * r <= num_perm): the most rows per band (fewest false candidates)
    for which a pair at exactly `threshold` still becomes a candidate with probability >= `recall`.

    >>> lsh_params(128, 0.8)
    (18, 7)
    """
    best = (num_perm, 1)
    for r in range(1, num_perm + 1):
        b = num_perm // r
        if 1 - (1 - threshold**r) ** b >= recall:
            best = (b, r)
    return best


@dataclass(frozen=True)
class NearDuplicate:
    """Document `index` was dropped as a near-copy of the kept document `of`."""

    index: int
    of: int
    jaccard: float


def near_duplicates(texts: Sequence[str], threshold: float = 0.8, *, num_perm: int = 128, shingle: str = "word",
                    shingle_size: int = 5, seed: int = SEED) -> list[NearDuplicate]:
    """Documents whose estimated Jaccard similarity to an earlier kept document is >= `threshold`.

    Documents are visited in order; each is compared (via LSH candidates) with the documents kept
    so far, and dropped if its best match reaches the threshold, so the first copy always stays.
    """
    hasher = MinHasher(num_perm, seed)
    bands, rows = lsh_params(num_perm, threshold)
    buckets: list[dict[bytes, list[int]]] = [defaultdict(list) for _ in range(bands)]
    sigs: dict[int, np.ndarray] = {}
    out: list[NearDuplicate] = []
    for i, text in enumerate(texts):
        items = shingle_hashes(text, shingle_size, shingle)
        if len(items) == 0:
            continue
        sig = hasher.signature(items)
        keys = [sig[k * rows:(k + 1) * rows].tobytes() for k in range(bands)]
        candidates = sorted({j for k, key in enumerate(keys) for j in buckets[k].get(key, ())})
        best_j, best_s = -1, -1.0
        for j in candidates:
            s = jaccard_estimate(sig, sigs[j])
            if s > best_s:
                best_j, best_s = j, s
        if best_j >= 0 and best_s >= threshold:
            out.append(NearDuplicate(i, best_j, round(best_s, 4)))
            continue
        sigs[i] = sig
        for k, key in enumerate(keys):
            buckets[k][key].append(i)
    return out
