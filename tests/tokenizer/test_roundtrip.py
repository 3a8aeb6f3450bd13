"""decode(encode(s)) == s for arbitrary text, for every tokenizer that can represent it, with and
without special tokens; the same interface on every kind."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_helpers import hard_text

from scratchllm.errors import UserError
from scratchllm.tokenizer import load, train

ALPHABET = "abc xyz\n\t😀你é\u0301"


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=ALPHABET))
def test_char_round_trip(s):
    tok = train("char", [ALPHABET], special_tokens=["<|endoftext|>"])
    assert tok.decode(tok.encode(s)) == s
    both = s + "<|endoftext|>" + s
    ids = tok.encode(both, allowed_special="all")
    assert ids.count(tok.eot_id) == 1 and tok.decode(ids) == both


@settings(max_examples=80, deadline=None)
@given(hard_text, hard_text)
def test_bpe_round_trip_with_special_tokens(trained_bpe, a, b):
    s = a + "<|endoftext|>" + b
    ids = trained_bpe.encode(s, allowed_special={"<|endoftext|>"})
    assert ids == trained_bpe.encode_python(s, allowed_special="all")
    assert ids.count(trained_bpe.eot_id) == 1 and trained_bpe.decode(ids) == s
    assert trained_bpe.encode_batch([a, b]) == [trained_bpe.encode(a), trained_bpe.encode(b)]


@pytest.mark.parametrize("kind, size", [("char", None), ("words", None), ("bpe", 300), ("wordpiece", 200)])
def test_one_interface(kind, size, shared_data, tmp_path):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    tok = train(kind, [text], size)
    ids = tok.encode(text[:2000])
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert isinstance(tok.decode(ids), str) and isinstance(tok.decode_bytes(ids), bytes)
    again = load(tok.save(tmp_path / f"{kind}.json"))
    assert type(again) is type(tok) and again.encode(text[:2000]) == ids and again.vocab_size == tok.vocab_size
    special = next(iter(tok.special_tokens), None)
    if special:
        with pytest.raises(UserError, match="special token"):
            tok.encode(f"x {special} y")
    with pytest.raises(UserError):
        tok.decode([tok.vocab_size])


def test_train_rejects_bad_options():
    with pytest.raises(UserError, match="does not apply to char"):
        train("char", ["abc"], pattern="gpt4")
    with pytest.raises(UserError, match="unknown|cannot train"):
        train("sentencepiece", ["abc"])
    with pytest.raises(UserError, match="distinct characters"):
        train("char", ["abc"], 10)
