"""Loading a quantized checkpoint builds the model on the meta device: no fp32 weights are made or initialised,
the file's tensors are assigned, and the model computes what the saved one did (RoPE tables included)."""

import pytest
import torch

from scratchllm.checkpoint import load_model, save_checkpoint
from scratchllm.compress.quantize import QuantScheme, quantize_model
from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT

GPT2ISH = dict(vocab_size=64, context_length=16, n_layer=2, n_head=2, n_embd=32)
LLAMAISH = dict(GPT2ISH, n_kv_head=1, norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=False,
                tie_weights=False, qk_norm=True)


@pytest.mark.parametrize("kw", [GPT2ISH, LLAMAISH], ids=["gpt2-tied", "llama-untied-rope"])
@pytest.mark.parametrize("scheme", [QuantScheme(8), QuantScheme(4, 16, False)], ids=["int8", "int4-asym"])
def test_a_quantized_checkpoint_loads_on_meta_and_computes_the_same(kw, scheme, tmp_path, monkeypatch):
    import scratchllm.model.gpt as gpt

    torch.manual_seed(0)
    model = GPT(ModelConfig(**kw)).eval()
    quantize_model(model, scheme)
    folder = save_checkpoint(tmp_path / "q", model)
    devices = []
    real_init = gpt.init_weights
    monkeypatch.setattr(gpt, "init_weights", lambda m: devices.append(m.tok_emb.weight.device.type) or real_init(m))
    loaded, _, _ = load_model(folder)
    assert devices == ["meta"]  # built (and "initialised") without memory
    tensors = dict(loaded.named_parameters()) | dict(loaded.named_buffers())
    assert not [n for n, t in tensors.items() if t.is_meta]
    x = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded(x), model(x))


def test_a_plain_checkpoint_is_built_empty_and_a_lora_one_on_the_cpu(tmp_path, monkeypatch):
    """A plain checkpoint's model is built on the meta device too and given the file's tensors (nothing random,
    nothing copied); a LoRA checkpoint's is still built on the CPU (its adapters are added to real layers)."""
    import scratchllm.model.gpt as gpt
    from scratchllm.config.lora import LoraConfig
    from scratchllm.model.lora import add_lora

    torch.manual_seed(0)
    model = GPT(ModelConfig(**GPT2ISH)).eval()
    folder = save_checkpoint(tmp_path / "p", model)
    lora = GPT(ModelConfig(**GPT2ISH)).eval()
    add_lora(lora, LoraConfig(r=2))
    lora_folder = save_checkpoint(tmp_path / "l", lora)
    devices = []
    real_init = gpt.init_weights
    monkeypatch.setattr(gpt, "init_weights", lambda m: devices.append(m.tok_emb.weight.device.type) or real_init(m))
    loaded, _, _ = load_model(folder)
    assert devices == ["meta"]
    assert loaded.lm_head.weight is loaded.tok_emb.weight  # the tied head is one tensor again
    x = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded(x), model(x))
    devices.clear()
    load_model(lora_folder)
    assert devices == ["cpu"]
