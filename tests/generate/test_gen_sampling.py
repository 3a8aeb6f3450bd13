"""Sampling: greedy, temperature, top-k, top-p, repetition penalty, seeds."""

import torch

from scratchllm.generate.sampling import (
    apply_repetition_penalty,
    greedy,
    make_generator,
    sample_next,
    top_k_filter,
    top_p_filter,
)


def test_greedy_is_argmax():
    logits = torch.randn(5, 100, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))


def test_greedy_takes_the_first_of_equal_maxima_and_nan_as_torch_does():
    logits = torch.randn(4, 50257, generator=torch.Generator().manual_seed(1))
    logits[1, 10:20] = 50.0  # ties: the first
    logits[2, 7] = float("nan")  # NaN counts as the largest
    logits[3, -1] = 60.0
    for x in (logits, logits.bfloat16(), logits[:, None, :][:, -1], logits[0]):  # bf16, a strided view, one row
        got = greedy(x)
        assert got.dtype == torch.int64 and torch.equal(got, torch.argmax(x, dim=-1))


def test_top_k_one_equals_greedy():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    g = make_generator(0)
    for _ in range(5):
        assert torch.equal(sample_next(logits, temperature=1.5, top_k=1, generator=g), logits.argmax(-1))


def test_top_p_near_zero_equals_greedy():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(2))
    g = make_generator(0)
    for _ in range(5):
        assert torch.equal(sample_next(logits, temperature=1.0, top_p=1e-9, generator=g), logits.argmax(-1))


def test_top_p_one_keeps_the_distribution():
    logits = torch.randn(3, 1000, generator=torch.Generator().manual_seed(3)) * 5  # long, tiny tail
    assert torch.equal(top_p_filter(logits, 1.0), logits)
    # and the filter just below 1 keeps every token whose predecessors' mass is below p
    kept = ~top_p_filter(logits, 0.999).isinf()
    assert kept.sum(-1).min() > 1


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3]])
    out = top_p_filter(probs.log(), 0.65)  # 0.4 + 0.3 = 0.7 >= 0.65: keep ids 1 and 3
    assert (~out.isinf()).tolist() == [[False, True, False, True]]
    out = top_p_filter(probs.log(), 0.7)  # 0.4 + 0.3 reaches 0.7 exactly (up to rounding): 2 or 3 tokens
    assert (~out.isinf())[0, [1, 3]].all() and out[0, 0].isinf()


def test_top_k_keeps_k():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(4))
    out = top_k_filter(logits, 5)
    assert ((~out.isinf()).sum(-1) == 5).all()
    assert torch.equal(top_k_filter(logits, 30), logits)


def test_sampling_follows_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log()[None].expand(20000, 3)
    ids = sample_next(logits, temperature=1.0, generator=make_generator(0))
    freq = torch.bincount(ids, minlength=3).float() / len(ids)
    assert torch.allclose(freq, probs, atol=0.02)
    # top-p 0.6 keeps 0.5 and 0.3, renormalised to 0.625 / 0.375
    ids = sample_next(logits, temperature=1.0, top_p=0.6, generator=make_generator(0))
    freq = torch.bincount(ids, minlength=3).float() / len(ids)
    assert torch.allclose(freq, torch.tensor([0.625, 0.375, 0.0]), atol=0.02)


def test_low_temperature_sharpens():
    logits = torch.tensor([[1.0, 0.0]]).expand(5000, 2)
    hot = sample_next(logits, temperature=2.0, generator=make_generator(0)).float().mean()
    cold = sample_next(logits, temperature=0.2, generator=make_generator(0)).float().mean()
    assert cold < 0.05 < hot  # share of the less likely token


def test_same_seed_same_tokens_and_different_seed_differs():
    logits = torch.randn(4, 500, generator=torch.Generator().manual_seed(5))
    a = [sample_next(logits, generator=g) for g in [make_generator(7)] for _ in range(10)]
    b = [sample_next(logits, generator=g) for g in [make_generator(7)] for _ in range(10)]
    c = [sample_next(logits, generator=g) for g in [make_generator(8)] for _ in range(10)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_repetition_penalty_ctrl_rule():
    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, -1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0, 0.5]]
    mask = torch.tensor([[True, True, False, False]])
    assert torch.equal(apply_repetition_penalty(logits, mask, 2.0), out)
    assert torch.equal(apply_repetition_penalty(logits, mask, 1.0), logits)
    # greedy flips away from a repeated token
    assert sample_next(torch.tensor([[3.0, 2.0]]), temperature=0, repetition_penalty=2.0,
                       prev_ids=torch.tensor([[0]])).tolist() == [1]
