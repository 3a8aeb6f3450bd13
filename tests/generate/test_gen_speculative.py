"""Speculative decoding by prompt lookup: the same tokens as plain greedy decoding, in fewer passes."""

import pytest
import torch
from gen_helpers import byte_tokenizer, tiny_model

from scratchllm.config.sample import SampleConfig
from scratchllm.errors import ConfigError
from scratchllm.generate import generate, generate_batch, generate_text
from scratchllm.generate.speculative import lookup_draft
from scratchllm.model import KVCache

VARIANTS = {
    "learned": dict(),
    "rope-gqa": dict(position="rope", n_head=4, n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False,
                     qkv_bias=False, tie_weights=False),
}
# a prompt that repeats itself, so drafts exist from the first step
PROMPT = [5, 17, 99, 3, 42, 7, 200, 5, 17, 99, 3, 42, 7, 200, 5, 17]


@pytest.fixture(params=list(VARIANTS), scope="module")
def model(request):
    return tiny_model(**VARIANTS[request.param])


def count_passes(model):
    calls = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
    return calls, handle


def test_lookup_draft_finds_the_latest_longest_match():
    assert lookup_draft([1, 2, 3, 1, 2, 4, 1, 2], k=3) == [4, 1, 2]  # latest occurrence of [1, 2]
    assert lookup_draft([7, 1, 2, 9, 8, 2], k=2) == [9, 8]  # only a 1-gram matches
    assert lookup_draft([1, 2, 3, 4], k=3) == []
    assert lookup_draft([1, 2, 1], k=0) == []
    assert lookup_draft([3], k=4) == []


@pytest.mark.parametrize("max_new", [1, 7, 50, 130])  # 130 > context 64: the window slides twice
def test_same_tokens_as_greedy_in_fewer_passes(model, max_new):
    plain = generate(model, PROMPT, SampleConfig(temperature=0, max_new_tokens=max_new))
    calls, handle = count_passes(model)
    try:
        fast = generate(model, PROMPT, SampleConfig(temperature=0, max_new_tokens=max_new, prompt_lookup=6))
    finally:
        handle.remove()
    assert fast == plain and len(fast) == max_new
    if max_new >= 50:
        assert len(calls) < max_new  # some drafts were accepted: fewer forward passes than tokens
        assert max(calls) > 1  # and drafts were verified several tokens at a time


def test_eos_and_stop_strings_end_speculative_runs_as_they_end_greedy(model):
    plain = generate(model, PROMPT, SampleConfig(temperature=0, max_new_tokens=60))
    eos = plain[40]
    cut = plain.index(eos)
    spec = SampleConfig(temperature=0, max_new_tokens=60, prompt_lookup=8)
    assert generate(model, PROMPT, spec, eos_id=eos) == plain[:cut]

    tok = byte_tokenizer()
    text = generate_text(model, tok, PROMPT, SampleConfig(temperature=0, max_new_tokens=60), eos_id=None)
    stop = text[20:23]
    want = generate_text(model, tok, PROMPT, SampleConfig(temperature=0, max_new_tokens=60, stop=(stop,)),
                         eos_id=None)
    got = generate_text(model, tok, PROMPT, SampleConfig(temperature=0, max_new_tokens=60, stop=(stop,),
                                                         prompt_lookup=8), eos_id=None)
    assert got == want and stop not in got


def test_batches_fall_back_to_plain_decoding(model):
    prompts = [PROMPT, PROMPT[3:]]
    plain = generate_batch(model, prompts, SampleConfig(temperature=0, max_new_tokens=20))
    assert generate_batch(model, prompts, SampleConfig(temperature=0, max_new_tokens=20, prompt_lookup=5)) == plain


def test_sampling_settings_that_cannot_speculate_are_refused():
    with pytest.raises(ConfigError, match="temperature 0"):
        SampleConfig(temperature=0.8, prompt_lookup=4)
    with pytest.raises(ConfigError, match="repetition_penalty"):
        SampleConfig(temperature=0, repetition_penalty=1.2, prompt_lookup=4)
    with pytest.raises(ConfigError, match="prompt_lookup must be >= 0"):
        SampleConfig(prompt_lookup=-1)


def test_cache_truncate_forgets_positions():
    cache = KVCache(1, 1, 1, 8, 2)
    cache.update(0, torch.ones(1, 1, 5, 2), torch.ones(1, 1, 5, 2))
    cache.advance(5)
    cache.truncate(3)
    assert cache.pos == 3
    k, _ = cache.update(0, torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    assert k.shape[2] == 4 and float(k[0, 0, 3].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="holds 3 positions"):
        cache.truncate(4)
