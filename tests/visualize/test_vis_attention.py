"""Attention maps captured from the model against the book's step-by-step attention and against the
model's own output; the heatmap grid and `scratchllm inspect attention`."""

from __future__ import annotations

import pytest
import torch
from vis_helpers import LLAMA, read_png, tiny

from scratchllm.cli import main
from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT
from scratchllm.model import functional as ops
from scratchllm.model.weights import from_book_gpt
from scratchllm.steps.gpt import GPTModel
from scratchllm.visualize.attention import attention_maps, parse_layers, plot_attention


def test_maps_equal_the_books_step_by_step_attention():
    config = ModelConfig.preset("tiny", tie_weights=False, qkv_bias=True)
    torch.manual_seed(0)
    teach = GPTModel(config, keep_attn_weights=True).double().eval()  # steps.attention.MultiHeadAttention inside
    model = GPT(config).double().eval()
    model.load_state_dict(from_book_gpt(teach.state_dict()))
    idx = torch.randint(0, config.vocab_size, (1, 11))
    with torch.no_grad():
        teach(idx)
    theirs = torch.stack([m[0] for m in teach.attention_maps()])  # (n_layer, n_head, T, T)
    ours = attention_maps(model, idx)
    assert ours.shape == (config.n_layer, config.n_head, 11, 11)
    assert torch.allclose(ours.double(), theirs, atol=1e-6)


@pytest.mark.parametrize("options", [{}, {"attention": "explicit"}, LLAMA, {**LLAMA, "rope_scaling": "llama3"},
                                     {"n_kv_head": 1}],
                         ids=["gpt2", "explicit", "llama", "llama3-scaled", "mqa"])
def test_weights_times_values_are_what_each_attention_module_output(tokenizer, options):
    """The captured weights, applied to the module's own values and output projection, give exactly the
    output the module computed (with torch's fused kernel, RoPE, GQA and QK-norm where configured)."""
    model = tiny(tokenizer, **options)
    ids = tokenizer.encode("I had always thought Jack Gisburn rather a cheap genius")
    seen = []

    def record(module, args, output):
        seen.append((module, args[0], output))

    handles = [b.attn.register_forward_hook(record) for b in model.blocks]
    maps = attention_maps(model, ids)
    for h in handles:
        h.remove()
    assert len(seen) == model.config.n_layer and maps.shape[0] == model.config.n_layer
    for layer, (attn, x, output) in enumerate(seen):
        t = x.shape[1]
        v = attn.qkv(x).split(attn.qkv_sizes(), dim=-1)[2]
        v = v.view(1, t, attn.n_kv_head, attn.head_dim).transpose(1, 2)  # (1, n_kv_head, T, head_dim)
        v = ops.repeat_kv(v, attn.n_head // attn.n_kv_head)
        rebuilt = attn.proj(ops.merge_heads(maps[layer][None] @ v))
        assert torch.allclose(rebuilt, output, atol=1e-5), layer
    w = maps
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]), atol=1e-5)  # each query's weights sum to one
    assert torch.all(w.triu(1) == 0)  # causal: nothing from later tokens


def test_the_model_is_left_as_it_was(tokenizer):
    model = tiny(tokenizer).train()
    ids = tokenizer.encode("a good fellow")
    before = model(torch.tensor([ids]))  # dropout is 0: the same in both modes
    attention_maps(model, ids)
    assert model.training
    assert all(not b.attn._forward_pre_hooks for b in model.blocks)
    assert torch.equal(model(torch.tensor([ids])), before)


def test_layers_are_parsed_and_checked():
    from scratchllm.errors import UserError

    assert parse_layers("1-2,0", 4) == [1, 2, 0] and parse_layers("all", 3) == [0, 1, 2]
    for bad in ("4", "2-1", "a", "-1"):
        with pytest.raises(UserError, match="--layers"):
            parse_layers(bad, 4)


def test_the_grid_has_a_panel_per_layer_and_head_showing_its_map(tokenizer, tmp_path):
    from scratchllm.files import save_figure

    model = tiny(tokenizer)
    ids = tokenizer.encode("he had dropped his painting")
    maps = attention_maps(model, ids)
    fig = plot_attention(maps, [tokenizer.decode([i]) for i in ids], layers=[1])
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 1 * model.config.n_head
    for h, ax in enumerate(panels):
        assert ax.get_title() == f"layer 1, head {h}"
        assert torch.allclose(torch.as_tensor(ax.images[0].get_array().data), maps[1, h])
    width, height = fig.get_size_inches() * 100
    pixels = read_png(save_figure(fig, tmp_path / "grid.png"))
    assert pixels.shape[:2] == (round(height), round(width))


def test_inspect_attention_writes_the_grid(checkpoints, tmp_path, figures, capsys):
    out = tmp_path / "pics" / "att.png"
    assert main(["inspect", "attention", "-m", str(checkpoints["llama"]), "I had always thought Jack",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 layers x 4 heads" in printed and f"wrote {out}" in printed
    assert printed.count("  layer ") == 2
    [(panels, size, path)] = figures
    assert path == out and len(panels) == 2 * 4
    pixels = read_png(out)
    assert pixels.shape[:2] == (round(size[1]), round(size[0]))
    assert not list(out.parent.glob(".*"))  # no temporary file left beside it
    assert main(["inspect", "attention", "-m", str(checkpoints["gpt2"]), "Jack", "--out", str(out),
                 "--layers", "1"]) == 0
    assert len(figures[-1][0]) == 4
