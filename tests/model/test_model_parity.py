"""Same weights, same logits: our GPT against Hugging Face's GPT2LMHeadModel and the book's GPTModel."""

import importlib

import pytest
import torch

from scratchllm.config.model import ModelConfig
from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate.engine import generate
from scratchllm.model import GPT
from scratchllm.model.weights import (
    config_from_hf_gpt2,
    from_book_gpt,
    from_hf_gpt2,
    hf_gpt2_config,
    to_book_gpt,
    to_hf_gpt2,
)

transformers = importlib.import_module("transformers")


def hf_gpt2(config: ModelConfig):
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_gpt2_config(config))).eval()


def _logits_match(config: ModelConfig, t: int, seed: int = 0):
    torch.manual_seed(seed)
    ref = hf_gpt2(config)
    model = GPT(config).eval()
    model.load_state_dict(from_hf_gpt2(ref.state_dict()))
    idx = torch.randint(0, config.vocab_size, (2, t))
    with torch.no_grad():
        ours = model(idx)
        theirs = ref(idx).logits
    assert ours.shape == theirs.shape == (2, t, config.vocab_size)
    return (ours - theirs).abs().max().item()


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_tiny_logits_equal_transformers(attention):
    config = ModelConfig.preset("tiny", attention=attention)
    assert _logits_match(config, t=config.context_length) <= 1e-4


def test_exact_gelu_logits_equal_transformers_gelu():
    config = ModelConfig.preset("tiny", mlp="gelu_exact", init_std=0.3)  # large weights: the GELUs differ
    assert hf_gpt2_config(config)["activation_function"] == "gelu"
    assert config_from_hf_gpt2({**hf_gpt2_config(config), "n_positions": 32}).mlp == "gelu_exact"
    assert _logits_match(config, t=config.context_length) <= 1e-4
    tanh = ModelConfig.preset("tiny", init_std=0.3)
    torch.manual_seed(0)
    a = GPT(config).eval()
    b = GPT(tanh).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, config.vocab_size, (1, 16))
    with torch.no_grad():
        assert (a(idx) - b(idx)).abs().max() > 1e-4  # the switch changes the function


def test_124m_logits_equal_transformers():
    """GPT-2 small at full size. Both models are built on the meta device (no slow init) and get the
    same N(0, 0.02) weights, norms near one."""
    config = ModelConfig.preset("gpt2-small", context_length=64)
    with torch.device("meta"):
        ref = hf_gpt2(config)
        model = GPT(config).eval()
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for name, p in model.state_dict().items():
        if name != "lm_head.weight":
            sd[name] = torch.randn(p.shape, generator=gen) * 0.02 + (1.0 if ".norm" in f".{name}" and
                                                                      name.endswith("weight") else 0.0)
    sd["lm_head.weight"] = sd["tok_emb.weight"]
    assert model.num_params() == 124_439_808 - (1024 - 64) * 768  # a shorter position table
    model.load_state_dict(sd, assign=True)  # assign=True replaces the tied Parameter: tie again
    model.lm_head.weight = model.tok_emb.weight
    ref.load_state_dict(to_hf_gpt2(sd), assign=True)
    idx = torch.randint(0, config.vocab_size, (2, 16), generator=gen)
    with torch.no_grad():
        diff = (model(idx) - ref(idx).logits).abs().max().item()
    assert diff <= 1e-4
    # greedy decoding: our engine (KV cache, fast linears) against transformers' generate, 20 tokens
    ours = generate(model, idx[0].tolist(), SampleConfig(temperature=0.0, max_new_tokens=20), eos_id=None)
    with torch.no_grad():
        theirs = ref.generate(idx[:1], attention_mask=torch.ones(1, 16, dtype=torch.long), max_new_tokens=20,
                              min_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 16:]
    assert ours == theirs.tolist()


def test_config_round_trip():
    for config in (ModelConfig.preset("gpt2-medium"), ModelConfig.preset("tiny", tie_weights=False, mlp_hidden=48)):
        assert config_from_hf_gpt2(transformers.GPT2Config(**hf_gpt2_config(config)).to_dict()) == config
    with pytest.raises(UserError, match="model.position"):
        hf_gpt2_config(ModelConfig.preset("tiny", position="rope"))


def test_hub_style_names_load():
    """Hub checkpoints have no `transformer.` prefix, no lm_head and (older) mask buffers."""
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny")
    ref = hf_gpt2(config)
    hub = {k.removeprefix("transformer."): v for k, v in ref.state_dict().items() if k != "lm_head.weight"}
    hub["h.0.attn.bias"] = torch.ones(1, 1, 32, 32)
    hub["h.1.attn.masked_bias"] = torch.tensor(-1e4)
    ours = from_hf_gpt2(hub)
    assert torch.equal(ours["lm_head.weight"], ref.state_dict()["transformer.wte.weight"])
    assert set(ours) == set(GPT(config).state_dict())


def test_conv1d_weights_are_transposed():
    torch.manual_seed(0)
    ref = hf_gpt2(ModelConfig.preset("tiny"))
    sd = from_hf_gpt2(ref.state_dict())
    c_attn = ref.state_dict()["transformer.h.0.attn.c_attn.weight"]  # (in, 3 * out)
    assert sd["blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert torch.equal(sd["blocks.0.attn.qkv.weight"], c_attn.t())


def test_round_trip_hf():
    torch.manual_seed(0)
    sd = hf_gpt2(ModelConfig.preset("tiny")).state_dict()
    back = to_hf_gpt2(from_hf_gpt2(sd))
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_round_trip_ours():
    torch.manual_seed(0)
    sd = GPT(ModelConfig.preset("tiny", bias=False, qkv_bias=False)).state_dict()
    back = from_hf_gpt2(to_hf_gpt2(sd))
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_swiglu_has_no_gpt2_layout():
    sd = GPT(ModelConfig.preset("tiny", mlp="swiglu")).state_dict()
    with pytest.raises(UserError, match="gate"):
        to_hf_gpt2(sd)


def test_bad_checkpoint_names_field():
    with pytest.raises(UserError, match="wte.weight"):
        from_hf_gpt2({"foo.weight": torch.zeros(1)})
    torch.manual_seed(0)
    sd = hf_gpt2(ModelConfig.preset("tiny")).state_dict()
    sd["transformer.h.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(UserError, match="h.0.extra.weight"):
        from_hf_gpt2(sd)


# ---------------------------------------------------------------------------------------------
# the book's GPTModel (llms_from_scratch, chapter 4)
def book_cfg(config: ModelConfig) -> dict:
    return {"vocab_size": config.vocab_size, "context_length": config.context_length, "emb_dim": config.n_embd,
            "n_heads": config.n_head, "n_layers": config.n_layer, "drop_rate": config.dropout,
            "qkv_bias": config.qkv_bias}


@pytest.mark.parametrize("qkv_bias", [False, True])
def test_logits_equal_book_gptmodel(qkv_bias):
    ch04 = importlib.import_module("llms_from_scratch.ch04")
    config = ModelConfig.preset("tiny", qkv_bias=qkv_bias, tie_weights=False)
    torch.manual_seed(0)
    book = ch04.GPTModel(book_cfg(config)).eval()
    model = GPT(config).eval()
    model.load_state_dict(from_book_gpt(book.state_dict()))
    idx = torch.randint(0, config.vocab_size, (2, 20))
    with torch.no_grad():
        assert (model(idx) - book(idx)).abs().max().item() <= 1e-5
    back = to_book_gpt(model.state_dict())
    book_sd = {k: v for k, v in book.state_dict().items() if not k.endswith("att.mask")}
    assert set(back) == set(book_sd)
    assert all(torch.equal(back[k], book_sd[k]) for k in book_sd)
