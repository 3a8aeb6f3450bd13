"""compress.quantize: rounding error bounded per channel/group, int4 packing exact, a quantized GPT that
saves, loads and generates the same tokens, the command and its checkpoint."""

import json

import pytest
import torch

from scratchllm.checkpoint import CheckpointError, load_model, save_checkpoint
from scratchllm.cli import main
from scratchllm.compress.quantize import (
    QuantScheme,
    dequantize,
    pack_int4,
    quantize_int4,
    quantize_int8,
    quantize_model,
    unpack_int4,
)
from scratchllm.config.model import ModelConfig
from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate import generate
from scratchllm.model import GPT
from scratchllm.model.quant_linear import QuantEmbedding, QuantLinear
from scratchllm.tokenizer.char import CharTokenizer

TEXT = "to be or not to be, that is the question\n"


def weights(out=24, n_in=64, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n_in, generator=g) * torch.rand(out, 1, generator=g)  # rows of different ranges
    w[3] = 0.0  # an all-zero row (scale 1, integers 0)
    w[5, :16] = 0.0  # an all-zero group
    w[7] = w[7].abs()  # a row of positive weights only (asymmetric: its range still includes 0)
    return w


def test_int8_error_is_at_most_half_a_step_per_channel():
    w = weights()
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8 and scales.shape == (24, 1) and q.abs().max() <= 127
    err = (dequantize(q, scales) - w).abs()
    assert (err <= scales / 2 * (1 + 1e-6)).all()
    assert torch.equal(scales[:, 0], torch.where(w.abs().amax(1) > 0, w.abs().amax(1) / 127, torch.ones(24)))
    assert (q[3] == 0).all()


@pytest.mark.parametrize("group", [2, 16, 32, 64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_error_is_at_most_half_a_step_per_group(group, symmetric):
    w = weights()
    packed, scales, zeros = quantize_int4(w, group, symmetric)
    assert packed.shape == (24, 32) and packed.dtype == torch.uint8 and scales.shape == (24, 64 // group)
    assert (zeros is None) == symmetric
    err = (dequantize(packed, scales, zeros, bits=4) - w).abs().view(24, 64 // group, group)
    assert (err <= scales[..., None] / 2 * (1 + 1e-6) + 1e-12).all()
    u = unpack_int4(packed)
    if symmetric:  # -7..7 around z = 8
        assert u.min() >= 1 and u.max() <= 15
    else:
        assert zeros.max() <= 15


def test_int4_pack_unpack_is_exact_for_every_pair_of_values():
    a, b = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    u = torch.stack((a.flatten(), b.flatten()), dim=-1).reshape(4, 128)  # every (even, odd) pair, 0..15
    packed = pack_int4(u)
    assert packed.shape == (4, 64) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed), u.to(torch.uint8))
    assert torch.equal(packed[0, :2], torch.tensor([0x00, 0x10], dtype=torch.uint8))  # even low, odd high
    signed = torch.arange(-8, 8).repeat(8).reshape(4, 32)  # every symmetric value -8..7, stored as q + 8
    assert torch.equal(unpack_int4(pack_int4(signed + 8)).long() - 8, signed)


def tiny(tie=True, n_embd=64, seed=0) -> tuple[GPT, CharTokenizer]:
    torch.manual_seed(seed)
    tok = CharTokenizer.train(TEXT)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=n_embd, context_length=32,
                      tie_weights=tie)
    return GPT(cfg).eval(), tok


@pytest.mark.parametrize("scheme", [QuantScheme(8), QuantScheme(4, 32), QuantScheme(4, 16, symmetric=False)])
@pytest.mark.parametrize("tie", [True, False])
def test_a_quantized_gpt_saves_loads_and_generates_the_same_tokens(tmp_path, scheme, tie):
    model, tok = tiny(tie)
    ids = tok.encode("to be")
    with torch.no_grad():
        ref = model(torch.tensor([ids]))
    config = quantize_model(model, scheme)
    assert config["embedding"] == ("tied" if tie else "own") and "lm_head" in config["modules"]
    assert isinstance(model.lm_head, QuantLinear) and isinstance(model.tok_emb, QuantEmbedding)
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    with torch.no_grad():
        got = model(torch.tensor([ids]))
    assert 0 < (got - ref).abs().max() < 0.5  # rounded, and close
    greedy = SampleConfig(temperature=0.0, max_new_tokens=12)
    before = generate(model, ids, greedy)
    save_checkpoint(tmp_path / "q", model, tokenizer=tok)
    saved = json.loads((tmp_path / "q" / "quantization.json").read_text())
    assert saved == config == json.loads((tmp_path / "q" / "state.json").read_text())["quantization"]
    loaded, tok2, meta = load_model(tmp_path / "q")
    assert meta["quantization"] == config and tok2.encode("to be") == ids
    assert generate(loaded, ids, greedy) == before
    with torch.no_grad():
        assert torch.equal(loaded(torch.tensor([ids])), got)
    # a tied model keeps the table once: the head's
    names = set(loaded.state_dict())
    assert ("tok_emb.table.qweight" in names) != tie and "lm_head.qweight" in names


def test_the_tied_embedding_reads_the_heads_rows():
    model, _ = tiny(True)
    quantize_model(model, QuantScheme(4, 32))
    idx = torch.tensor([[0, 3, 5], [2, 2, 1]])
    assert torch.equal(model.tok_emb(idx), model.lm_head.dequantize()[idx])
    assert model.tok_emb.weight.shape == (model.config.vocab_size, 64)


def test_a_group_size_that_does_not_divide_a_layer_is_an_error_and_changes_nothing():
    model, _ = tiny(True, n_embd=48)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=r"--group-size 32 does not divide blocks\.0\.attn\.qkv's 48 inputs"):
        quantize_model(model, QuantScheme(4, 32))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    quantize_model(model, QuantScheme(8))
    with pytest.raises(UserError, match="quantized already"):
        quantize_model(model, QuantScheme(8))


@pytest.mark.parametrize("bits, group, symmetric, message", [
    (3, None, True, "--bits 3 is not supported"), (8, 32, True, "--group-size is for --bits 4"),
    (8, None, False, "--asymmetric is for --bits 4"), (4, 0, True, "--group-size must be an even number"),
    (4, 15, True, "--group-size must be an even number")])
def test_unsupported_schemes_are_one_clear_error(bits, group, symmetric, message):
    with pytest.raises(UserError, match=message):
        QuantScheme(bits, group, symmetric)


def test_an_edited_quantization_json_is_a_checkpoint_error(tmp_path):
    model, _ = tiny()
    quantize_model(model, QuantScheme(8))
    folder = save_checkpoint(tmp_path / "q", model)
    p = folder / "quantization.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), "bits": 3}))
    state = json.loads((folder / "state.json").read_text())
    with pytest.raises(CheckpointError, match="quantization.json is truncated or corrupted"):  # the manifest sees it
        load_model(folder)
    state["files"].pop("quantization.json")
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="field 'bits' is 3, expected 8 or 4"):
        load_model(folder)


def test_the_command_writes_a_checkpoint_that_generate_reads_and_export_refuses(tmp_path, capsys):
    model, tok = tiny()
    src = save_checkpoint(tmp_path / "ck", model, tokenizer=tok)
    assert main(["quantize", str(src), "--bits", "4", "--group-size", "16", "--asymmetric",
                 "--out", str(tmp_path / "q")]) == 0
    assert "int4-g16-asym" in capsys.readouterr().out
    files = {p.name for p in (tmp_path / "q").iterdir()}
    assert {"model.safetensors", "quantization.json", "tokenizer.scratchllm.json", "generation.json",
            "MODEL_CARD.md", "state.json", "config.json"} <= files
    assert "int4, asymmetric" in (tmp_path / "q" / "MODEL_CARD.md").read_text()
    assert main(["generate", "-m", str(tmp_path / "q"), "to", "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert main(["export", "hf", str(tmp_path / "q"), "--out", str(tmp_path / "hf")]) == 2
    assert "is a quantized model" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    # a quantized model is smaller on disk: int4 with a group of 16 is under a third of fp32's bytes
    assert (tmp_path / "q" / "model.safetensors").stat().st_size < (src / "model.safetensors").stat().st_size / 3
