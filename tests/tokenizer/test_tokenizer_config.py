"""TokenizerConfig: validation messages name the field; build() follows it."""

import pytest

from scratchllm.config.base import parse_overrides
from scratchllm.config.tokenizer import TokenizerConfig
from scratchllm.errors import ConfigError
from scratchllm.tokenizer import build


def test_defaults_and_overrides():
    c = TokenizerConfig()
    assert (c.kind, c.vocab_size, c.pattern, c.special_tokens) == ("bpe", None, "gpt2", ("<|endoftext|>",))
    c2 = c.override(parse_overrides(["--vocab_size", "300", "--pattern", "gpt4"]))
    assert c2.vocab_size == 300 and c2.pattern == "gpt4"
    assert TokenizerConfig.from_dict(c2.to_dict()) == c2


@pytest.mark.parametrize("bad, field", [({"kind": "sentencepiece"}, "tokenizer.kind"),
                                        ({"vocab_size": 0}, "tokenizer.vocab_size"),
                                        ({"pattern": "("}, "tokenizer.pattern"),
                                        ({"special_tokens": ["<a>", "<a>"]}, "tokenizer.special_tokens")])
def test_validation_names_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        TokenizerConfig.from_dict(bad)


def test_build(shared_data, tmp_path):
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    bpe = build(TokenizerConfig(vocab_size=300), [text])
    assert bpe.kind == "bpe" and bpe.vocab_size == 300 and bpe.eot_id == 299
    assert build(TokenizerConfig(kind="gpt2"), data_dir=shared_data).encode("Hello world") == [15496, 995]
    path = bpe.save(tmp_path)
    assert build(TokenizerConfig(path=str(path))).encode("the end") == bpe.encode("the end")
    assert build(TokenizerConfig(kind="char"), [text]).eot_id is not None
    assert build(TokenizerConfig(kind="words"), [text]).vocab_size == 1132
    assert "[CLS]" in build(TokenizerConfig(kind="wordpiece", vocab_size=300), [text]).special_tokens


def test_train_rejects_a_vocab_size_that_is_not_positive():
    from scratchllm.errors import UserError
    from scratchllm.tokenizer import train

    for kind in ("bpe", "wordpiece", "words"):
        with pytest.raises(UserError, match="vocab_size must be a positive number of tokens, got 0") as e:
            train(kind, ["some text"], 0)
        assert "4096" not in str(e.value)
