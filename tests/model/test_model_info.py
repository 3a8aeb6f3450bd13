"""model.info's config-only numbers against real models, and the GPT-2 sizes on the meta device."""

import pytest
import torch

from scratchllm.config.model import PRESETS, ModelConfig
from scratchllm.model import GPT, info

CONFIGS = [
    ModelConfig.preset("tiny"),
    ModelConfig.preset("nano"),
    ModelConfig.preset("mini-llama"),
    ModelConfig.preset("tiny", bias=False, qkv_bias=True, tie_weights=False),
    ModelConfig.preset("tiny", mlp="swiglu", mlp_hidden=40, n_kv_head=1, position="rope"),
    ModelConfig.preset("tiny", norm="rmsnorm", bias=True, qkv_bias=False),
    # Qwen3's options: a head size apart from n_embd / n_head, QK-norm weights, an output-projection bias
    ModelConfig.preset("tiny", norm="rmsnorm", mlp="swiglu", position="rope", head_size=24, n_kv_head=1,
                       qk_norm=True, bias=False, qkv_bias=True, attn_proj_bias=True),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.norm}-{c.mlp}-{c.position}-{c.kv_heads}")
def test_counts_equal_the_real_model(config):
    model = GPT(config)
    assert info.num_params(config) == model.num_params()
    assert info.num_params(config, exclude_embeddings=True) == model.num_params(exclude_embeddings=True)
    # counting a tied head twice = summing every entry of the state dict
    assert info.num_params(config, count_tied_head=True) == sum(t.numel() for t in model.state_dict().values())
    assert info.block_params(config) == sum(p.numel() for p in model.blocks[0].parameters())
    counts = info.param_counts(config)
    assert counts.head == (0 if config.tie_weights else model.lm_head.weight.numel())
    assert info.param_bytes(config, "fp32") == sum(p.numel() * p.element_size() for p in model.parameters())
    assert info.param_bytes(config, "bf16") * 2 == info.param_bytes(config, "fp32")


@pytest.mark.parametrize("config", CONFIGS[:3] + CONFIGS[-1:])
def test_kv_cache_bytes_equal_the_real_cache(config):
    model = GPT(config)
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        cache = model.new_kv_cache(batch_size=1, max_len=10, dtype=dtype)
        assert cache.nbytes() == 10 * info.kv_cache_bytes_per_token(config, name)


# OpenAI's released GPT-2 sizes (tied head, 1,024 positions).
GPT2_SIZES = {"gpt2-small": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080,
              "gpt2-xl": 1_557_611_200}


@pytest.mark.parametrize("name", list(GPT2_SIZES))
def test_gpt2_sizes_on_meta_device(name):
    config = ModelConfig.preset(name)
    with torch.device("meta"):
        model = GPT(config)
    assert model.num_params() == GPT2_SIZES[name]
    assert info.num_params(config) == GPT2_SIZES[name]


def test_every_preset_counts_like_its_model():
    for name in PRESETS:
        config = ModelConfig.preset(name)
        with torch.device("meta"):
            model = GPT(config)
        assert info.num_params(config) == model.num_params(), name


def test_flop_formulas():
    c = ModelConfig.preset("gpt2-small")
    n = 124_439_808 - 786_432  # every weight a token multiplies: all but the position table (head = wte)
    assert info.matmul_params(c) == n
    assert info.train_flops_per_token(c) == 6 * n + 12 * 12 * 768 * 1024
    assert info.inference_flops_per_token(c, seq_len=256) == 2 * n + 2 * 12 * 768 * 256
    untied = c.replace(tie_weights=False)
    assert info.matmul_params(untied) == n  # the head's matmul costs the same tied or not
    # the attention term: exact count of q.k and weights.v multiply-adds at one cached step
    l, d, t = 12, 768, 100
    per_step = [4 * l * d * (i + 1) for i in range(t)]  # position i attends to i+1 keys
    assert abs(sum(per_step) / t - 2 * l * d * t) / (2 * l * d * t) < 0.02


@pytest.mark.parametrize("tied", [True, False])
def test_train_flops_per_token_by_hand(tied):
    """6N + 12 L d T with N counted by hand: the blocks, the final norm and the head; never the
    embedding tables (lookups), whether or not the head shares the token table."""
    c = ModelConfig.preset("tiny", vocab_size=64, n_embd=32, tie_weights=tied)  # 2 layers, d 32, T 32, biases
    d, v, hidden = 32, 64, 4 * 32
    per_block = (2 * 2 * d  # two LayerNorms, weight and bias
                 + d * 3 * d + 3 * d + d * d + d  # fused qkv and the output projection, with biases
                 + d * hidden + hidden + hidden * d + d)  # the MLP, with biases
    n = 2 * per_block + 2 * d + v * d  # blocks, final LayerNorm, head (v x d, tied or not)
    assert info.matmul_params(c) == n
    assert info.train_flops_per_token(c) == 6 * n + 12 * 2 * d * 32
    model = GPT(c)
    embeddings = model.tok_emb.weight.numel() + model.pos_emb.weight.numel()
    # what the model holds: an untied one has the token table besides the head, a tied one shares it
    assert model.num_params() == n + embeddings - (v * d if tied else 0)
    assert info.mfu(100.0, info.train_flops_per_token(c), 1e9) == pytest.approx(100 * (6 * n + 12 * 2 * d * 32) / 1e9)


def test_flops_match_a_counted_forward():
    """Count the matmul FLOPs of a real forward pass with torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    config = ModelConfig.preset("tiny", attention="explicit")
    model = GPT(config).eval()
    t = config.context_length
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, t, dtype=torch.long))
    counted = counter.get_total_flops() / t
    # forward over a full sequence: 2N + 4 L d T (all T x T scores computed, no causal saving)
    expected = 2 * info.matmul_params(config) + 4 * config.n_layer * config.n_embd * t
    # N also holds biases and norm weights (2 FLOPs each in 2N), which are not matmuls
    vectors = sum(p.numel() for p in model.parameters() if p.ndim == 1)
    assert counted == expected - 2 * vectors
    assert vectors / info.matmul_params(config) < 0.03
    assert info.train_flops_per_token(config) == 3 * expected


def test_summary_is_json_ready():
    import json

    s = info.summary(ModelConfig.preset("mini-llama"), seq_len=128)
    back = json.loads(json.dumps(s))
    assert back["params_total"] == info.num_params(ModelConfig.preset("mini-llama"))
    assert back["seq_len"] == 128 and back["config"]["position"] == "rope"


def test_unknown_dtype():
    from scratchllm.errors import UserError

    with pytest.raises(UserError, match="fp8"):
        info.param_bytes(ModelConfig.preset("tiny"), "fp8")


def test_attention_flops_follow_the_head_size():
    """The attention term counts q.k and weights.v over n_head heads of head_size dims each; with
    head_size = n_embd / n_head it is the usual 12·L·n_embd·T."""
    base = ModelConfig.preset("tiny", position="rope")
    wide = base.replace(head_size=32)  # 2 heads of 32: twice the attention width of 2 x 16
    attn = lambda c: info.train_flops_per_token(c, 8) - 6 * info.matmul_params(c)  # noqa: E731
    assert attn(base) == 12 * base.n_layer * base.n_embd * 8
    assert attn(wide) == 2 * attn(base)
    assert info.inference_flops_per_token(wide, 8) - 2 * info.matmul_params(wide) == attn(wide) // 6
