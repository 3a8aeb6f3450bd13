"""The engine's open batch (continuous batching): rows join a running batch and leave it when done,
each with its own settings, and every row gets what it would get decoded alone (float64 models, so
batched and unbatched products agree on argmax exactly)."""

import pytest
import torch
from gen_helpers import tiny_model

from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate import generate
from scratchllm.generate.engine import Decoder
from scratchllm.generate.sampling import make_generator

VARIANTS = {
    "learned": dict(),
    "rope-gqa": dict(position="rope", n_head=4, n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False,
                     qkv_bias=False, tie_weights=False),
}
PROMPTS = [[5, 17, 99, 3], list(range(1, 12)), [9, 9], [250, 3], [7] * 15, [42]]
NEW = [6, 20, 9, 3, 30, 12]


def run_staggered(model, prompts, configs, max_batch, every=2, generators=None):
    """Add one row every `every` steps while the batch has room; step until all are done. Rows' new ids."""
    rows, queue, steps = {}, list(range(len(prompts))), 0
    with Decoder(model, max_batch=max_batch) as dec:
        while queue or dec.active:
            if queue and steps % every == 0 and dec.active < max_batch:
                i = queue.pop(0)
                gen = generators[i] if generators else None
                rows[i] = dec.add(prompts[i], configs[i], generator=gen)
            dec.step()
            assert len(dec.slots) <= max_batch
            steps += 1
    return [rows[i].tokens[len(prompts[i]):] for i in range(len(prompts))], steps


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("max_batch, every", [(3, 2), (6, 1), (2, 5)])
def test_rows_joining_and_leaving_equal_each_prompt_alone(variant, max_batch, every):
    # context 24: rows 1 and 4 outgrow it and slide their windows, each as it would alone
    m = tiny_model(context_length=24, **VARIANTS[variant])
    configs = [SampleConfig(temperature=0, max_new_tokens=n) for n in NEW]
    got, steps = run_staggered(m, PROMPTS, configs, max_batch, every)
    for p, c, out in zip(PROMPTS, configs, got):
        assert out == generate(m, p, c)
    assert steps < sum(NEW)  # rows shared steps


def test_seeded_rows_draw_the_same_tokens_alone_or_batched():
    m = tiny_model()
    configs = [SampleConfig(temperature=1.0, top_p=0.9, max_new_tokens=n, seed=s) for n, s in zip(NEW, range(6))]
    gens = [make_generator(c.seed) for c in configs]
    batched, _ = run_staggered(m, PROMPTS, configs, 4, 1, gens)
    for p, c, out in zip(PROMPTS, configs, batched):
        assert out == generate(m, p, c)  # the same seed alone
    assert len({tuple(o) for o in batched}) == len(batched)


def test_end_of_text_stop_by_caller_and_logprobs():
    m = tiny_model()
    first = generate(m, PROMPTS[0], SampleConfig(temperature=0, max_new_tokens=3))
    with Decoder(m, max_batch=4) as dec:
        a = dec.add(PROMPTS[0], SampleConfig(temperature=0, max_new_tokens=10), eos_id=first[1])
        b = dec.add(PROMPTS[1], SampleConfig(temperature=0, max_new_tokens=10), logprobs=2)
        events = dec.step()
        assert [t for _, t in events] == [first[0], generate(m, PROMPTS[1], SampleConfig(temperature=0,
                                                                                          max_new_tokens=1))[0]]
        with torch.no_grad():
            expected = torch.log_softmax(m(torch.tensor([PROMPTS[1]]))[0, -1], dim=-1)
        assert b.logprob == pytest.approx(expected.max().item()) and len(b.top_logprobs) == 2
        assert b.top_logprobs[0][1] == pytest.approx(expected.max().item())
        assert dec.step() == [(a, None), (b, b.tokens[-1])]  # a drew its end-of-text id
        assert a.done and a.tokens == PROMPTS[0] + [first[0]] and a.emitted == 2
        b.done = True  # the caller stops b (a stop string)
        assert dec.step() == [] and dec.active == 0 and dec.slots == []


def test_open_batch_checks():
    m = tiny_model()
    with pytest.raises(UserError, match="max_batch must be >= 1"):
        Decoder(m, max_batch=0)
    with Decoder(m, max_batch=2) as dec:
        with pytest.raises(UserError, match="empty"):
            dec.add([], SampleConfig())
        with pytest.raises(UserError, match="prompt_lookup"):
            dec.add([1], SampleConfig(temperature=0, prompt_lookup=2))
        with pytest.raises(UserError, match="step"):
            next(iter(dec))
        assert dec.add([1], SampleConfig(max_new_tokens=0)).done and dec.step() == []
    with pytest.raises(UserError, match="open batch"):
        Decoder(m, [[1]], SampleConfig()).add([1], SampleConfig())
