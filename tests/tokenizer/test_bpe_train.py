"""BPE training: a hand-checked example, equality with a naive full-recount trainer, determinism, errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scratchllm.errors import UserError
from scratchllm.tokenizer.bpe import BPETokenizer
from scratchllm.tokenizer.bpe_train import count_chunks, merge, train_bpe, train_merges
from scratchllm.tokenizer.patterns import GPT2_PATTERN


def naive_train(chunk_counts, n_merges):
    """The textbook loop: recount every pair after every merge (slow, obviously right)."""
    vocab = [bytes([i]) for i in range(256)]
    words = [(list(c.encode("utf-8")), n) for c, n in chunk_counts.items()]
    merges = []
    while len(vocab) - 256 < n_merges:
        stats = {}
        for ids, n in words:
            for p in zip(ids, ids[1:]):
                stats[p] = stats.get(p, 0) + n
        if not stats:
            break
        a, b = min(stats, key=lambda p: (-stats[p], vocab[p[0]], vocab[p[1]]))
        tok = vocab[a] + vocab[b]
        if tok in vocab:
            z = vocab.index(tok)
        else:
            z = len(vocab)
            vocab.append(tok)
        merges.append((a, b, z))
        words = [(merge(ids, a, b, z), n) for ids, n in words]
    return vocab, merges


def test_worked_example_by_hand():
    # "aaabdaaabac": "aa" x4 -> 256; then ("aa","a") and ("a","b") tie at 2, b"a" < b"aa" -> "ab" = 257;
    # then "aa"+"ab" x2 -> 258. The text becomes [258, 100, 258, 97, 99].
    vocab, merges = train_merges({"aaabdaaabac": 1}, 3)
    assert merges == [(97, 97, 256), (97, 98, 257), (256, 257, 258)]
    tok = BPETokenizer(vocab, merges, pattern=r"\w+", special_tokens={})
    for encode in (tok.encode_python, tok.encode_tiktoken):
        assert encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.decode([258, 100]) == "aaabd"


def test_matches_naive_trainer_on_real_text(shared_data):
    counts = count_chunks([(shared_data / "the-verdict.txt").read_text(encoding="utf-8")], GPT2_PATTERN)
    assert train_merges(counts, 150) == naive_train(counts, 150)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="ab c\u00e9", max_size=30), min_size=1, max_size=8), st.integers(1, 40))
def test_matches_naive_trainer_on_random_text(docs, n):
    counts = count_chunks(docs, GPT2_PATTERN)
    assert train_merges(counts, n) == naive_train(counts, n)


def test_deterministic_and_documents_kept_apart():
    docs = ["the cat sat on the mat. " * 20, "a dog<|endoftext|>ate the hat " * 10]
    v1, m1 = train_bpe(docs, 270, GPT2_PATTERN, ["<|endoftext|>"])
    v2, m2 = train_bpe(list(docs), 270, GPT2_PATTERN, ["<|endoftext|>"])
    assert (v1, m1) == (v2, m2)
    assert not any(b"<|" in t or b"|>" in t for t in v1)  # special tokens are cut out, never merged
    # "mat. " then "a dog": merging across documents would need the chunk ". a", which never exists
    assert b". a" not in v1
    tok = BPETokenizer.train(docs, 270, special_tokens=["<|endoftext|>"])
    assert tok.vocab_size == 270 and tok.eot_id == 269 and tok.token_bytes(269) == b"<|endoftext|>"


def test_gpt4_pattern_and_custom_regex():
    text = "In 2024, 1234567 people wrote\r\n\r\nlines. " * 10
    tok = BPETokenizer.train(text, 275, pattern="gpt4")
    assert all(not (t.isdigit() and len(t) > 3) for t in tok.vocab)  # cl100k caps digit runs at 3
    assert tok.encode_python(text) == tok.encode_tiktoken(text)
    tok2 = BPETokenizer.train(text, 270, pattern=r"\S+|\s+")
    assert tok2.decode(tok2.encode(text)) == text
    with pytest.raises(UserError, match="not a valid regex"):
        BPETokenizer.train(text, 280, pattern="(")


def test_errors_are_one_clear_line():
    with pytest.raises(UserError, match="smaller than the byte-level base alphabet.*at least 257"):
        BPETokenizer.train("hello", 200)
    with pytest.raises(UserError, match="empty text"):
        BPETokenizer.train([""], 300)
    # chunks "hello", " hello": el, ell, ello, hello, then " "+hello: 5 merges, 256 + 1 special + 5 = 262
    with pytest.raises(UserError, match=r"needs 43 merges but this text supports only 5 .*at most 262"):
        BPETokenizer.train("hello hello", 300)
    with pytest.raises(UserError, match="min_frequency=5"):
        BPETokenizer.train("hello hello", 259, min_frequency=5)


def test_progress_bar(capsys):
    BPETokenizer.train("the quick brown fox " * 5, 270, progress=True)
    assert "BPE merges" in capsys.readouterr().err
