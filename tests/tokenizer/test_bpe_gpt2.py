"""GPT-2 parity: our two encoders against tiktoken's GPT-2 and Hugging Face tokenizers, same files."""

import pytest
from hypothesis import given, settings
from tok_helpers import hard_text

from scratchllm.errors import UserError
from scratchllm.tokenizer.bpe import BPETokenizer


def test_tiktoken_reference_loads_offline(tiktoken_gpt2):
    assert tiktoken_gpt2.n_vocab == 50257
    assert tiktoken_gpt2.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids


def test_gpt2_vocabulary_matches_files(gpt2_tok, tiktoken_gpt2):
    assert gpt2_tok.vocab_size == 50257 and gpt2_tok.eot_id == 50256
    assert len(gpt2_tok.merges) == 50000
    for i in (0, 1, 255, 256, 1000, 50255):
        assert gpt2_tok.token_bytes(i) == tiktoken_gpt2.decode_single_token_bytes(i)


def test_tinyshakespeare_token_for_token(gpt2_tok, tiktoken_gpt2, shakespeare):
    expected = tiktoken_gpt2.encode_ordinary(shakespeare)
    assert len(expected) == 338025
    assert gpt2_tok.encode_tiktoken(shakespeare) == expected
    assert gpt2_tok.encode_python(shakespeare) == expected
    assert gpt2_tok.decode(expected) == shakespeare


@settings(max_examples=300, deadline=None)
@given(hard_text)
def test_random_unicode_token_for_token(gpt2_tok, tiktoken_gpt2, s):
    expected = tiktoken_gpt2.encode_ordinary(s)
    assert gpt2_tok.encode_python(s) == expected
    assert gpt2_tok.encode_tiktoken(s) == expected
    assert gpt2_tok.decode(expected) == s


def test_hugging_face_from_the_same_files(gpt2_tok, gpt2_files, shakespeare):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    encoder_json, vocab_bpe = gpt2_files
    hf = Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    text = shakespeare[:300_000] + "\n 😀 你好 e\u0301 don't  \t 12345 "
    ids = hf.encode(text, add_special_tokens=False).ids
    assert gpt2_tok.encode(text) == ids
    assert hf.decode(ids) == text


def test_special_tokens_like_tiktoken(gpt2_tok, tiktoken_gpt2):
    s = "a<|endoftext|>b"
    assert gpt2_tok.encode(s, allowed_special="all") == tiktoken_gpt2.encode(s, allowed_special="all")
    assert gpt2_tok.encode_python(s, allowed_special={"<|endoftext|>"}) == [64, 50256, 65]
    for encode in (gpt2_tok.encode_python, gpt2_tok.encode_tiktoken):
        with pytest.raises(UserError, match="special token '<|endoftext|>' at character 1"):
            encode(s)
    with pytest.raises(UserError, match="not a special token"):
        gpt2_tok.encode(s, allowed_special={"<|im_start|>"})


def test_missing_and_mismatched_files(tmp_path, gpt2_files):
    with pytest.raises(UserError, match="not found"):
        BPETokenizer.from_gpt2_files(tmp_path / "encoder.json", tmp_path / "vocab.bpe")
    bad = tmp_path / "vocab.bpe"
    bad.write_text("#version: 0.2\nĠ zzzzqq\n", encoding="utf-8")
    with pytest.raises(UserError, match="same model"):
        BPETokenizer.from_gpt2_files(gpt2_files[0], bad)
    trunc = tmp_path / "encoder.json"
    trunc.write_text('{"a": 0, ', encoding="utf-8")
    with pytest.raises(UserError, match="not valid JSON"):
        BPETokenizer.from_gpt2_files(trunc, gpt2_files[1])


def test_gpt2_from_data_dir(shared_data, monkeypatch):
    from scratchllm.tokenizer import gpt2, gpt2_files

    assert gpt2(shared_data).encode("Hello world") == [15496, 995]
    monkeypatch.setenv("SCRATCHLLM_DATA_DIR", str(shared_data))
    assert gpt2_files() == (shared_data / "gpt2" / "encoder.json", shared_data / "gpt2" / "vocab.bpe")
    monkeypatch.delenv("SCRATCHLLM_DATA_DIR")
    with pytest.raises(UserError, match="SCRATCHLLM_DATA_DIR") as e:
        gpt2()
    assert "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/vocab.bpe" in str(e.value)


def test_gpt2_files_are_found_where_data_get_puts_them(shared_data, monkeypatch, tmp_path):
    """The tokenizer layer's lookup and the data layer's fetch agree: what `data get gpt2` caches is found."""
    import shutil

    from scratchllm.data.sources import gpt2_tokenizer
    from scratchllm.tokenizer import gpt2_files

    monkeypatch.delenv("SCRATCHLLM_DATA_DIR", raising=False)
    monkeypatch.setenv("SCRATCHLLM_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache" / "gpt2").mkdir(parents=True)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(shared_data / "gpt2" / name, tmp_path / "cache" / "gpt2" / name)
    assert gpt2_files() == (tmp_path / "cache" / "gpt2" / "encoder.json", tmp_path / "cache" / "gpt2" / "vocab.bpe")
    assert gpt2_tokenizer(offline=True).encode("Hello world") == [15496, 995]
    with pytest.raises(UserError, match="does not exist"):
        gpt2_files(tmp_path / "typo")
