"""The cached engine on token ids against the book's uncached loop: batching, stops by id, overflow.

Text, stop strings and streaming (generate.text) are in test_gen_text.py."""

import warnings

import pytest
import torch
from gen_helpers import ScriptedModel, tiny_model

from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate import TOKENIZER_EOS, generate, generate_batch
from scratchllm.generate.sampling import make_generator
from scratchllm.generate.simple import generate_simple, generate_text_simple

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
    ref = generate_simple(m, torch.tensor([PROMPT]), 30, 64, temperature=0.9, top_k=20, generator=make_generator(11))
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


def test_stop_strings_need_a_tokenizer():
    with pytest.raises(UserError, match="tokenizer"):
        generate(ScriptedModel([[1]]), [1], GREEDY.replace(stop=("a",)))
    with pytest.raises(UserError, match="tokenizer"):
        generate_batch(ScriptedModel([[1]]), [[1]], GREEDY.replace(stop=("a",)))


def test_eos_convention_on_ids():
    # the engine has no tokenizer: an id or None; "the tokenizer's" (TOKENIZER_EOS) and -1 are clear errors
    script = [[10, 99, 11, 12]]
    assert generate(ScriptedModel(script), [1], GREEDY.replace(max_new_tokens=4)) == [10, 99, 11, 12]  # default None
    assert generate(ScriptedModel(script), [1], GREEDY.replace(max_new_tokens=4), eos_id=None) == [10, 99, 11, 12]
    assert generate(ScriptedModel(script), [1], GREEDY.replace(max_new_tokens=4), eos_id=99) == [10]
    with pytest.raises(UserError, match="needs a tokenizer"):
        generate(ScriptedModel(script), [1], GREEDY, eos_id=TOKENIZER_EOS)
    for bad in (-1, True, "99", [99, -1], [None]):
        with pytest.raises(UserError, match="eos_id must be a token id"):
            generate(ScriptedModel(script), [1], GREEDY, eos_id=bad)


def test_several_end_of_text_ids_each_stop_a_row():
    # Llama 3's generation_config.json lists several (<|end_of_text|>, <|eom_id|>, <|eot_id|>): any one ends a row
    script = [[10, 98, 11, 12], [10, 11, 99, 12]]
    out = generate_batch(ScriptedModel(script), [[1], [1]], GREEDY.replace(max_new_tokens=4), eos_id=[99, 98])
    assert out == [[10], [10, 11]]
    assert generate(ScriptedModel(script[1:]), [1], GREEDY.replace(max_new_tokens=4), eos_id=(99,)) == [10, 11]
