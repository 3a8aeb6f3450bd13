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


@pytest.mark.parametrize("tied", [True, False])
def test_read_model_trains_without_touching_the_file(tmp_path, tied):
    """A model read from safetensors keeps memory-mapped tensors where they need no change: training it
    must not write into the user's file. Every parameter is in a layout the C decode kernel reads in place
    (contiguous, or GPT-2's Conv1D matrices as transposed views of the file's tensors: not copied), a tied head
    stays tied through the step, and the step moves the weights."""
    import hashlib

    ref = hf_model("gpt2", tied)
    folder = save(ref, tmp_path / "m")
    weights_file = folder / "model.safetensors"
    before = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    model, _, _ = read_hf(folder)
    from scratchllm.model.gemv import Kernel

    assert all(Kernel.takes(p) for p in model.parameters() if p.dim() == 2)
    assert all(p.is_contiguous() for p in model.parameters() if p.dim() != 2)
    assert not model.blocks[0].attn.qkv.weight.is_contiguous()  # the file's (in, out) matrix, in place
    assert (model.lm_head.weight is model.tok_emb.weight) == tied
    old = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(3))
    out = model(ids)
    loss = torch.nn.functional.cross_entropy((out[0] if isinstance(out, tuple) else out).flatten(0, 1),
                                             ids.flatten())
    loss.backward()
    opt.step()
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, old[k])]
    assert "tok_emb.weight" in moved and "blocks.0.attn.qkv.weight" in moved and "blocks.0.norm1.bias" in moved
    assert (model.lm_head.weight is model.tok_emb.weight) == tied
    assert hashlib.sha256(weights_file.read_bytes()).hexdigest() == before
    again, _, _ = read_hf(folder)  # the file still holds transformers' weights
    assert (logits(again, ids) - ref(ids).logits).abs().max().item() <= 1e-4


def test_model_tensors_copies_only_what_it_must():
    """Contiguous tensors of the wanted dtype, and matrices stored transposed (GPT-2's Conv1D views), come back as
    themselves; other strided views and other dtypes as contiguous copies with the same values (on several
    threads); a tensor under two names stays one."""
    from scratchllm.interop.hf import model_tensors

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(50, 8, generator=g)
    conv = [torch.randn(8, 24, generator=g) for _ in range(5)]  # Conv1D layout (in, out)
    strided = [torch.randn(8, 48, generator=g)[:, ::2] for _ in range(3)]  # neither layout
    sd = {"emb": emb, "head": emb, "ids": torch.arange(6), "half": torch.randn(4, 8, generator=g).bfloat16(),
          **{f"w{i}": w.t() for i, w in enumerate(conv)}, **{f"s{i}": s for i, s in enumerate(strided)}}
    out = model_tensors(sd)
    assert out["emb"] is emb and out["head"] is emb and out["ids"] is sd["ids"] and out["half"] is sd["half"]
    for i, w in enumerate(conv):
        assert out[f"w{i}"] is sd[f"w{i}"] and out[f"w{i}"].data_ptr() == w.data_ptr()  # read in place
    for i, s in enumerate(strided):
        assert out[f"s{i}"].is_contiguous() and torch.equal(out[f"s{i}"], s)
    fp32 = model_tensors(sd, torch.float32)
    assert fp32["emb"] is emb and fp32["ids"] is sd["ids"] and fp32["w0"] is sd["w0"]
    assert fp32["half"].dtype == torch.float32 and torch.equal(fp32["half"], sd["half"].float())
    bf16 = model_tensors(sd, torch.bfloat16)  # converted: a new contiguous tensor
    assert bf16["w1"].is_contiguous() and bf16["w1"].dtype == torch.bfloat16 and torch.equal(
        bf16["w1"], conv[1].t().bfloat16())
    shared = {"a": sd["half"], "b": sd["half"]}
    converted = model_tensors(shared, torch.float32)
    assert converted["a"] is converted["b"]
    assert model_tensors({}) == {}


def test_release_pages_lets_go_of_a_mapped_tensors_pages_and_keeps_its_values(tmp_path):
    """A tensor read from a memory-mapped safetensors file, once released, no longer counts in the process's
    resident file pages; reading it again gives the same values (the pages come back from the file)."""
    import sys

    from safetensors.torch import load_file, save_file

    from scratchllm.interop.hf import release_pages

    def rss_file_mb() -> float:
        for line in open("/proc/self/status"):
            if line.startswith("RssFile:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no RssFile in /proc/self/status")

    w = torch.randn(4096, 1024, generator=torch.Generator().manual_seed(0))  # 16 MB
    save_file({"w": w, "b": torch.ones(3)}, str(tmp_path / "m.safetensors"))
    sd = load_file(str(tmp_path / "m.safetensors"))
    assert torch.equal(sd["w"], w)  # every page read: mapped into this process
    if sys.platform.startswith("linux"):
        before = rss_file_mb()
        release_pages(sd["w"])
        assert before - rss_file_mb() >= 15
    assert torch.equal(sd["w"], w) and torch.equal(sd["b"], torch.ones(3))
