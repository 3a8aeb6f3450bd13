"""`scratchllm export hf`, `scratchllm import`, and the commands that take any model folder.

Export: a scratchllm checkpoint (GPT-2-shaped or Llama-style, tied or untied, with our trained
BPE) -> a folder that transformers' AutoModelForCausalLM loads with logits equal to ours (<= 1e-4
fp32) and whose tokenizer AutoTokenizer loads and encodes identically. Round trip scratchllm -> HF
-> scratchllm gives identical tensors. Import: a transformers-written folder -> a checkpoint with
tokenizer, generation.json and a model card. `generate -m` and `train --init-from` read HF folders.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from interop_helpers import TORTURE, hf_model, save, trained_bpe

from scratchllm.checkpoint import load_model, save_checkpoint, verify_checkpoint
from scratchllm.cli import main
from scratchllm.config.model import ModelConfig
from scratchllm.model import GPT
from scratchllm.tokenizer.hf import export_hf

CONFIGS = {
    "gpt2-tied": dict(tie_weights=True),
    "gpt2-untied": dict(tie_weights=False),
    "llama-gqa-tied": dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=False, n_kv_head=2,
                           rope_base=500000.0, tie_weights=True),
    "llama-gqa-untied": dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=False,
                             n_kv_head=2, tie_weights=False),
    # Llama 3.x's rope scaling (the 64-token context is beyond the original 16)
    "llama3-rope-scaling": dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=False,
                                n_kv_head=2, rope_base=500000.0, rope_scaling="llama3", rope_factor=8.0,
                                rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_context=16),
    # Qwen3: QK-norm and a head size apart from n_embd / n_head
    "qwen3-tied": dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=False, n_kv_head=2,
                       qk_norm=True, head_size=16, norm_eps=1e-6, tie_weights=True),
    "qwen3-untied": dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=False, n_kv_head=2,
                         qk_norm=True, head_size=16, norm_eps=1e-6, tie_weights=False),
}


def checkpoint(tmp_path, options: dict, name: str = "ckpt"):
    """A scratchllm checkpoint folder: a tiny GPT with random (non-trivial) weights and our trained BPE."""
    tok = trained_bpe()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, n_embd=32, context_length=64, **options))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_checkpoint(tmp_path / name, model.eval(), tokenizer=tok, state={"step": 3}), model, tok


def logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("options", CONFIGS.values(), ids=CONFIGS.keys())
def test_export_hf_loads_in_transformers_with_equal_logits(tmp_path, options, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, model, tok = checkpoint(tmp_path, options)
    out = tmp_path / "hf"
    assert main(["export", "hf", str(folder), "--out", str(out)]) == 0
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    expected = ("GPT2LMHeadModel" if options.get("position") is None else
                "Qwen3ForCausalLM" if options.get("qk_norm") else "LlamaForCausalLM")
    assert type(hf).__name__ == expected
    ids = torch.randint(0, tok.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (hf(ids).logits - logits(model, ids)).abs().max().item()
    assert diff <= 1e-4
    auto = AutoTokenizer.from_pretrained(out)
    assert auto.encode(TORTURE, add_special_tokens=False) == tok.encode(TORTURE, allowed_special="all")
    assert auto.eos_token == "<|endoftext|>"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tok.special_tokens[
        "<|endoftext|>"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("options", CONFIGS.values(), ids=CONFIGS.keys())
def test_round_trip_scratchllm_hf_scratchllm_identical(tmp_path, options):
    folder, model, tok = checkpoint(tmp_path, options)
    assert main(["export", "hf", str(folder), "--out", str(tmp_path / "hf")]) == 0
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    back, back_tok, meta = load_model(tmp_path / "back")
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same model (Llama's config.json spells out the MLP width our config may leave implicit)
    assert back.config == dataclasses.replace(model.config, mlp_hidden=back.config.mlp_hidden)
    assert back.config.hidden_dim == model.config.hidden_dim
    assert (back_tok.vocab, back_tok.merges, back_tok.pattern, back_tok.special_tokens) == \
        (tok.vocab, tok.merges, tok.pattern, tok.special_tokens)


def test_import_hf_folder_writes_a_checkpoint_with_card_and_generation(tmp_path):
    ref = hf_model("llama", tied=False)
    src = save(ref, tmp_path / "SmolThing")
    tok = trained_bpe()
    export_hf(tok, src / "tokenizer.json")
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for m in messages %}{{ m }}"
                                                                            "{% endfor %}"}))
    (src / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# A model\n")
    out = tmp_path / "imported"
    assert main(["import", str(src), "--out", str(out)]) == 0
    verify_checkpoint(out)  # every file in the manifest, sizes and sha256
    model, tokenizer, _ = load_model(out)
    ids = torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (logits(model, ids) - ref(ids).logits).abs().max().item() <= 1e-4
    assert tokenizer.encode(TORTURE, allowed_special="all") == tok.encode(TORTURE, allowed_special="all")
    gen = json.loads((out / "generation.json").read_text())
    assert gen == {"eos_token_id": 2, "bos_token_id": 1, "chat_template": "{% for m in messages %}{{ m }}{% endfor %}"}
    card = (out / "MODEL_CARD.md").read_text()
    assert "Licence: apache-2.0" in card and str(src) in card and "llama" in card


def test_generate_takes_a_hf_folder_directly(tmp_path, capsys):
    """`generate -m HF_FOLDER` gives the same greedy text as the imported checkpoint."""
    ref = hf_model("gpt2", tied=True)
    src = save(ref, tmp_path / "g")
    export_hf(trained_bpe(), src / "tokenizer.json")
    assert main(["import", str(src), "--out", str(tmp_path / "ck")]) == 0
    texts = []
    for model in (src, tmp_path / "ck"):
        capsys.readouterr()
        assert main(["generate", "-m", str(model), "I had always", "--max-new-tokens", "12",
                     "--temperature", "0"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("I had always") and len(texts[0]) > len("I had always\n")


def test_export_is_atomic(tmp_path, monkeypatch):
    """An error while writing leaves neither the folder nor a temporary one."""
    import safetensors.torch

    folder, _, _ = checkpoint(tmp_path, CONFIGS["gpt2-tied"])

    def fail(sd, path, metadata=None):
        open(path, "wb").write(b"half a file")  # noqa: SIM115
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["export", "hf", str(folder), "--out", str(tmp_path / "hf")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before


TINY_RUN = """name = "a"
[data]
dataset = "{text}"
tokenizer = {{ kind = "char" }}
dedup = false
near_dedup = false
[model]
n_layer = 1
n_head = 2
n_embd = 16
context_length = 16
[train]
max_steps = 2
batch_size = 2
eval_interval = 1
eval_batches = 1
peak_flops = 1e9
threads = 1
progress = false
[sample]
max_new_tokens = 0
"""


def test_train_init_from_starts_from_those_weights(tmp_path, capsys, monkeypatch):
    """Run b starts from run a's weights (a learning rate of 1e-12 then keeps them); a model of other
    shapes is one error naming the tensor."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCRATCHLLM_OFFLINE", "1")
    (tmp_path / "text.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 40)
    (tmp_path / "tiny.toml").write_text(TINY_RUN.format(text=tmp_path / "text.txt"))
    assert main(["train", "--config", "tiny.toml", "--warmup_steps", "0", "--lr", "0.01"]) == 0  # far from its init
    a, _, _ = load_model(tmp_path / "runs" / "a")
    fresh = GPT(a.config).state_dict()
    assert not all(torch.allclose(v, fresh[k], atol=1e-3) for k, v in a.state_dict().items())
    assert main(["train", "--config", "tiny.toml", "--name", "b", "--init-from", "runs/a", "--lr", "1e-12"]) == 0
    assert "initialised from runs/a" in capsys.readouterr().out
    b, _, _ = load_model(tmp_path / "runs" / "b")
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)
    capsys.readouterr()
    assert main(["train", "--config", "tiny.toml", "--name", "c", "--init-from", "runs/a", "--n_embd", "32"]) == 2
    err = capsys.readouterr().err
    assert "error: init_from runs/a: tensor 'tok_emb.weight' has shape [" in err and "16] there" in err


def test_generate_stops_at_any_end_of_text_id_of_the_source(tmp_path, capsys):
    """generation_config.json may list several end-of-text ids (Llama 3 does): `generate` stops at each,
    from the HF folder and from its imported checkpoint alike."""
    ref = hf_model("llama", tied=False)
    src = save(ref, tmp_path / "l")
    tok = trained_bpe()
    export_hf(tok, src / "tokenizer.json")
    prompt = "the cat"
    ids = tok.encode(prompt)
    theirs = ref.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(ids):].tolist()
    first, third = theirs[0], theirs[2]  # greedy draws these: make them two of the end-of-text ids
    stop_at = theirs.index(third) if first == third else min(theirs.index(first), theirs.index(third))
    (src / "generation_config.json").write_text(json.dumps({"eos_token_id": [third, first]}))
    assert main(["import", str(src), "--out", str(tmp_path / "ck")]) == 0
    for model in (src, tmp_path / "ck"):
        capsys.readouterr()
        assert main(["generate", "-m", str(model), prompt, "--temperature", "0", "--max-new-tokens", "12",
                     "--no-echo"]) == 0
        out = capsys.readouterr().out
        assert out == tok.decode(theirs[:stop_at]) + "\n"
