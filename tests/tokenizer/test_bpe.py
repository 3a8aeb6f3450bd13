"""Our trained BPE: both encoders agree, round trips, save/load, Hugging Face export, token_bytes."""

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tok_helpers import hard_text

from scratchllm.errors import UserError
from scratchllm.tokenizer import load
from scratchllm.tokenizer.bpe import BPETokenizer
from scratchllm.tokenizer.hf import export_hf
from scratchllm.tokenizer.patterns import GPT2_PATTERN, GPT2_PATTERN_ORIGINAL, pretokenize


def test_fast_path_equals_reference_on_tinyshakespeare(trained_bpe, shakespeare):
    ids = trained_bpe.encode(shakespeare)
    assert trained_bpe.engine == "tiktoken"
    assert ids == trained_bpe.encode_python(shakespeare)
    assert trained_bpe.decode(ids) == shakespeare
    assert 2.5 < len(shakespeare) / len(ids) < 3.5  # ~2.9 characters per token at vocab 2048


@settings(max_examples=200, deadline=None)
@given(hard_text)
def test_fast_path_equals_reference_and_round_trips(trained_bpe, s):
    ids = trained_bpe.encode_python(s)
    assert trained_bpe.encode_tiktoken(s) == ids
    assert trained_bpe.decode(ids) == s
    assert b"".join(trained_bpe.token_bytes(i) for i in ids) == s.encode("utf-8")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet="ab ca\u00e9", max_size=40), min_size=1, max_size=6),
       st.integers(257, 300), st.text(alphabet="abc \u00e9", max_size=60))
def test_small_random_vocabularies(tmp_path_factory, docs, vocab_size, s):
    """Tiny alphabets force ties and tokens reached by two different splits."""
    try:
        tok = BPETokenizer.train(docs, vocab_size, special_tokens=[])
    except UserError:
        return  # the text cannot support this many merges (checked in test_bpe_train)
    ids = tok.encode_python(s)
    assert tok.encode_tiktoken(s) == ids and tok.decode(ids) == s
    again = load(tok.save(tmp_path_factory.mktemp("t") / "t.json"))
    assert again.vocab == tok.vocab and again.encode(s) == ids
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(export_hf(tok, tmp_path_factory.mktemp("hf") / "tokenizer.json")))
    assert hf.encode(s, add_special_tokens=False).ids == ids


def test_save_load_keeps_everything(trained_bpe, tmp_path, shakespeare):
    path = trained_bpe.save(tmp_path)
    assert path.name == "tokenizer.scratchllm.json"
    again = load(tmp_path)
    assert isinstance(again, BPETokenizer)
    assert again.vocab == trained_bpe.vocab and again.special_tokens == trained_bpe.special_tokens
    assert again.encode(shakespeare[:20000]) == trained_bpe.encode(shakespeare[:20000])
    clone = pickle.loads(pickle.dumps(trained_bpe))  # for worker processes
    assert clone.encode("To be, or not") == trained_bpe.encode("To be, or not")


def test_gpt2_save_load_round_trip(gpt2_tok, tmp_path):
    again = load(gpt2_tok.save(tmp_path / "gpt2.json"))
    assert again.encode("Hello world, 你好!") == gpt2_tok.encode("Hello world, 你好!")
    assert again.vocab_size == 50257 and again.eot_id == 50256


def test_corrupt_file_is_a_clear_error(trained_bpe, tmp_path):
    import json

    d = json.loads(trained_bpe.save(tmp_path / "t.json").read_text())
    d["merges"][5] = [1, 2, 999999]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(UserError, match="corrupt"):
        load(tmp_path / "bad.json")
    (tmp_path / "trunc.json").write_text(json.dumps(d)[:100])
    with pytest.raises(UserError, match="not valid JSON"):
        load(tmp_path / "trunc.json")


def test_hugging_face_export_encodes_identically(trained_bpe, shakespeare, tmp_path):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(export_hf(trained_bpe, tmp_path)))
    text = shakespeare[:200_000] + "\n 😀 你好 e\u0301 don't  \t 12345 "
    ids = hf.encode(text, add_special_tokens=False).ids
    assert ids == trained_bpe.encode(text)
    assert hf.decode(ids) == text
    assert hf.encode("a<|endoftext|>b").ids == trained_bpe.encode("a<|endoftext|>b", allowed_special="all")
    gpt4 = BPETokenizer.train(shakespeare[:100_000], 600, pattern="gpt4")
    hf4 = Tokenizer.from_file(str(export_hf(gpt4, tmp_path / "gpt4.json")))
    assert hf4.encode(text, add_special_tokens=False).ids == gpt4.encode(text)


def test_hugging_face_export_of_gpt2(gpt2_tok, tmp_path, shakespeare):
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(export_hf(gpt2_tok, tmp_path)))
    text = shakespeare[:100_000] + " 😀👩‍👩‍👧 你好"
    assert hf.encode(text, add_special_tokens=False).ids == gpt2_tok.encode(text)


def test_token_bytes_and_bad_ids(trained_bpe):
    assert trained_bpe.token_bytes(65) == b"A"
    assert trained_bpe.token_bytes(trained_bpe.eot_id) == b"<|endoftext|>"
    emoji = trained_bpe.encode("😀")
    assert len(emoji) > 1 and trained_bpe.decode(emoji[:1]) == "\ufffd"  # half a character
    for bad in ([-1], [trained_bpe.vocab_size], [10**9]):
        with pytest.raises(UserError, match="outside this tokenizer's vocabulary"):
            trained_bpe.decode(bad)
    with pytest.raises(UserError, match="outside"):
        trained_bpe.token_bytes(-3)


def test_engine_choice(trained_bpe):
    tok = BPETokenizer(trained_bpe.vocab, trained_bpe.merges, special_tokens=trained_bpe.special_tokens,
                       engine="python")
    assert tok.engine == "python" and tok.encode("Hello") == trained_bpe.encode("Hello")
    assert tok.encode_batch(["a b", "c"]) == trained_bpe.encode_batch(["a b", "c"])
    with pytest.raises(UserError, match="engine"):
        tok.engine = "rust"
    with pytest.raises(UserError, match="special token"):
        trained_bpe.encode_batch(["ok", "x<|endoftext|>"])


@settings(max_examples=200, deadline=None)
@given(hard_text)
def test_fast_gpt2_pattern_splits_like_the_original(s):
    assert pretokenize(s, GPT2_PATTERN) == pretokenize(s, GPT2_PATTERN_ORIGINAL)


def test_original_pattern_on_tinyshakespeare(shakespeare):
    assert pretokenize(shakespeare, GPT2_PATTERN) == pretokenize(shakespeare, GPT2_PATTERN_ORIGINAL)
