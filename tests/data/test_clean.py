"""Cleaning: normalisation, Gutenberg boilerplate, exact and near duplicates, the report."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.data.clean import clean_documents, gutenberg_body
from scratchllm.data.dedup import (
    MinHasher,
    jaccard,
    jaccard_estimate,
    lsh_params,
    near_duplicates,
    shingle_hashes,
    shingles,
)

MODERN = """The Project Gutenberg eBook of Hamlet

This eBook is for the use of anyone anywhere.

*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***

HAMLET. To be, or not to be, that is the question.

*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***

Updated editions will replace the previous one.
"""

OLD = """The Project Gutenberg Etext of Macbeth
**Welcome To The World of Free Plain Vanilla Electronic Texts**
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

MACBETH. So foul and fair a day I have not seen.

End of the Project Gutenberg EBook of Macbeth
"""


def test_gutenberg_markers_new_and_old():
    assert gutenberg_body(MODERN) == "\nHAMLET. To be, or not to be, that is the question.\n".strip("\n")
    assert gutenberg_body(OLD) == "MACBETH. So foul and fair a day I have not seen."
    assert gutenberg_body("***START OF THIS PROJECT GUTENBERG EBOOK X***\nbody") == "body"
    plain = "No markers here.\nJust a play about Project Gutenberg fans."
    assert gutenberg_body(plain) == plain


def test_normalisation_nfc_newlines_and_whitespace():
    docs = ["cafe\u0301\r\nline two\rline three", "a   b\t c\n\n\n\nd  "]
    out, rep = clean_documents(docs, near_dedup=False)
    assert out[0] == "caf\u00e9\nline two\nline three" and out[1] == docs[1]
    assert rep.normalized == 1
    out, rep = clean_documents(docs, collapse_whitespace=True, near_dedup=False)
    assert out[1] == "a b c\n\nd" and rep.whitespace_bytes == len(docs[1]) - len("a b c\n\nd")


def test_report_counts_gutenberg_empty_and_exact_duplicates(tmp_path):
    docs = [MODERN, "Same text.\n", "   \n", "Same   text.", OLD]
    names = ["hamlet", "one", "blank", "two", "macbeth"]
    out, rep = clean_documents(docs, names, near_dedup=False)
    assert out == ["HAMLET. To be, or not to be, that is the question.", "Same text.\n",
                   "MACBETH. So foul and fair a day I have not seen."]
    assert rep.gutenberg_stripped == ["hamlet", "macbeth"] and rep.gutenberg_bytes > 200
    assert rep.empty == ["blank"]
    assert rep.exact_duplicates == [{"doc": "two", "same_as": "one", "bytes": 12}]
    assert (rep.documents_in, rep.documents_out) == (5, 3)
    assert rep.bytes_out == sum(len(t.encode()) for t in out)
    saved = json.loads(rep.save(tmp_path / "r.json").read_text())
    assert saved["exact_duplicates"] == rep.exact_duplicates and saved["options"]["near_dedup"] is False
    assert "exact duplicates removed: 1" in rep.summary()


def _text(rng, n_words, vocab):
    return " ".join(rng.choice(vocab) for _ in range(n_words))


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(300)]
    base = _text(rng, 600, vocab).split()
    hasher = MinHasher(256)
    for frac in (0.02, 0.1, 0.3):
        edited = [rng.choice(vocab) if rng.random() < frac else w for w in base]
        a, b = shingles(" ".join(base), 3), shingles(" ".join(edited), 3)
        true = len(a & b) / len(a | b)
        ha, hb = shingle_hashes(" ".join(base), 3), shingle_hashes(" ".join(edited), 3)
        assert (len(ha), len(hb)) == (len(a), len(b)) and jaccard(ha, hb) == pytest.approx(true)
        est = jaccard_estimate(hasher.signature(ha), hasher.signature(hb))
        assert abs(est - true) < 0.1, (frac, true, est)


def test_lsh_bands_find_pairs_at_the_threshold():
    b, r = lsh_params(128, 0.8)
    assert b * r <= 128 and 1 - (1 - 0.8**r) ** b >= 0.95
    assert 1 - (1 - 0.3**r) ** b < 0.05  # dissimilar pairs rarely become candidates


def test_near_duplicates_are_removed_deterministically_with_report():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(2000)]
    original = _text(rng, 800, vocab)
    words = original.split()
    near = " ".join(w if i % 97 else "CHANGED" for i, w in enumerate(words))  # ~1% of words edited
    other = _text(rng, 800, vocab)
    docs = [original, other, near, _text(rng, 50, vocab)]
    names = ["orig", "other", "copy", "short"]
    out, rep = clean_documents(docs, names)
    assert out == [original, other, docs[3]]
    [nd] = rep.near_duplicates
    assert nd["doc"] == "copy" and nd["near"] == "orig" and 0.8 <= nd["jaccard"] <= 1.0
    assert nd["bytes"] == len(near)
    out2, rep2 = clean_documents(docs, names)
    assert out2 == out and rep2.near_duplicates == rep.near_duplicates
    # with a threshold above their similarity, both stay
    out3, rep3 = clean_documents(docs, names, near_threshold=0.99)
    assert len(out3) == 4 and rep3.near_duplicates == []


def test_near_duplicates_of_char_shingles():
    a = "the quick brown fox jumps over the lazy dog " * 20
    b = a.replace("lazy", "lazy", 19).replace("dog", "cat", 1)
    found = near_duplicates([a, b, "something else entirely, not like the others at all"], 0.7,
                            shingle="char", shingle_size=5)
    assert [(f.index, f.of) for f in found] == [(1, 0)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="ab \r\n\u0301\u00e9e", max_size=30), max_size=6))
def test_cleaning_is_idempotent(docs):
    once, rep = clean_documents(docs)
    twice, rep2 = clean_documents(once)
    assert twice == once and rep2.documents_out == rep2.documents_in == rep.documents_out
    assert all("\r" not in t and t.strip() for t in once)
