"""The text API: stop strings, streaming whole characters, batches of text prompts, the EOS convention."""

import pytest
from gen_helpers import ScriptedModel, byte_tokenizer, tiny_model

from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate import TOKENIZER_EOS, complete_batch, generate, generate_text, stream
from scratchllm.generate.text import TextTracker

GREEDY = SampleConfig(temperature=0, max_new_tokens=50)


def test_stop_string_split_across_tokens():
    tok = byte_tokenizer()
    script = list(b"Hello END world")
    m = ScriptedModel([script])
    config = GREEDY.replace(stop=("END",))
    done = complete_batch(m, tok, [[1]], config)[0]
    assert tok.decode(done.ids) == done.text == "Hello " and done.finish_reason == "stop"
    m = ScriptedModel([script])
    assert generate_text(m, tok, "x", config) == "Hello "


def test_stop_string_starting_inside_a_token():
    tok = byte_tokenizer([b"lo E", b"ND!"])
    script = [ord("H"), ord("e"), ord("l"), 256, 257, ord("x")]
    config = GREEDY.replace(stop=("END",))
    assert generate_text(ScriptedModel([script]), tok, "x", config) == "Hello "
    ids = complete_batch(ScriptedModel([script]), tok, [[1]], config)[0].ids
    assert ids == [ord("H"), ord("e"), ord("l")]  # the token holding the stop's start is dropped


def test_stream_holds_back_possible_stop_prefixes():
    tok = byte_tokenizer()
    m = ScriptedModel([list(b"a#b##c###d")])
    pieces = list(stream(m, tok, "x", GREEDY.replace(stop=("###",))))
    assert "".join(pieces) == "a#b##c"
    assert all("###" not in p for p in pieces)
    # without a stop, held text is flushed at the end
    pieces = list(stream(ScriptedModel([list(b"ab##")]), tok, "x", GREEDY.replace(max_new_tokens=4, stop=("###",))))
    assert "".join(pieces) == "ab##"


def test_stream_stops_at_eos_of_the_tokenizer():
    tok = byte_tokenizer()
    eot = tok.eot_id
    m = ScriptedModel([list(b"hi") + [eot] + list(b"there")], vocab_size=tok.vocab_size)
    assert list(stream(m, tok, "x", GREEDY)) == ["h", "i"]


EMOJI_TEXT = "a🙂b中文🎉!"


def test_stream_never_yields_half_a_character():
    tok = byte_tokenizer()
    m = ScriptedModel([list(EMOJI_TEXT.encode())])
    config = GREEDY.replace(max_new_tokens=len(EMOJI_TEXT.encode()))
    pieces = list(stream(m, tok, "x", config))
    assert "".join(pieces) == EMOJI_TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert "🙂" in pieces and "🎉" in pieces  # each 4-byte emoji came out whole, in one piece


def test_tracker_on_every_split_of_an_emoji():
    data = "x🙂y".encode()
    for cut1 in range(1, len(data)):
        for cut2 in range(cut1, len(data)):
            parts = [data[:cut1], data[cut1:cut2], data[cut2:]]
            # build a tokenizer that has exactly these parts as tokens
            extra = [p for p in parts if len(p) > 1]
            t = byte_tokenizer(extra)
            ids = [t.ranks[p] for p in parts if p]
            tr = TextTracker(t)
            pieces = [tr.push(i) for i in ids] + [tr.finish()]
            assert "".join(pieces) == "x🙂y"
            assert all("\ufffd" not in p for p in pieces)


def test_tracker_with_gpt2_bpe(shared_data):
    from scratchllm.tokenizer.bpe import BPETokenizer

    tok = BPETokenizer.from_gpt2_files(shared_data / "gpt2" / "encoder.json", shared_data / "gpt2" / "vocab.bpe")
    text = "Emoji 🙂🎉 and 日本語 text"
    ids = tok.encode(text)
    partial = [i for i in ids if not _valid_utf8(tok.decode_bytes([i]))]
    assert partial, "GPT-2 splits these characters across byte-level tokens"
    tr = TextTracker(tok, stops=["text"])
    pieces = [tr.push(i) for i in ids] + [tr.finish()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == "Emoji 🙂🎉 and 日本語 "


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_empty_text_prompt_starts_from_a_boundary():
    from scratchllm.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train("\nabc")  # no <|endoftext|>: starts from id 0, "\n"
    m = ScriptedModel([[1, 2, 3]], vocab_size=tok.vocab_size)
    assert generate_text(m, tok, "", GREEDY.replace(max_new_tokens=3)) == "abc"
    tok = byte_tokenizer()
    assert generate_text(ScriptedModel([list(b"hey")]), tok, "", GREEDY.replace(max_new_tokens=3)) == "hey"


# --- one end-of-text convention -------------------------------------------------------------------
def test_eos_convention_with_a_tokenizer():
    tok = byte_tokenizer()
    script = list(b"hi") + [tok.eot_id] + list(b"yo")
    config = GREEDY.replace(max_new_tokens=5)
    # TOKENIZER_EOS (the default): the tokenizer's <|endoftext|> ends the text and is not returned
    assert generate_text(ScriptedModel([script], vocab_size=tok.vocab_size), tok, "x", config) == "hi"
    got = complete_batch(ScriptedModel([script], vocab_size=tok.vocab_size), tok, ["x"], config,
                         eos_id=TOKENIZER_EOS)[0]
    assert (got.ids, got.text, got.finish_reason) == (list(b"hi"), "hi", "eos")
    # None: no end-of-text id; the tokenizer's <|endoftext|> is text like any other token
    got = complete_batch(ScriptedModel([script], vocab_size=tok.vocab_size), tok, ["x"], config, eos_id=None)[0]
    assert got.ids == script and got.text == "hi<|endoftext|>yo" and got.finish_reason == "length"
    assert "".join(stream(ScriptedModel([script], vocab_size=tok.vocab_size), tok, "x", config,
                          eos_id=None)) == "hi<|endoftext|>yo"
    # an id: that id ends the text
    assert generate_text(ScriptedModel([script], vocab_size=tok.vocab_size), tok, "x", config,
                         eos_id=ord("y")) == "hi<|endoftext|>"
    with pytest.raises(UserError, match="eos_id must be a token id"):
        generate_text(ScriptedModel([script], vocab_size=tok.vocab_size), tok, "x", config, eos_id=-1)


def test_tokenizer_eos_of_a_tokenizer_without_one_is_none():
    from scratchllm.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train("\nabc")  # no <|endoftext|>: nothing ends the text early
    assert tok.eot_id is None
    assert generate_text(ScriptedModel([[1, 2, 3, 1]], vocab_size=tok.vocab_size), tok, "a",
                         GREEDY.replace(max_new_tokens=4)) == "abca"


# --- batches of text prompts ------------------------------------------------------------------------
def test_complete_batch_equals_each_prompt_alone_for_greedy():
    tok = byte_tokenizer()
    m = tiny_model(vocab_size=tok.vocab_size)
    prompts = ["to be", "or not to be, that", "x", ""]
    config = GREEDY.replace(max_new_tokens=20)
    batch = complete_batch(m, tok, prompts, config)
    for p, got in zip(prompts, batch):
        alone = generate_text(m, tok, p, config)
        assert got.text == alone
        assert got.ids == generate(m, tok.encode(p) or [tok.eot_id], config, eos_id=tok.eot_id)
        assert got.finish_reason in ("eos", "length")


def test_complete_batch_stops_each_row_on_its_own():
    tok = byte_tokenizer()
    m = ScriptedModel([list(b"ab\n\ncd"), list(b"xyzw\n\n"), list(b"12") + [tok.eot_id]], vocab_size=tok.vocab_size)
    out = complete_batch(m, tok, ["p", "q", "r"], GREEDY.replace(max_new_tokens=6, stop=("\n\n",)))
    assert [(c.text, c.finish_reason) for c in out] == [("ab", "stop"), ("xyzw", "stop"), ("12", "eos")]
    assert [c.ids for c in out] == [list(b"ab"), list(b"xyzw"), list(b"12")]
    with pytest.raises(UserError, match="no prompts"):
        complete_batch(m, tok, [], GREEDY)
