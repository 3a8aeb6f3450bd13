"""LoRA (model.lora): equal to the book's appendix E layer for the same weights, merge and unmerge exact,
the parameter count r * (in + out) per layer, only adapters train, targets and their errors."""

import copy

import pytest
import torch
from llms_from_scratch.appendix_e import LinearWithLoRA
from torch import nn

from scratchllm.config.lora import LoraConfig
from scratchllm.config.model import ModelConfig
from scratchllm.errors import UserError
from scratchllm.model import GPT
from scratchllm.model.lora import (
    LoRALinear,
    adapter_config,
    adapter_state,
    add_lora,
    base_linears,
    count_lora_params,
    has_lora,
    lora_parameters,
    merge_lora,
)


def tiny(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig.preset("tiny", **{"vocab_size": 64, **overrides})).eval()


def randomize(model) -> None:
    """Give every adapter nonzero weights (a fresh B is zero: the adapter would change nothing)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_a_lora_linear_equals_the_books_linear_with_lora_for_the_same_weights():
    torch.manual_seed(0)
    linear = nn.Linear(24, 40)
    r, book_alpha = 4, 3.0
    book = LinearWithLoRA(copy.deepcopy(linear), rank=r, alpha=book_alpha)
    with torch.no_grad():
        book.lora.B.copy_(torch.randn(r, 40))  # the book's B starts at zero too: give it a value
    ours = LoRALinear(linear, r=r, alpha=book_alpha * r)  # the book scales by alpha, we by alpha / r
    with torch.no_grad():
        ours.lora_A.copy_(book.lora.A.T)  # theirs: A (in, r), B (r, out); ours: A (r, in), B (out, r)
        ours.lora_B.copy_(book.lora.B.T)
    x = torch.randn(3, 5, 24)
    torch.testing.assert_close(ours(x), book(x), rtol=1e-5, atol=1e-5)  # fp32, sums in another order
    assert not torch.equal(ours(x), linear(x))  # the adapter does something


def test_the_layer_shares_the_wrapped_weight_and_a_fresh_adapter_changes_nothing():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    layer = LoRALinear(linear, r=2, alpha=4)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    assert layer.lora_A.shape == (2, 16) and layer.lora_B.shape == (8, 2) and layer.scaling == 2.0
    assert torch.all(layer.lora_B == 0) and layer.lora_A.abs().sum() > 0
    x = torch.randn(4, 16)
    assert torch.equal(layer(x), linear(x))
    assert set(layer.state_dict()) == {"weight", "bias", "lora_A", "lora_B"}


def test_merged_and_unmerged_outputs_are_equal_and_unmerge_restores_the_weights():
    model = tiny()
    x = torch.randint(0, 64, (2, 12))
    add_lora(model, LoraConfig(r=4, alpha=8, targets=("all",)))
    randomize(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unmerged = model(x)
    for layer in (m for m in model.modules() if isinstance(m, LoRALinear)):
        layer.merge()
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.equal(model.blocks[0].attn.qkv.weight, before["blocks.0.attn.qkv.weight"])
    for layer in (m for m in model.modules() if isinstance(m, LoRALinear)):
        layer.unmerge()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x), unmerged, rtol=1e-6, atol=1e-6)


def test_merge_lora_gives_plain_linears_with_the_same_outputs():
    model = tiny()
    x = torch.randint(0, 64, (2, 12))
    add_lora(model, LoraConfig(r=4, alpha=8))
    randomize(model)
    unmerged = model(x)
    assert merge_lora(model) is model
    assert not has_lora(model)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)
    assert set(model.state_dict()) == set(tiny().state_dict())  # a plain GPT's names


def test_the_trainable_parameters_are_exactly_r_times_in_plus_out_per_wrapped_layer():
    model = tiny(mlp="swiglu", norm="rmsnorm", position="rope", tie_weights=False)
    r = 3
    names = add_lora(model, LoraConfig(r=r, targets=("attn", "mlp", "head")))
    linears = {n: model.get_submodule(n) for n in names}
    assert all(isinstance(m, LoRALinear) for m in linears.values())
    expected = sum(r * (m.in_features + m.out_features) for m in linears.values())
    assert count_lora_params(model) == expected
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    assert len(names) == 2 * 5 + 1  # per block qkv, proj, fc, gate, proj; plus the head
    assert "blocks.1.mlp.gate" in names and names[-1] == "lm_head"


def test_only_the_adapters_get_gradients_when_the_rest_is_frozen():
    model = tiny()
    add_lora(model, LoraConfig(r=2, alpha=4))  # freezes the rest (the book's recipe)
    randomize(model)
    model.train()
    x = torch.randint(0, 64, (2, 12))
    _, loss = model(x, targets=x)
    loss.backward()
    lora = {id(p) for p in lora_parameters(model)}
    for name, p in model.named_parameters():
        if id(p) in lora:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def test_dropout_applies_to_the_adapter_in_training_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 16), r=4, alpha=4, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(8, 16)
    layer.eval()
    plain = layer(x)
    layer.train()
    assert not torch.allclose(layer(x), plain)
    layer.merge()  # merged: a plain linear, no dropout
    torch.testing.assert_close(layer(x), plain, rtol=1e-5, atol=1e-5)


def test_targets_words_and_name_suffixes():
    assert add_lora(tiny(), LoraConfig(r=2, targets=("attn",))) == \
        ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "blocks.1.attn.proj"]
    assert add_lora(tiny(), LoraConfig(r=2, targets=("attn.qkv",))) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert add_lora(tiny(), LoraConfig(r=2, targets=("blocks.1.mlp.fc", "mlp.fc"))) == \
        ["blocks.0.mlp.fc", "blocks.1.mlp.fc"]
    # "all" leaves out the head tied to the embedding; untied, the head is in
    assert "lm_head" not in add_lora(tiny(), LoraConfig(r=2, targets=("all",)))
    assert add_lora(tiny(tie_weights=False), LoraConfig(r=2, targets=("all",)))[-1] == "lm_head"
    assert add_lora(tiny(), LoraConfig(r=0)) == []  # LoRA off: nothing changes
    assert add_lora(tiny(), "r=2,targets=mlp.proj") == ["blocks.0.mlp.proj", "blocks.1.mlp.proj"]  # the spec


def test_targets_that_match_no_layer_name_the_models_linear_layers():
    with pytest.raises(UserError, match=r"'attn\.q' matches no linear layer of this model; its linear layers are "
                                        r"blocks\.N\.attn\.qkv, blocks\.N\.attn\.proj, blocks\.N\.mlp\.fc, "
                                        r"blocks\.N\.mlp\.proj, lm_head \(N = 0\.\.1\); use attn, mlp"):
        add_lora(tiny(), LoraConfig(r=2, targets=("attn.q",)))
    with pytest.raises(UserError, match="'mlp.gate' matches no linear layer"):  # GPT-2's MLP has no gate
        add_lora(tiny(), LoraConfig(r=2, targets=("mlp.gate",)))


def test_a_tied_head_is_refused_with_the_reason():
    model = tiny()
    with pytest.raises(UserError, match=r"'head' names lm_head, whose weight is the token embedding's \(tie_weights\)"
                                        r".*leave it out of targets"):
        add_lora(model, LoraConfig(r=2, targets=("attn", "head")))
    assert not has_lora(model)  # nothing was wrapped


def test_adapter_state_and_config_hold_only_the_adapters():
    model = tiny()
    names = add_lora(model, LoraConfig(r=2, alpha=5, dropout=0.1, targets=("attn.proj",)))
    state = adapter_state(model)
    assert list(state) == [f"{n}.{p}" for n in names for p in ("lora_A", "lora_B")]
    assert adapter_config(model) == {"r": 2, "alpha": 5.0, "dropout": 0.1, "modules": names}
    # the same config from its JSON form wraps the same layers
    other = tiny()
    assert add_lora(other, adapter_config(model)) == names


def test_base_linears_shows_the_plain_model():
    model = tiny()
    add_lora(model, LoraConfig(r=2))
    randomize(model)
    model.blocks[0].attn.qkv.merge()
    plain = tiny(seed=5)
    with base_linears(model):
        assert not has_lora(model)
        assert set(model.state_dict()) == set(plain.state_dict())
        weight = model.blocks[0].attn.qkv.weight.clone()
    assert has_lora(model) and model.blocks[0].attn.qkv.merged  # put back as it was
    torch.testing.assert_close(weight, tiny().blocks[0].attn.qkv.weight, rtol=0, atol=1e-6)  # the base weight
