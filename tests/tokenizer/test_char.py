import pytest

from scratchllm.errors import UserError
from scratchllm.tokenizer import load
from scratchllm.tokenizer.char import CharTokenizer


def test_char_round_trip_and_save(tmp_path):
    t = CharTokenizer.train("hello world", special_tokens=["<|endoftext|>"])
    ids = t.encode("hold<|endoftext|>", allowed_special="all")
    assert ids[-1] == t.eot_id and t.decode(ids) == "hold<|endoftext|>"
    t2 = load(t.save(tmp_path / "t.json"))
    assert t2.encode("world") == t.encode("world") and t2.vocab_size == t.vocab_size


def test_char_refuses_unknown_and_special():
    t = CharTokenizer.train("abc<|endoftext|>", special_tokens=["<|endoftext|>"])
    with pytest.raises(UserError, match="not in this character vocabulary"):
        t.encode("abz")
    with pytest.raises(UserError, match="special token"):
        t.encode("a<|endoftext|>")
