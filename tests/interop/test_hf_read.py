"""Reading Hugging Face folders (interop.hf): parity with transformers at random init.

transformers writes each folder in the test; we read it and compare logits (<= 1e-4 fp32) and
greedy tokens with the transformers model. Single, sharded and PyTorch-pickle weight files; GPT-2
and Llama (GQA), tied and untied heads; the GPT-2 124M shape once.
"""

from __future__ import annotations

import json

import pytest
import torch
from interop_helpers import VOCAB, gpt2_config, hf_model, save

from scratchllm.interop.hf import read_hf
from scratchllm.interop.load import detect, load_any


def logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return (out[0] if isinstance(out, tuple) else out).float()


def greedy_ours(model, prompt: list[int], n: int) -> list[int]:
    """n new tokens from scratchllm's engine (KV cache), greedy."""
    from scratchllm.config.sample import SampleConfig
    from scratchllm.generate.engine import generate

    return generate(model, prompt, SampleConfig(max_new_tokens=n, temperature=0.0))


def test_logits_and_greedy_equal_transformers(hf_folder):
    ref, folder = hf_folder
    model, tokenizer, meta = read_hf(folder)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    diff = (logits(model, ids) - ref(ids).logits).abs().max().item()
    assert diff <= 1e-4
    assert model.config.tie_weights == ref.config.tie_word_embeddings
    assert (model.lm_head.weight is model.tok_emb.weight) == model.config.tie_weights
    # greedy: transformers' generate against ours, token for token
    prompt = ids[:1, :8]
    theirs = ref.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert greedy_ours(model, prompt[0].tolist(), 12) == theirs[0, 8:].tolist()
    assert meta["format"] == "hf" and detect(folder) == "hf"
    assert tokenizer is None  # transformers wrote no tokenizer files


def test_generation_settings_kept(tmp_path):
    ref = hf_model("llama", False)
    folder = save(ref, tmp_path / "m")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    _, _, meta = load_any(folder)
    assert meta["generation"] == {"eos_token_id": 2, "bos_token_id": 1, "chat_template": "{{ messages }}"}


@pytest.mark.parametrize("how", ["sharded", "pytorch_bin"])
def test_sharded_and_pytorch_bin(tmp_path, how):
    ref = hf_model("gpt2", False)
    single = save(ref, tmp_path / "single")
    if how == "sharded":
        folder = save(ref, tmp_path / how, max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
        assert len(list(folder.glob("model-*.safetensors"))) > 1
    else:
        folder = tmp_path / how
        folder.mkdir()
        (folder / "config.json").write_text((single / "config.json").read_text())
        torch.save(ref.state_dict(), folder / "pytorch_model.bin")
    a, _, _ = read_hf(single)
    b, _, _ = read_hf(folder)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_gpt2_124m_shape(tmp_path):
    """The released GPT-2 small's shape (random weights): every tensor lands, logits equal."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    ref = GPT2LMHeadModel(gpt2_config(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)).eval()
    folder = save(ref, tmp_path / "gpt2-124m")
    model, _, _ = read_hf(folder)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    ids = torch.randint(0, 50257, (1, 32), generator=torch.Generator().manual_seed(2))
    assert (logits(model, ids) - ref(ids).logits).abs().max().item() <= 1e-4


def test_bf16_folder_read_as_fp32(tmp_path):
    """Hub models are mostly stored in bf16: read as fp32 (exactly the stored values), as transformers
    does with dtype=float32."""
    from transformers import AutoModelForCausalLM

    folder = save(hf_model("llama", False).to(torch.bfloat16), tmp_path / "bf16")
    model, _, _ = read_hf(folder)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(5))
    assert (logits(model, ids) - ref(ids).logits).abs().max().item() <= 1e-4
