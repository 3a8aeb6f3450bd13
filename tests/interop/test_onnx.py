"""ONNX export checked with onnxruntime against our PyTorch model in fp32.

Two tiny random models: GPT-2-shaped (learned positions, LayerNorm, GELU, biases, tied head) and
Llama-shaped (RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, untied head). Each is
exported with and without KV-cache inputs; logits agree within 1e-4 for several batch sizes,
sequence and past lengths (one export serves them all: the axes are dynamic), and greedy generation
through onnxruntime with the cache gives the engine's tokens, also past a sliding window.
Needs the export extra (onnx, onnxscript, onnxruntime), which the dev extra includes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchllm.checkpoint import save_checkpoint
from scratchllm.cli import main
from scratchllm.config.model import ModelConfig
from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate.engine import generate
from scratchllm.interop import onnx_export as ox
from scratchllm.model import GPT

SHAPES = {
    "gpt2": dict(n_layer=2, n_head=4, n_embd=32, context_length=24, vocab_size=97),
    "llama": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, context_length=24, vocab_size=97,
                  norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=False, tie_weights=False),
}


def tiny(kind: str) -> GPT:
    torch.manual_seed({"gpt2": 1, "llama": 2}[kind])
    return GPT(ModelConfig(**SHAPES[kind])).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def exported(request, tmp_path_factory):
    """(model, session without cache, session with cache) for one shape."""
    model = tiny(request.param).train()
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    plain = ox.export_onnx(model, folder / "plain.onnx")
    cached = ox.export_onnx(model, folder / "cached.onnx", kv_cache=True)
    assert model.training  # exported in eval mode, then given back in the mode it had
    model.eval()
    assert sorted(p.name for p in folder.iterdir()) == ["cached.onnx", "plain.onnx"]  # nothing else left
    return model, ox.onnx_session(plain, threads=1), ox.onnx_session(cached, threads=1)


@pytest.mark.parametrize("b,t", [(1, 1), (1, 9), (3, 24)])
def test_logits_match_pytorch(exported, b, t):
    model, plain, _ = exported
    ids = torch.randint(0, model.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(t))
    with torch.no_grad():
        ref = model(ids).numpy()
    (got,) = plain.run(None, {"input_ids": ids.numpy()})
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("b,p,t", [(1, 0, 7), (2, 5, 1), (2, 9, 4)])
def test_cached_graph_matches_our_kv_cache(exported, b, p, t):
    """Prefill p tokens in PyTorch with our KVCache, then t more: the graph, given that past, agrees."""
    model, _, cached = exported
    c = model.config
    ids = torch.randint(0, c.vocab_size, (b, p + t), generator=torch.Generator().manual_seed(p * 10 + t))
    cache = model.new_kv_cache(b)
    with torch.no_grad():
        if p:
            model(ids[:, :p], kv_cache=cache)
        ref = model(ids[:, p:], kv_cache=cache).numpy()
    past_k = cache.k[:, :, :, :p].numpy().copy()
    past_v = cache.v[:, :, :, :p].numpy().copy()
    logits, pk, pv = cached.run(None, {"input_ids": ids[:, p:].numpy(), "past_keys": past_k, "past_values": past_v})
    assert np.abs(logits - ref).max() <= 1e-4
    assert pk.shape == (c.n_layer, b, c.kv_heads, p + t, c.head_dim)
    assert np.abs(pk - cache.k[:, :, :, :p + t].numpy()).max() <= 1e-5
    assert np.abs(pv - cache.v[:, :, :, :p + t].numpy()).max() <= 1e-5
    with torch.no_grad():  # and both equal the uncached forward's last positions
        full = model(ids).numpy()[:, p:]
    assert np.abs(logits - full).max() <= 1e-4


@pytest.mark.parametrize("prompt_len,new", [(5, 12), (3, 40)])  # 40: past the 24-token context (window slides)
def test_greedy_generation_through_onnxruntime_matches_the_engine(exported, prompt_len, new):
    model, _, cached = exported
    prompt = torch.randint(0, model.config.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(7))
    ours = generate(model, prompt.tolist(), SampleConfig(temperature=0.0, max_new_tokens=new))
    theirs = ox.onnx_generate(cached, prompt.tolist(), new)
    assert theirs == ours and len(ours) == new


def test_eos_ends_onnx_generation(exported):
    model, _, cached = exported
    prompt = [1, 2, 3]
    ours = ox.onnx_generate(cached, prompt, 6)
    assert ox.onnx_generate(cached, prompt, 6, eos_id=ours[2]) == ours[:ours.index(ours[2])]


def test_generation_needs_the_cached_graph(exported):
    _, plain, _ = exported
    with pytest.raises(UserError, match="--kv-cache"):
        ox.onnx_generate(plain, [1, 2], 3)


def test_cli_exports_a_checkpoint(tmp_path, capsys, monkeypatch):
    """Through the command, with the weights in FILE.data beside FILE (as for models over 1 GiB)."""
    monkeypatch.setattr(ox, "EXTERNAL_DATA_BYTES", 0)
    model = tiny("llama")
    save_checkpoint(tmp_path / "ck", model)
    out = tmp_path / "out" / "m.onnx"
    assert main(["export", "onnx", str(tmp_path / "ck"), "--out", str(out), "--kv-cache"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (out.parent / "m.onnx.data").stat().st_size >= model.tok_emb.weight.numel() * 4  # the weights are there
    ids = [4, 5, 6]
    assert ox.onnx_generate(out, ids, 5) == generate(model, ids, SampleConfig(temperature=0.0, max_new_tokens=5))


def test_a_missing_onnx_package_is_one_clear_error(monkeypatch, tmp_path, capsys):
    import builtins

    real = builtins.__import__

    def no_onnx(name, *args, **kw):
        if name == "onnxscript" or name.startswith("onnxscript."):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert main(["export", "onnx", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'scratchllm[export]'" in err[0]
    assert not (tmp_path / "m.onnx").exists()


def test_out_must_be_a_file(tmp_path):
    with pytest.raises(UserError, match="is a folder"):
        ox.export_onnx(tiny("gpt2"), tmp_path)


def test_a_missing_run_is_one_clear_line(tmp_path, capsys):
    assert main(["export", "onnx", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "does not exist" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_a_bf16_model_is_exported_in_fp32_and_left_as_it_was(tmp_path):
    model = tiny("gpt2").to(torch.bfloat16).train()
    path = ox.export_onnx(model, tmp_path / "m.onnx")
    assert model.training and model.lm_head.weight.dtype == torch.bfloat16  # the caller's model is untouched
    ref_model = tiny("gpt2")
    ref_model.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    ids = torch.randint(0, ref_model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = ref_model(ids).numpy()
    (got,) = ox.onnx_session(path, threads=1).run(None, {"input_ids": ids.numpy()})
    assert got.dtype == np.float32 and np.abs(got - ref).max() <= 1e-4
