"""WordPiece, the subword tokenizer of BERT: `##` marks a piece that continues a word.

Pre-tokenisation (BERT's basic tokenizer, simplified): optionally lowercase and strip accents, split
on whitespace, and make every punctuation or symbol character and every CJK ideograph a word of its
own. Each word is then encoded greedily, longest match first: the longest vocabulary entry that
starts the word, then the longest `##`-entry that continues it, and so on; a word that cannot be
covered this way becomes `[UNK]` as a whole, as in BERT.

Training starts from the characters (the first of each word as itself, the others as `##c`) and
repeatedly merges the adjacent pair with the highest likelihood score
count(ab) / (count(a) * count(b)), so pairs whose parts are rarely seen apart merge first (BPE
would take the most frequent pair). Ties go to the lexicographically smallest (a, b). Counts are
updated incrementally like bpe_train.py; since a merge lowers the counts of a and b, every pair
holding a or b is re-scored.

Decoding joins `##` pieces to the piece before and words with spaces, without a space before
punctuation; it cannot restore case, accents or exact whitespace.
References: Schuster & Nakajima 2012; Devlin et al. 2019 (BERT, tokenization.py); the Hugging Face
course's WordPiece chapter. Not here: byte-level fallback (use BPE for that).
"""

from __future__ import annotations

import heapq
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import regex

from scratchllm.errors import UserError
from scratchllm.tokenizer.base import AllowedSpecial, Tokenizer, resolve_allowed, split_special

PREFIX = "##"  # BERT's continuation mark
UNK = "[UNK]"
# BERT's special tokens, given the first ids as in its vocab.txt
SPECIAL_TOKENS = ("[PAD]", UNK, "[CLS]", "[SEP]", "[MASK]")
# BERT leaves words longer than this as [UNK] instead of searching them
MAX_CHARS = 100
WORD = regex.compile(r"\p{Han}|[^\s\p{P}\p{S}\p{Han}]+|[\p{P}\p{S}]")
NO_SPACE_BEFORE = regex.compile(r" ([,.:;?!)\]}'%])")


def split_words(text: str, lowercase: bool = True) -> list[str]:
    """BERT-style pre-tokenisation.

    >>> split_words("Héllo, World! 你好")
    ['hello', ',', 'world', '!', '你', '好']
    """
    if lowercase:
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    return WORD.findall(text)


def greedy_pieces(word: str, vocab: dict[str, int], max_chars: int = MAX_CHARS) -> list[str] | None:
    """Longest-match-first split of `word` into vocabulary pieces; None if it cannot be covered.

    >>> greedy_pieces("unaffable", {"un": 0, "##aff": 1, "##able": 2, "##a": 3})
    ['un', '##aff', '##able']
    >>> greedy_pieces("xyz", {"x": 0}) is None
    True
    """
    if len(word) > max_chars:
        return None
    out: list[str] = []
    start = 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else PREFIX + word[start:end]
            if piece in vocab:
                out.append(piece)
                break
            end -= 1
        else:
            return None
        start = end
    return out


def join_pieces(pieces: Sequence[str]) -> str:
    """Glue `##` pieces to the one before, separate words by a space, none before punctuation.

    >>> join_pieces(["un", "##aff", "##able", "dog", "."])
    'unaffable dog.'
    """
    out: list[str] = []
    for p in pieces:
        if p.startswith(PREFIX) and out:
            out.append(p[len(PREFIX):])
        else:
            if out:
                out.append(" ")
            out.append(p)
    return NO_SPACE_BEFORE.sub(r"\1", "".join(out))


def train_wordpiece(word_counts: dict[str, int], vocab_size: int, n_special: int,
                    progress: bool = False) -> list[str]:
    """Learn WordPiece tokens (characters first, then merges) until `vocab_size - n_special` tokens.

    The Hugging Face course's example: "##g ##s" scores 5/(20*5) = 1/20, the best; then six pairs
    tie at 1/36 and the smallest, ("##u", "##g"), wins.

    >>> train_wordpiece({"hug": 10, "pug": 5, "pun": 12, "bun": 4, "hugs": 5}, 9, 0)[-2:]
    ['##gs', '##ug']
    """
    tokens: list[str] = []
    tid: dict[str, int] = {}

    def token(s: str) -> int:
        if s not in tid:
            tid[s] = len(tokens)
            tokens.append(s)
        return tid[s]

    alphabet = sorted({c if i == 0 else PREFIX + c for w in word_counts for i, c in enumerate(w)})
    for s in alphabet:
        token(s)
    target = vocab_size - n_special
    if target < len(tokens):
        raise UserError(f"vocab_size {vocab_size} is smaller than the WordPiece base alphabet: {len(tokens)} "
                        f"characters (with and without ##) + {n_special} special tokens = "
                        f"{len(tokens) + n_special}; use at least that")
    words = [[tid[c if i == 0 else PREFIX + c] for i, c in enumerate(w)] for w in word_counts]
    weights = list(word_counts.values())
    tcount: Counter[int] = Counter()
    pcount: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    tok_pairs: dict[int, set[tuple[int, int]]] = {}
    for w, ids in enumerate(words):
        c = weights[w]
        for t in ids:
            tcount[t] += c
        for p in zip(ids, ids[1:]):
            pcount[p] = pcount.get(p, 0) + c
            where.setdefault(p, set()).add(w)
            tok_pairs.setdefault(p[0], set()).add(p)
            tok_pairs.setdefault(p[1], set()).add(p)

    def score(p: tuple[int, int]) -> float:
        return pcount.get(p, 0) / (tcount[p[0]] * tcount[p[1]])

    def push(p: tuple[int, int]) -> None:
        if pcount.get(p, 0) > 0:
            heapq.heappush(heap, (-score(p), tokens[p[0]], tokens[p[1]], p))

    heap: list = []
    for p in pcount:
        push(p)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=target - len(tokens), desc="WordPiece merges", unit="merge")
    while len(tokens) < target and heap:
        neg, _, _, (a, b) = heapq.heappop(heap)
        if pcount.get((a, b), 0) <= 0:
            continue
        if -neg != score((a, b)):  # stale: re-queue with the current score
            push((a, b))
            continue
        sa, sb = tokens[a], tokens[b]
        z = token(sa + (sb[len(PREFIX):] if sb.startswith(PREFIX) else sb))
        if bar is not None:
            bar.update(1)
        touched: set[tuple[int, int]] = set()
        for w in where.pop((a, b), ()):
            ids = words[w]
            new: list[int] = []
            i = 0
            while i < len(ids):
                if ids[i] == a and i + 1 < len(ids) and ids[i + 1] == b:
                    new.append(z)
                    i += 2
                else:
                    new.append(ids[i])
                    i += 1
            if len(new) == len(ids):
                continue
            c = weights[w]
            for t in ids:
                tcount[t] -= c
            for t in new:
                tcount[t] += c
            for p in zip(ids, ids[1:]):
                pcount[p] -= c
            for p in zip(new, new[1:]):
                pcount[p] = pcount.get(p, 0) + c
                if z in p:
                    where.setdefault(p, set()).add(w)
                    tok_pairs.setdefault(p[0], set()).add(p)
                    tok_pairs.setdefault(p[1], set()).add(p)
                    touched.add(p)
            words[w] = new
        pcount.pop((a, b), None)
        # counts of a, b and z changed, so every pair holding one of them has a new score
        for t in (a, b, z):
            live = {p for p in tok_pairs.get(t, ()) if pcount.get(p, 0) > 0}
            tok_pairs[t] = live
            touched |= live
        for p in touched:
            push(p)
    if bar is not None:
        bar.close()
    if len(tokens) < target:
        raise UserError(f"vocab_size {vocab_size} is larger than this text supports: every word is already one "
                        f"token at {len(tokens) + n_special}; use a vocab_size of at most that or more text")
    return tokens


class WordPieceTokenizer(Tokenizer):
    """BERT-style WordPiece: `tokens[i]` is the string of id i (special tokens included)."""

    kind = "wordpiece"

    def __init__(self, tokens: Sequence[str], special_tokens: dict[str, int] | None = None,
                 lowercase: bool = True, max_chars: int = MAX_CHARS) -> None:
        super().__init__(special_tokens)
        if UNK not in self.special_tokens:
            raise UserError(f"a WordPiece tokenizer needs the {UNK} token")
        self.tokens = list(tokens)
        self.lowercase = lowercase
        self.max_chars = max_chars
        self.stoi = {t: i for i, t in enumerate(self.tokens) if t not in self.special_tokens}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, texts: Iterable[str] | str, vocab_size: int, special_tokens: Sequence[str] = SPECIAL_TOKENS,
              lowercase: bool = True, progress: bool = False) -> WordPieceTokenizer:
        if isinstance(texts, str):
            texts = [texts]
        specials = list(special_tokens) + ([UNK] if UNK not in special_tokens else [])
        counts: Counter[str] = Counter()
        for text in texts:
            for piece, special in split_special(text, {s: 0 for s in specials}, set(specials)):
                if not special:
                    counts.update(split_words(piece, lowercase))
        if not counts:
            raise UserError("cannot train WordPiece on empty text")
        learned = train_wordpiece(dict(sorted(counts.items())), vocab_size, len(specials), progress)
        return cls(specials + learned, {s: i for i, s in enumerate(specials)}, lowercase)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, allowed_special: AllowedSpecial = "none") -> list[int]:
        allowed = resolve_allowed(allowed_special, self.special_tokens)
        unk = self.special_tokens[UNK]
        ids: list[int] = []
        for piece, special in split_special(text, self.special_tokens, allowed):
            if special:
                ids.append(self.special_tokens[piece])
                continue
            for word in split_words(piece, self.lowercase):
                out = self._cache.get(word)
                if out is None:
                    pieces = greedy_pieces(word, self.stoi, self.max_chars)
                    out = [unk] if pieces is None else [self.stoi[p] for p in pieces]
                    self._cache[word] = out
                ids.extend(out)
        return ids

    def decode(self, ids: Sequence[int], errors: str = "replace") -> str:
        n = len(self.tokens)
        if any(not 0 <= int(i) < n for i in ids):
            self.check_ids(ids)
        return join_pieces([self.tokens[int(i)] for i in ids])

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "special_tokens": self.special_tokens,
                "lowercase": self.lowercase, "max_chars": self.max_chars}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WordPieceTokenizer:
        return cls(d["tokens"], d.get("special_tokens"), d.get("lowercase", True), d.get("max_chars", MAX_CHARS))
