"""Checkpoints of LoRA models: the base weights under plain names (what a plain GPT loads) plus the
adapters; fresh loads wrap the layers, loads into a LoRA model fill them; load_model merges; a damaged
or mismatched adapter file is one clear error; adapters alone load onto their base; a LoRA run
resumes exactly through the training loop."""

import json

import numpy as np
import pytest
import torch
from ckpt_helpers import TEXT
from safetensors import safe_open
from safetensors.torch import load_model as st_load_model

from scratchllm.checkpoint.folder import (
    ADAPTERS_CONFIG,
    ADAPTERS_FILE,
    MODEL_FILE,
    CheckpointError,
    CheckpointMismatch,
    load_weights,
    save_adapters,
    save_checkpoint,
    verify_checkpoint,
)
from scratchllm.checkpoint.load import load_model
from scratchllm.config.lora import LoraConfig
from scratchllm.config.model import ModelConfig
from scratchllm.config.train import TrainConfig
from scratchllm.errors import UserError
from scratchllm.interop.load import load_any
from scratchllm.model import GPT
from scratchllm.model.lora import LoRALinear, add_lora, has_lora, lora_parameters
from scratchllm.tokenizer.char import CharTokenizer

TOK = CharTokenizer.train(TEXT)


def tiny(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig.preset("tiny", **{"vocab_size": TOK.vocab_size, "n_embd": 32, **overrides})).eval()


def lora_model(seed: int = 0, spec: str = "r=4,alpha=8,targets=attn,mlp") -> GPT:
    """A tiny GPT with LoRA layers whose adapters hold nonzero values (a fresh B is zero)."""
    model = tiny(seed)
    add_lora(model, LoraConfig.from_spec(spec))
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


X = torch.randint(0, TOK.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))


def test_a_lora_checkpoint_holds_the_plain_base_weights_and_the_adapters(tmp_path):
    model = lora_model()
    folder = save_checkpoint(tmp_path / "ck", model, state={"step": 1}, tokenizer=TOK)
    state = verify_checkpoint(folder)
    assert {MODEL_FILE, ADAPTERS_FILE, ADAPTERS_CONFIG} <= set(state["files"])  # all in the manifest
    with safe_open(str(folder / MODEL_FILE), framework="pt") as f:
        names = set(f.keys())
    assert not any("lora" in n for n in names)
    plain = tiny(seed=9)
    missing, unexpected = st_load_model(plain, str(folder / MODEL_FILE))  # strict: exactly a plain GPT's tensors
    assert not missing and not unexpected
    torch.testing.assert_close(plain(X), tiny(0)(X), rtol=0, atol=0)  # the base, without the adapters
    config = json.loads((folder / ADAPTERS_CONFIG).read_text())
    assert config == {"r": 4, "alpha": 8.0, "dropout": 0.0,
                      "modules": [f"blocks.{i}.{m}" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc",
                                                                               "mlp.proj")]}
    with safe_open(str(folder / ADAPTERS_FILE), framework="pt") as f:
        assert sorted(f.keys()) == sorted(f"{m}.lora_{x}" for m in config["modules"] for x in "AB")


def test_a_merged_model_saves_its_base_weights_and_stays_merged(tmp_path):
    model = lora_model()
    expected = model(X)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    folder = save_checkpoint(tmp_path / "ck", model)
    assert all(m.merged for m in model.modules() if isinstance(m, LoRALinear))
    plain = tiny(seed=9)
    st_load_model(plain, str(folder / MODEL_FILE))
    torch.testing.assert_close(plain(X), tiny(0)(X), rtol=0, atol=1e-6)
    fresh = tiny(seed=3)
    load_weights(fresh, folder)
    torch.testing.assert_close(fresh(X), expected, rtol=1e-5, atol=1e-5)


def test_round_trip_into_a_fresh_model_and_into_a_lora_model(tmp_path):
    model = lora_model()
    expected = model(X)
    folder = save_checkpoint(tmp_path / "ck", model, state={"step": 1})
    fresh = tiny(seed=5)  # plain: load_weights adds the LoRA layers adapters.json names
    load_weights(fresh, folder)
    assert has_lora(fresh)
    assert all(p.requires_grad for p in fresh.parameters())  # a fresh load freezes nothing
    torch.testing.assert_close(fresh(X), expected, rtol=0, atol=0)
    existing = lora_model(seed=7)  # training's resume: the same layers, other values
    load_weights(existing, folder)
    torch.testing.assert_close(existing(X), expected, rtol=0, atol=0)
    for a, b in zip(lora_parameters(existing), lora_parameters(model), strict=True):
        assert torch.equal(a, b)


def test_load_model_merges_unless_asked_not_to(tmp_path):
    model = lora_model()
    expected = model(X)
    save_checkpoint(tmp_path / "ck", model, state={"step": 3}, tokenizer=TOK)
    merged, tok, meta = load_model(tmp_path / "ck")
    assert not has_lora(merged) and tok is not None
    assert all(type(m) is torch.nn.Linear for m in merged.modules() if isinstance(m, torch.nn.Linear))
    assert meta["lora"]["merged"] is True and meta["lora"]["r"] == 4 and meta["step"] == 3
    torch.testing.assert_close(merged(X), expected, rtol=1e-5, atol=1e-5)
    kept, _, meta = load_model(tmp_path / "ck", merge=False)
    assert has_lora(kept) and meta["lora"]["merged"] is False
    torch.testing.assert_close(kept(X), expected, rtol=0, atol=0)


def test_a_damaged_adapters_file_is_a_clear_checkpoint_error(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", lora_model(), state={"step": 1})
    p = folder / ADAPTERS_FILE
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint file {p} is truncated or corrupted"):
        load_model(folder)  # the manifest names it
    with pytest.raises(CheckpointError, match=f"checkpoint file {p} is corrupted or truncated"):
        load_weights(tiny(), folder)  # without the manifest: the reader itself
    p.unlink()
    with pytest.raises(CheckpointError, match=f"checkpoint file {p} is missing"):
        load_weights(tiny(), folder)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(r=0), "field 'r' is 0, expected a whole number > 0"),
    (lambda d: d.update(alpha="x"), "field 'alpha' is \"x\", expected a number > 0"),
    (lambda d: d.pop("modules"), "field 'modules' is null, expected a list of layer names"),
    (lambda d: d.update(extra=1), "field 'extra' is 1, expected no such field"),
])
def test_an_edited_adapters_json_names_the_field(tmp_path, edit, message):
    folder = save_checkpoint(tmp_path / "ck", lora_model())
    p = folder / ADAPTERS_CONFIG
    d = json.loads(p.read_text())
    edit(d)
    p.write_text(json.dumps(d))
    with pytest.raises(CheckpointError) as e:
        load_weights(tiny(), folder)
    assert f"checkpoint file {p}: {message}" in str(e.value)


def test_adapters_of_another_shape_or_layers_are_a_mismatch(tmp_path):
    folder = save_checkpoint(tmp_path / "ck", lora_model())
    with pytest.raises(CheckpointMismatch, match="r is 4 in the checkpoint .*, 2 in this model"):
        load_weights(lora_model(spec="r=2,alpha=8"), folder)
    with pytest.raises(CheckpointMismatch, match="layer blocks.0.attn.proj has one in the checkpoint only"):
        load_weights(lora_model(spec="r=4,alpha=8,targets=attn.qkv,mlp"), folder)
    with pytest.raises(CheckpointMismatch, match="has no LoRA adapters .* but this model has LoRA layers"):
        load_weights(lora_model(), save_checkpoint(tmp_path / "plain", tiny()))
    # a sound adapters.json over tensors of another rank: the tensor is named
    other = save_checkpoint(tmp_path / "r2", lora_model(spec="r=2,alpha=8"))
    (folder / ADAPTERS_FILE).write_bytes((other / ADAPTERS_FILE).read_bytes())
    with pytest.raises(CheckpointMismatch, match=r"blocks.0.attn.qkv.lora_A has shape \[2, 32\] in .*, \[4, 32\]"):
        load_weights(tiny(), folder)
    swiglu = tiny(mlp="swiglu")
    add_lora(swiglu, "r=4,targets=mlp.gate")
    with pytest.raises(CheckpointMismatch, match=r"do not fit this model: the adapters are for layer "
                                                 r"'blocks.0.mlp.gate', which this model does not have"):
        load_weights(tiny(), save_checkpoint(tmp_path / "swiglu", swiglu))
    wide = tiny(n_embd=64)  # the base itself of another shape
    with pytest.raises(CheckpointMismatch, match="the model shapes differ"):
        load_weights(wide, save_checkpoint(tmp_path / "ck2", lora_model()))


def test_adapters_alone_load_onto_their_base(tmp_path, monkeypatch):
    base = save_checkpoint(tmp_path / "base", tiny(), state={"step": 10}, tokenizer=TOK)
    model = lora_model()
    expected = model(X)
    folder = save_adapters(model, tmp_path / "adapters", str(base))
    assert sorted(p.name for p in folder.iterdir()) == [ADAPTERS_CONFIG, ADAPTERS_FILE, "state.json"]
    assert json.loads((folder / ADAPTERS_CONFIG).read_text())["base"] == str(base)
    loaded, tok, meta = load_any(folder)
    assert not has_lora(loaded) and tok is not None
    torch.testing.assert_close(loaded(X), expected, rtol=1e-5, atol=1e-5)
    assert meta["source"] == str(folder) and meta["lora"]["merged"] is True
    assert meta["lora"]["base"] == str(base) and meta["lora"]["folder"] == str(folder)
    assert meta["format"] == "scratchllm" and meta["step"] == 10  # the base's
    # a base recorded relative to the adapters folder is found from elsewhere too
    rel = save_adapters(model, tmp_path / "rel", "../base")
    (tmp_path / "x" / "y").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "x" / "y")  # ../base is not there: relative to the adapters folder it is
    torch.testing.assert_close(load_any(rel)[0](X), expected, rtol=1e-5, atol=1e-5)
    # an adapters folder is not a checkpoint: load_model says what to do
    with pytest.raises(CheckpointError, match="holds LoRA adapters alone, not a model"):
        load_model(folder)


def test_adapters_alone_errors(tmp_path):
    base = save_checkpoint(tmp_path / "base", tiny(), tokenizer=TOK)
    gone = save_adapters(lora_model(), tmp_path / "gone", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="the base model .*nowhere of the adapters in .* does not exist; "
                                        "give the model they were trained on with --base"):
        load_any(gone)
    wide = save_checkpoint(tmp_path / "wide", tiny(n_embd=64), tokenizer=TOK)
    folder = save_adapters(lora_model(), tmp_path / "a", str(wide))
    with pytest.raises(CheckpointMismatch, match="blocks.0.attn.qkv.lora_A has shape"):
        load_any(folder)
    with pytest.raises(UserError, match="no LoRA adapters to save"):
        save_adapters(tiny(), tmp_path / "b", str(base))
    assert not (tmp_path / "b").exists()


def test_save_adapters_is_atomic(tmp_path, monkeypatch):
    import os

    def fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError):
        save_adapters(lora_model(), tmp_path / "a", "base")
    assert list(tmp_path.iterdir()) == []


# --- a LoRA run resumes exactly through the training loop ------------------------------------------------
def lora_run(run_dir, steps: int, resume: bool = False, stop_at: int | None = None, seed: int = 0):
    """Train a tiny LoRA model (adapters only, dropout on) into `run_dir`; returns (model, final state)."""
    from scratchllm.data.datasets import RandomWindowBatches
    from scratchllm.train import Run, lm_loss, train

    rng = np.random.default_rng(0)
    tokens = ((np.arange(6000) * 7 + rng.integers(0, 3, 6000)) % 61).astype(np.uint16)
    torch.manual_seed(seed)  # a resumed run's own fresh values are overwritten by the checkpoint
    model = GPT(ModelConfig.preset("tiny", vocab_size=64, n_embd=32, dropout=0.1))
    add_lora(model, LoraConfig(r=4, alpha=8, dropout=0.1))
    config = TrainConfig(lr=1e-2, warmup_steps=2, max_steps=steps, batch_size=4, eval_interval=100,
                         checkpoint_interval=3, log_interval=1, keep_last=2, precision="fp32", progress=False,
                         resume=resume, peak_flops=1e9, seed=7)

    def stop(event, state, info):
        if event == "log" and state.step == stop_at:
            state.should_stop = True

    with Run(run_dir, keep_last=2) as run:
        state = train(model, RandomWindowBatches(tokens, 4, 32, seed=3), lm_loss, config, hooks=[stop], run=run)
    return model, state


def losses(run_dir) -> dict[int, float]:
    from scratchllm.train.logging import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r}


def test_a_lora_run_resumes_exactly(tmp_path):
    ref, _ = lora_run(tmp_path / "ref", 10)
    expected = losses(tmp_path / "ref")
    assert len(expected) == 10
    plain = GPT(ModelConfig.preset("tiny", vocab_size=64, n_embd=32, dropout=0.1))
    missing, unexpected = st_load_model(plain, str(tmp_path / "ref/checkpoints/step-0000010" / MODEL_FILE))
    assert not missing and not unexpected  # a plain GPT's tensors, no more
    _, state = lora_run(tmp_path / "cut", 10, stop_at=4)
    assert state.stop_reason == "hook" and state.step == 4
    resumed, state = lora_run(tmp_path / "cut", 10, resume=True, seed=123)
    assert state.step == 10
    assert losses(tmp_path / "cut") == expected  # every step's loss, bit for bit
    for a, b in zip(lora_parameters(resumed), lora_parameters(ref), strict=True):
        assert torch.equal(a, b)
    for (name, a), b in zip(resumed.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    torch.manual_seed(0)
    untrained = GPT(ModelConfig.preset("tiny", vocab_size=64, n_embd=32, dropout=0.1))
    assert torch.equal(resumed.blocks[0].attn.qkv.weight, untrained.blocks[0].attn.qkv.weight)  # frozen
