"""The next-token distribution and the sampler's steps against the model's logits and `generate.sampling`;
the bar charts and `scratchllm inspect next`."""

from __future__ import annotations

import pytest
import torch
from vis_helpers import read_png, tiny

from scratchllm.cli import main
from scratchllm.generate.sampling import sample_next, top_k_filter, top_p_filter
from scratchllm.visualize.next_token import next_token_logits, plot_next_token, sampler_steps, table, top_tokens


@pytest.fixture(scope="module")
def logits(tokenizer):
    model = tiny(tokenizer)
    ids = tokenizer.encode("I had always thought")
    got = next_token_logits(model, ids)
    with torch.no_grad():
        assert torch.allclose(got, model(torch.tensor([ids]))[0, -1], atol=1e-6)
    return got * 10  # sharper than an untrained model's, so that top-p cuts somewhere


def test_each_step_is_the_samplers_own_math(logits):
    steps = sampler_steps(logits, temperature=0.7, top_k=20, top_p=0.6)
    assert [name for name, _ in steps] == ["model", "temperature 0.7", "top-k 20", "top-p 0.6"]
    for _, probs in steps:
        assert abs(float(probs.sum()) - 1) < 1e-5 and bool((probs >= 0).all())
    scaled = logits[None] / 0.7
    assert torch.allclose(steps[0][1], torch.softmax(logits, -1))
    assert torch.allclose(steps[1][1], torch.softmax(scaled, -1)[0])
    assert torch.allclose(steps[2][1], torch.softmax(top_k_filter(scaled, 20), -1)[0])
    assert int((steps[2][1] > 0).sum()) == 20
    final = steps[3][1]
    assert torch.allclose(final, torch.softmax(top_p_filter(top_k_filter(scaled, 20), 0.6), -1)[0])
    assert 1 < int((final > 0).sum()) < 20


@pytest.mark.parametrize("settings", [dict(temperature=0.7, top_k=20, top_p=0.6), dict(temperature=1.3),
                                      dict(temperature=1.0, top_p=0.5), dict(temperature=0.5, top_k=3)])
def test_the_last_step_is_what_the_sampler_draws_from(logits, settings):
    final = sampler_steps(logits, **settings)[-1][1]
    for seed in range(40):
        ours = torch.multinomial(final[None], 1, generator=torch.Generator().manual_seed(seed))[:, 0]
        theirs = sample_next(logits[None], generator=torch.Generator().manual_seed(seed), **settings)
        assert torch.equal(ours, theirs), seed


def test_greedy_puts_everything_on_the_argmax(logits):
    steps = sampler_steps(logits, temperature=0, top_k=5, top_p=0.5)
    assert [n for n, _ in steps] == ["model", "temperature 0 (greedy)"]
    assert int(steps[-1][1].argmax()) == int(sample_next(logits[None], temperature=0)) and steps[-1][1].max() == 1


def test_off_steps_are_left_out(logits):
    assert [n for n, _ in sampler_steps(logits)] == ["model"]


def test_table_and_bars_show_the_same_numbers(logits, tokenizer):
    steps = sampler_steps(logits, temperature=0.7, top_k=20, top_p=0.6)
    shown = top_tokens(steps[0][1], 8)
    assert shown == torch.argsort(steps[0][1], descending=True)[:8].tolist()
    pieces = [tokenizer.decode([i]) for i in shown]
    lines = table(steps, shown, pieces)
    assert len(lines) == 1 + 8 + 1
    first = lines[1].split()
    assert [float(v) for v in first[-4:]] == [round(float(p[shown[0]]), 4) for _, p in steps]
    assert lines[-1].split()[-2:] == ["20", str(int((steps[-1][1] > 0).sum()))]
    fig = plot_next_token(steps, shown, pieces)
    panels = [ax for ax in fig.axes if ax.patches]
    assert len(panels) == 4
    for ax, (name, probs) in zip(panels, steps):
        assert ax.get_title() == name
        heights = [bar.get_height() for bar in ax.patches]
        assert heights == pytest.approx([float(probs[i]) for i in shown])


def test_inspect_next_prints_the_table_and_draws_the_bars(checkpoints, tmp_path, figures, capsys):
    out = tmp_path / "next.png"
    assert main(["inspect", "next", "-m", str(checkpoints["gpt2"]), "I had always", "--out", str(out),
                 "--show", "6", "--top-k", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = next(line for line in printed if line.lstrip().startswith("#"))
    assert header.split()[3:] == ["model", "temperature", "0.8", "top-k", "4", "top-p", "0.8"]
    rows = [line.split() for line in printed if line[:3].strip().isdigit()]
    assert len(rows) == 6
    from scratchllm.checkpoint import load_model

    model, tok, _ = load_model(checkpoints["gpt2"])
    steps = sampler_steps(next_token_logits(model, tok.encode("I had always")), 0.8, 4, 0.8)
    first = top_tokens(steps[0][1], 1)[0]
    assert int(rows[0][-5]) == first
    assert [float(v) for v in rows[0][-4:]] == [round(float(p[first]), 4) for _, p in steps]
    [(panels, size, path)] = figures
    assert path == out and len(panels) == 4
    pixels = read_png(out)
    assert pixels.shape[:2] == (round(size[1]), round(size[0]))
