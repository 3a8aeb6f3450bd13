"""Same weights, same logits, same greedy tokens: our GPT against transformers' Llama (GQA, Llama 3's
RoPE scaling) and Qwen3 (QK-norm, a head size of its own), tied and untied, through the one entry
point of model.weights (config.json dict and state dict both ways)."""

import importlib

import pytest
import torch

from scratchllm.config.model import ModelConfig
from scratchllm.config.sample import SampleConfig
from scratchllm.errors import ConfigError, UserError
from scratchllm.generate.engine import generate
from scratchllm.model import GPT
from scratchllm.model import functional as ops
from scratchllm.model.gpt import rope_tables
from scratchllm.model.info import kv_cache_bytes_per_token, num_params
from scratchllm.model.weights import (
    config_from_hf,
    config_from_hf_llama,
    config_from_hf_qwen3,
    from_hf,
    hf_config,
    hf_model_type,
    model_type_for,
    to_hf,
)

transformers = importlib.import_module("transformers")

# Llama with grouped-query attention and Llama 3's RoPE scaling. With head size 16 and base 10,000 the
# wavelengths are 6.3, 20, 63, 199, ... positions: against a pretraining context of 64 the first is
# kept, the next two blended and the rest scaled, and the 128-token context reaches past 64.
LLAMA = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, context_length=128, vocab_size=101, norm="rmsnorm",
             mlp="swiglu", position="rope", bias=False, qkv_bias=False, rope_scaling="llama3", rope_factor=8.0,
             rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_context=64)
# Qwen3: QK-norm, head size 32 with n_embd 48 and 4 heads (12 each otherwise), eps 1e-6, theta 1e6.
QWEN3 = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=48, head_size=32, context_length=128, vocab_size=101,
             norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", position="rope", rope_base=1e6, bias=False,
             qkv_bias=False, qk_norm=True)

CASES = {
    "llama-untied": {**LLAMA, "tie_weights": False},
    "llama-tied": {**LLAMA, "tie_weights": True},
    "llama-biases": {**LLAMA, "tie_weights": False, "n_kv_head": 1, "qkv_bias": True, "attn_proj_bias": True},
    "qwen3-untied": {**QWEN3, "tie_weights": False},
    "qwen3-tied": {**QWEN3, "tie_weights": True},
    "qwen3-bias-scaled": {**QWEN3, "tie_weights": False, "qkv_bias": True, "attn_proj_bias": True,
                          "rope_base": 10000.0, "rope_scaling": "llama3", "rope_original_context": 64},
    "gpt2-tiny": dict(n_layer=2, n_head=2, n_embd=32, context_length=128, vocab_size=101),
}


def hf_reference(config: ModelConfig):
    """transformers' model for `config` at random init (via our config.json dict), with norm weights
    (QK-norm's too) moved away from one so that a map that drops or swaps them shows."""
    d = hf_config(config)
    hf_cfg = transformers.AutoConfig.for_model(d.pop("model_type"), **d, bos_token_id=None, eos_token_id=None,
                                               pad_token_id=None, initializer_range=0.1)
    ref = transformers.AutoModelForCausalLM.from_config(hf_cfg).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.2)
    return ref


def ours_from(ref) -> GPT:
    """Our model from the reference's config.json dict and state dict, through the entry point."""
    hf = ref.config.to_dict()
    config = config_from_hf(hf)
    model = GPT(config).eval()
    model.load_state_dict(from_hf(ref.state_dict(), hf_model_type(hf)))
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_tokens_equal_transformers(case):
    config = ModelConfig(**CASES[case])
    torch.manual_seed(0)
    ref = hf_reference(config)
    model = ours_from(ref)
    assert model.config == config.replace(mlp_hidden=config.hidden_dim if config.mlp == "swiglu" else None)
    assert type(ref).__name__ == hf_config(config)["architectures"][0]
    idx = torch.randint(0, config.vocab_size, (2, config.context_length))
    with torch.no_grad():
        diff = (model(idx) - ref(idx).logits).abs().max().item()
    assert diff <= 1e-4
    # greedy: 20 new tokens after a prompt that, with them, runs past the rope scaling's original context
    prompt = idx[0, :60]
    ours = generate(model, prompt.tolist(), SampleConfig(temperature=0.0, max_new_tokens=20), eos_id=None)
    with torch.no_grad():
        # an explicit all-ones mask: else transformers takes prompt tokens equal to pad_token_id for padding
        theirs = ref.generate(prompt[None], attention_mask=torch.ones(1, 60, dtype=torch.long), max_new_tokens=20,
                              min_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0)[0, 60:].tolist()
    assert ours == theirs
    # and back: our state dict in transformers' names is theirs, tensor for tensor
    back = to_hf(model.state_dict(), model_type_for(config))
    hf_sd = ref.state_dict()
    assert set(back) == set(hf_sd)
    assert all(torch.equal(back[k], hf_sd[k]) for k in hf_sd)


@pytest.mark.parametrize("case", ["llama-tied", "qwen3-untied", "qwen3-bias-scaled"])
def test_round_trip_ours_hf_ours(case):
    config = ModelConfig(**CASES[case])
    torch.manual_seed(1)
    sd = GPT(config).state_dict()
    model_type = model_type_for(config)
    back = from_hf(to_hf(sd, model_type), model_type)
    assert set(back) == set(sd)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    hf = hf_config(config)
    assert config_from_hf(hf) == config.replace(mlp_hidden=config.hidden_dim)


def test_rope_scaling_changes_the_function():
    """The scaled model is not the plain one: the test above would catch a reader that ignored it."""
    config = ModelConfig(**CASES["llama-untied"])
    torch.manual_seed(0)
    scaled = GPT(config).eval()
    plain = GPT(config.replace(rope_scaling="none")).eval()
    plain.load_state_dict(scaled.state_dict())
    idx = torch.randint(0, config.vocab_size, (1, 100))
    with torch.no_grad():
        assert (scaled(idx) - plain(idx)).abs().max() > 1e-3


def test_llama3_frequencies_equal_transformers():
    """The frequency rule against transformers' own, at Llama 3.2 1B's settings."""
    rope_utils = importlib.import_module("transformers.modeling_rope_utils")
    hf = transformers.LlamaConfig(hidden_size=2048, num_attention_heads=32, rope_theta=500000.0,
                                  rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                                    high_freq_factor=4.0, original_max_position_embeddings=8192))
    theirs, _ = rope_utils.ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    config = config_from_hf_llama(hf.to_dict())
    assert (config.rope_scaling, config.rope_factor, config.rope_original_context) == ("llama3", 32.0, 8192)
    ours = ops.llama3_rope_frequencies(ops.rope_frequencies(64, 500000.0), 32.0, 1.0, 4.0, 8192)
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=0)
    plain = ops.rope_frequencies(64, 500000.0)
    assert torch.equal(ours[:4], plain[:4]) and torch.allclose(ours[-4:], plain[-4:] / 32)  # kept / scaled


def test_rope_tables_unchanged_without_scaling():
    """Existing models keep their exact tables (and so their outputs)."""
    config = ModelConfig.preset("mini-llama")
    cos, sin = rope_tables(config)
    old_cos, old_sin = ops.rope_tables(config.head_dim, config.context_length, config.rope_base)
    assert torch.equal(cos, old_cos) and torch.equal(sin, old_sin)


def test_hub_style_llama32_config():
    """A config.json as the hub has it for Llama 3.2 (transformers 4's keys: rope_scaling beside
    rope_theta) reads the same as transformers 5's rope_parameters."""
    hub = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048,
               intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
               rope_scaling=dict(factor=32.0, high_freq_factor=4.0, low_freq_factor=1.0,
                                 original_max_position_embeddings=8192, rope_type="llama3"),
               tie_word_embeddings=True, attention_bias=False, mlp_bias=False, hidden_act="silu")
    config = config_from_hf(hub)
    assert (config.rope_base, config.rope_factor, config.head_size, config.kv_heads) == (500000.0, 32.0, None, 8)
    assert config.tie_weights and config.norm_eps == 1e-5
    v5 = transformers.LlamaConfig(**{k: v for k, v in hub.items() if k != "model_type"}).to_dict()
    assert config_from_hf(v5) == config
    assert num_params(config) == 1_235_814_400  # Llama 3.2 1B's published count (tied head)


def test_hub_style_qwen3_config():
    hub = dict(architectures=["Qwen3ForCausalLM"], vocab_size=151936, hidden_size=1024, intermediate_size=3072,
               num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
               max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000, rope_scaling=None,
               tie_word_embeddings=True, attention_bias=False, use_sliding_window=False, sliding_window=None,
               max_window_layers=28, hidden_act="silu")
    assert hf_model_type(hub) == "qwen3"  # no model_type: from architectures
    config = config_from_hf(hub)
    assert (config.head_dim, config.attn_dim, config.n_embd, config.qk_norm) == (128, 2048, 1024, True)
    assert num_params(config) == 596_049_920  # Qwen3-0.6B's parameter count (tied head)
    with pytest.raises(UserError, match="sliding-window"):
        config_from_hf_qwen3({**hub, "use_sliding_window": True})


@pytest.mark.parametrize("case", list(CASES))
def test_info_counts_built_models(case):
    """Parameters, and the KV cache, follow the head size: counted against the built model and transformers'."""
    config = ModelConfig(**CASES[case])
    model = GPT(config)
    assert num_params(config) == model.num_params() == sum(p.numel() for p in hf_reference(config).parameters())
    cache = model.new_kv_cache(batch_size=1, max_len=10)
    assert cache.k.shape == (config.n_layer, 1, config.kv_heads, 10, config.head_dim)
    assert cache.nbytes() == kv_cache_bytes_per_token(config, "fp32") * 10


def test_unsupported_architectures_are_named():
    with pytest.raises(UserError, match="model_type 'mistral'.*gpt2.*llama.*qwen3"):
        hf_model_type({"model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    with pytest.raises(UserError, match="architectures.*BertModel.*qwen3"):
        config_from_hf({"architectures": ["BertModel"]})
    with pytest.raises(UserError, match="no model_type"):
        hf_model_type({})
    with pytest.raises(UserError, match="'t5'.*gpt2"):
        from_hf({}, "t5")
    # a config no architecture can express: the reason names the option
    with pytest.raises(UserError, match="no Hugging Face equivalent.*llama.*model.norm=layernorm"):
        model_type_for(ModelConfig.preset("tiny", position="rope"))
    with pytest.raises(UserError, match="gpt2.*model.head_size=8"):
        model_type_for(ModelConfig.preset("tiny", head_size=8))
    with pytest.raises(UserError, match="qwen3.*model.bias=true"):
        hf_config(ModelConfig(**{**QWEN3, "bias": True, "qkv_bias": True}))
    with pytest.raises(UserError, match="qk_norm off"):
        to_hf(GPT(ModelConfig(**LLAMA)).state_dict(), "qwen3")
    with pytest.raises(UserError, match="k_norm.*no place in Llama"):
        to_hf(GPT(ModelConfig(**QWEN3)).state_dict(), "llama")


@pytest.mark.parametrize("bad, match", [
    ({"head_size": 0}, "model.head_size"),
    ({"head_size": 7}, "even head size"),
    ({"position": "learned", "rope_scaling": "llama3"}, "needs position=rope"),
    ({"rope_scaling": "llama3", "rope_low_freq_factor": 4.0}, "rope_low_freq_factor"),
    ({"rope_scaling": "llama3", "rope_factor": 0.5}, "rope_factor"),
    ({"rope_scaling": "llama3", "rope_original_context": 0}, "rope_original_context"),
])
def test_option_validation(bad, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**{**QWEN3, **bad})


def test_head_size_lifts_the_divisibility_rule():
    config = ModelConfig(**{**QWEN3, "n_embd": 50})  # 50 dims, 4 heads of 32
    assert GPT(config)(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, config.vocab_size)
    with pytest.raises(ConfigError, match="head_size"):
        ModelConfig(**{**QWEN3, "n_embd": 50, "head_size": None})


@pytest.mark.parametrize("case", ["llama-untied", "qwen3-untied", "gpt2-tiny"])
def test_missing_head_of_an_untied_model_is_named(case):
    config = ModelConfig(**{**CASES[case], "tie_weights": False})
    model_type = model_type_for(config)
    hf = to_hf(GPT(config).state_dict(), model_type)
    del hf["lm_head.weight"]
    with pytest.raises(UserError, match="no 'lm_head.weight'.*untied"):
        from_hf(hf, model_type, tied=False)
    ours = from_hf(hf, model_type)  # not known: a missing head is the tied one (hub GPT-2 files)
    assert ours["lm_head.weight"] is ours["tok_emb.weight"]
    hf["lm_head.weight"] = torch.zeros_like(ours["tok_emb.weight"])
    assert from_hf(hf, model_type, tied=True)["lm_head.weight"] is ours["tok_emb.weight"]


def test_book_layout_refuses_options_it_lacks():
    from scratchllm.model.weights import to_book_gpt

    with pytest.raises(UserError, match="attn_proj_bias"):
        to_book_gpt(GPT(ModelConfig.preset("tiny", attn_proj_bias=False, tie_weights=False)).state_dict())
    with pytest.raises(UserError, match="head_size"):
        to_book_gpt(GPT(ModelConfig.preset("tiny", head_size=8, tie_weights=False)).state_dict())


def test_qwen3_shape_decodes_the_same_through_every_engine_path(monkeypatch):
    """QK-norm and a head size of its own through the engine's fast linears (its qkv and MLP are large
    enough to be wrapped), a padded batch and prompt lookup: the tokens of plain greedy decoding."""
    from scratchllm.generate.engine import generate_batch
    from scratchllm.model import fast_linear

    config = ModelConfig(**{**QWEN3, "n_embd": 512, "head_size": 128, "mlp_hidden": 1024, "vocab_size": 256,
                            "rope_scaling": "llama3", "rope_original_context": 32, "rope_base": 10000.0})
    torch.manual_seed(0)
    model = GPT(config).eval()
    assert fast_linear.worth_wrapping(model)
    prompt = torch.randint(0, config.vocab_size, (24,)).tolist()
    sample = SampleConfig(temperature=0.0, max_new_tokens=20)
    fast = generate(model, prompt, sample, eos_id=None)
    batch = generate_batch(model, [prompt, prompt[:9]], sample, eos_id=None)
    lookup = generate(model, prompt, sample.replace(prompt_lookup=4), eos_id=None)
    monkeypatch.setattr(fast_linear, "MIN_WEIGHTS", 2**62)  # nothing wrapped
    assert generate(model, prompt, sample, eos_id=None) == fast == batch[0] == lookup
    assert generate(model, prompt[:9], sample, eos_id=None) == batch[1]
    seq = list(prompt)  # and the engine's cached steps are the uncached model's argmax
    with torch.no_grad():
        for _ in range(20):
            seq.append(model(torch.tensor([seq]))[0, -1].argmax().item())
    assert seq[24:] == fast


@pytest.mark.parametrize("case", ["qwen3-untied", "llama-biases"])
def test_explicit_attention_equals_fused_with_new_options(case):
    config = ModelConfig(**CASES[case])
    torch.manual_seed(0)
    fused = GPT(config.replace(attention="sdpa")).eval()
    explicit = GPT(config.replace(attention="explicit")).eval()
    explicit.load_state_dict(fused.state_dict())
    idx = torch.randint(0, config.vocab_size, (2, 40))
    with torch.no_grad():
        assert torch.allclose(fused(idx), explicit(idx), atol=1e-5, rtol=1e-5)
