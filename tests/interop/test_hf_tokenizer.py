"""Hugging Face tokenizer files read by our BPE (tokenizer.hf), and ours written for transformers.

Each case encodes the same torture text with our BPE (both engines: tiktoken and the Python
reference) and with the `tokenizers` library / transformers' AutoTokenizer loading the same file.
"""

from __future__ import annotations

import json

import pytest
from interop_helpers import TORTURE, gpt2_tokenizer_json, gpt2_vocab_merges, trained_bpe

from scratchllm.errors import UserError
from scratchllm.tokenizer.bpe import BPETokenizer
from scratchllm.tokenizer.hf import export_hf, from_hf_json, hf_folder_tokenizer, to_hf_dict


def both_engines(tok: BPETokenizer, text: str) -> list[int]:
    a = tok.encode_tiktoken(text, allowed_special="all")
    assert tok.encode_python(text, allowed_special="all") == a
    return a


def test_gpt2_tokenizer_json_encodes_as_tokenizers(tmp_path):
    from tokenizers import Tokenizer

    path = gpt2_tokenizer_json(tmp_path / "tokenizer.json")
    ours = from_hf_json(path)
    ref = Tokenizer.from_file(str(path))
    assert ours.vocab_size == ref.get_vocab_size() == 50257
    assert ours.special_tokens == {"<|endoftext|>": 50256}
    assert both_engines(ours, TORTURE) == ref.encode(TORTURE, add_special_tokens=False).ids


def test_gpt2_vocab_json_merges_txt(tmp_path):
    """The hub's older GPT-2 files (vocab.json + merges.txt, no tokenizer.json)."""
    from tokenizers import Tokenizer
    folder = gpt2_vocab_merges(tmp_path / "gpt2")
    ours = hf_folder_tokenizer(folder)
    ref = Tokenizer.from_file(str(gpt2_tokenizer_json(tmp_path / "tokenizer.json")))
    assert both_engines(ours, TORTURE) == ref.encode(TORTURE, add_special_tokens=False).ids


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4"])
def test_our_bpe_exported_loads_in_autotokenizer(tmp_path, pattern):
    """Our trained BPE as tokenizer.json: AutoTokenizer encodes identically; read back, it is the same BPE."""
    from transformers import AutoTokenizer

    from scratchllm.interop.hf import tokenizer_config

    tok = trained_bpe(pattern)
    folder = tmp_path / "tok"
    folder.mkdir()
    export_hf(tok, folder / "tokenizer.json")
    eos = tok.special_tokens["<|endoftext|>"]
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok, {"eos_token_id": eos})))
    auto = AutoTokenizer.from_pretrained(folder)
    assert auto.encode(TORTURE, add_special_tokens=False) == both_engines(tok, TORTURE)
    assert auto.eos_token == "<|endoftext|>"
    back = from_hf_json(folder / "tokenizer.json")  # the Split regex + ByteLevel form for gpt4
    assert (back.vocab, back.merges, back.pattern, back.special_tokens) == \
        (tok.vocab, tok.merges, tok.pattern, tok.special_tokens)


def test_refused_tokenizers_say_why(tmp_path):
    tok = trained_bpe()
    base = to_hf_dict(tok)
    cases = {
        "WordPiece": lambda d: d["model"].update(type="WordPiece"),
        "byte_fallback": lambda d: d["model"].update(byte_fallback=True),
        "normalizer 'Lowercase'": lambda d: d.update(normalizer={"type": "Lowercase"}),
        "merge order": lambda d: d["model"]["merges"].reverse(),
    }
    for needle, edit in cases.items():
        d = json.loads(json.dumps(base))
        edit(d)
        p = tmp_path / "tokenizer.json"
        p.write_text(json.dumps(d))
        with pytest.raises(UserError, match=needle.split()[-1].strip("'")) as e:
            from_hf_json(p)
        assert str(p) in str(e.value)


def test_nfc_normalizer_kept_with_a_warning(tmp_path):
    """Qwen's tokenizer.json normalises to NFC: read with a warning; text already in NFC encodes the same."""
    import unicodedata

    from tokenizers import Tokenizer

    d = to_hf_dict(trained_bpe("gpt4"))
    d["normalizer"] = {"type": "NFC"}
    p = tmp_path / "tokenizer.json"
    p.write_text(json.dumps(d))
    with pytest.warns(UserWarning, match="NFC"):
        ours = from_hf_json(p)
    text = unicodedata.normalize("NFC", TORTURE)
    assert both_engines(ours, text) == Tokenizer.from_file(str(p)).encode(text, add_special_tokens=False).ids
