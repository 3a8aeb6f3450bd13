"""The cached engine against the book's uncached loop, batching, stops, streaming, overflow."""

import warnings

import pytest
import torch
from gen_helpers import ScriptedModel, byte_tokenizer, tiny_model

from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate import generate, generate_batch, generate_text, stream
from scratchllm.generate.sampling import make_generator
from scratchllm.generate.simple import generate as simple_generate
from scratchllm.generate.simple import generate_text_simple
from scratchllm.generate.text import TextTracker

GREEDY = SampleConfig(temperature=0, max_new_tokens=50)
VARIANTS = {
    "learned": dict(),
    "rope-gqa": dict(position="rope", n_head=4, n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False,
                     qkv_bias=False, tie_weights=False),
}


@pytest.fixture(params=list(VARIANTS), scope="module")
def model(request):
    return tiny_model(**VARIANTS[request.param])


PROMPT = [5, 17, 99, 3, 42, 7, 200]


def test_cached_equals_uncached_greedy_50_steps(model):
    ref = generate_text_simple(model, torch.tensor([PROMPT]), 50, model.config.context_length)[0, len(PROMPT):]
    got = generate(model, PROMPT, GREEDY)
    assert got == ref.tolist()
    assert len(set(got)) > 3  # a sequence that actually moves, not one repeated token


def test_cached_equals_uncached_in_float32_too():
    m = tiny_model(dtype=torch.float32)
    ref = generate_text_simple(m, torch.tensor([PROMPT]), 30, 64)[0, len(PROMPT):]
    assert generate(m, PROMPT, GREEDY.replace(max_new_tokens=30)) == ref.tolist()


def test_batched_equals_unbatched_row_by_row(model):
    prompts = [PROMPT, [1, 2, 3], [9] * 12, [250]]
    config = GREEDY.replace(max_new_tokens=25)
    batched = generate_batch(model, prompts, config)
    for p, row in zip(prompts, batched):
        assert row == generate(model, p, config)


def test_top_k_one_and_tiny_top_p_equal_greedy(model):
    greedy = generate(model, PROMPT, GREEDY.replace(max_new_tokens=20))
    k1 = generate(model, PROMPT, SampleConfig(temperature=1.3, top_k=1, max_new_tokens=20, seed=3))
    p0 = generate(model, PROMPT, SampleConfig(temperature=1.0, top_p=1e-9, max_new_tokens=20, seed=4))
    assert k1 == greedy == p0


def test_sampling_matches_the_books_loop_with_the_same_generator():
    m = tiny_model()
    config = SampleConfig(temperature=0.9, top_k=20, max_new_tokens=30)
    got = generate(m, PROMPT, config, generator=make_generator(11))
    ref = simple_generate(m, torch.tensor([PROMPT]), 30, 64, temperature=0.9, top_k=20, generator=make_generator(11))
    assert got == ref[0, len(PROMPT):].tolist()


def test_same_seed_same_tokens(model):
    config = SampleConfig(temperature=1.0, top_p=0.9, max_new_tokens=30, seed=123)
    a, b = generate(model, PROMPT, config), generate(model, PROMPT, config)
    c = generate(model, PROMPT, config.replace(seed=124))
    assert a == b and a != c


def test_repetition_penalty_reduces_repeats():
    m = tiny_model()
    plain = generate(m, PROMPT, GREEDY)
    penalised = generate(m, PROMPT, GREEDY.replace(repetition_penalty=5.0))
    assert len(set(penalised)) > len(set(plain))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_context_overflow_slides_the_window(variant):
    ctx = 16
    m = tiny_model(context_length=ctx, **VARIANTS[variant])
    prompt = PROMPT[:5]
    out = generate(m, prompt, GREEDY.replace(max_new_tokens=40))
    assert len(out) == 40
    seq = prompt + out
    # until the cache is full (prompt + 11 fed tokens = 16) the engine equals the book's loop
    ref = generate_text_simple(m, torch.tensor([prompt]), 12, ctx)[0, 5:].tolist()
    assert out[:12] == ref
    # then it re-reads the last ctx // 2 tokens and carries on from there
    with torch.no_grad():
        window = torch.tensor([seq[5 + 12 - ctx // 2: 5 + 12]])
        assert m(window)[0, -1].argmax().item() == out[12]


def test_long_prompt_keeps_recent_tokens_and_warns_once():
    m = tiny_model(context_length=16)
    long_prompt = list(range(1, 40))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = generate_batch(m, [long_prompt, long_prompt[:30]], GREEDY.replace(max_new_tokens=10))
    assert len([w for w in caught if "longer than the model's context" in str(w.message)]) == 1
    assert out[0] == generate(m, long_prompt[-16:], GREEDY.replace(max_new_tokens=10))


def test_max_new_tokens_zero_and_empty_prompt():
    m = tiny_model()
    assert generate(m, PROMPT, GREEDY.replace(max_new_tokens=0)) == []
    with pytest.raises(UserError, match="empty"):
        generate(m, [], GREEDY)


def test_model_mode_is_restored():
    m = tiny_model().train()
    generate(m, PROMPT, GREEDY.replace(max_new_tokens=3))
    assert m.training


# --- stops, with a scripted model ----------------------------------------------------------------
def test_eos_stops_and_is_not_returned():
    m = ScriptedModel([[10, 11, 12, 99, 13]])
    assert generate(m, [1], GREEDY, eos_id=99) == [10, 11, 12]
    assert m.calls == 4  # stopped right after drawing EOS


def test_per_row_stop_in_a_batch():
    m = ScriptedModel([[10, 99, 11, 12, 13, 14], [20, 21, 22, 99, 23, 24], [30, 31, 32, 33, 34, 35]])
    out = generate_batch(m, [[1], [1, 2], [3]], GREEDY.replace(max_new_tokens=5), eos_id=99)
    assert out == [[10], [20, 21, 22], [30, 31, 32, 33, 34]]
    m = ScriptedModel([[10, 99, 11, 12], [20, 21, 99, 22]] )
    generate_batch(m, [[1], [1]], GREEDY.replace(max_new_tokens=50), eos_id=99)
    assert m.calls == 3  # ends when every row stopped


def test_stop_string_split_across_tokens():
    tok = byte_tokenizer()
    script = list(b"Hello END world")
    m = ScriptedModel([script])
    config = GREEDY.replace(stop=("END",))
    ids = generate(m, [1], config, tokenizer=tok)
    assert tok.decode(ids) == "Hello "
    m = ScriptedModel([script])
    assert generate_text(m, tok, "x", config) == "Hello "


def test_stop_string_starting_inside_a_token():
    tok = byte_tokenizer([b"lo E", b"ND!"])
    script = [ord("H"), ord("e"), ord("l"), 256, 257, ord("x")]
    config = GREEDY.replace(stop=("END",))
    assert generate_text(ScriptedModel([script]), tok, "x", config) == "Hello "
    ids = generate(ScriptedModel([script]), [1], config, tokenizer=tok)
    assert ids == [ord("H"), ord("e"), ord("l")]  # the token holding the stop's start is dropped


def test_stop_strings_need_a_tokenizer():
    with pytest.raises(UserError, match="tokenizer"):
        generate(ScriptedModel([[1]]), [1], GREEDY.replace(stop=("a",)))


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
