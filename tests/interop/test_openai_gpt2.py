"""OpenAI's GPT-2 release folder -> scratchllm, against the fixture TensorFlow wrote (tests/fixtures/
openai-gpt2-tiny): logits of a numpy transcription of OpenAI's model.py and of transformers' GPT-2, the
ids of OpenAI's encoder algorithm, the round trip to Hugging Face names, and each bad folder's one error."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from scratchllm.errors import UserError
from scratchllm.interop.openai import checkpoint_prefix, is_openai_gpt2, read_openai_gpt2
from scratchllm.interop.tf_bundle import read_bundle
from scratchllm.model import GPT
from scratchllm.model.weights import from_openai_gpt2, hf_gpt2_config, to_hf_gpt2

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openai-gpt2-tiny"
EXPECTED = json.loads((FIXTURE / "expected_logits.json").read_text(encoding="utf-8"))


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "gpt2")
    return tmp_path / "gpt2"


def _edit_hparams(folder: Path, **changes) -> None:
    path = folder / "hparams.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _logits(config, state_dict, ids) -> torch.Tensor:
    model = GPT(config)
    model.load_state_dict(state_dict)
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return (out[0] if isinstance(out, tuple) else out)[0]


def test_config_and_tokenizer_from_the_folder():
    config, _, tok = read_openai_gpt2(FIXTURE)
    hp = json.loads((FIXTURE / "hparams.json").read_text())
    assert (config.vocab_size, config.context_length, config.n_embd, config.n_head, config.n_layer) == (
        hp["n_vocab"], hp["n_ctx"], hp["n_embd"], hp["n_head"], hp["n_layer"])
    assert config.tie_weights and config.mlp == "gelu" and config.norm_eps == 1e-5
    assert tok.vocab_size == hp["n_vocab"] and tok.eot_id == hp["n_vocab"] - 1
    assert tok.encode(EXPECTED["text"]) == EXPECTED["ids"]  # OpenAI's encoder.py algorithm, in the script
    assert tok.decode(EXPECTED["ids"]) == EXPECTED["text"]


def test_logits_match_openai_model_py():
    config, sd, _ = read_openai_gpt2(FIXTURE)
    logits = _logits(config, sd, EXPECTED["ids"])
    want = torch.tensor(EXPECTED["logits"])
    assert logits.shape == want.shape == (len(EXPECTED["ids"]), config.vocab_size)
    assert (logits - want).abs().max().item() <= 1e-4
    assert want.std().item() > 0.1  # the reference is not flat: the check has teeth


def test_transformers_gpt2_agrees():
    from transformers import GPT2Config, GPT2LMHeadModel

    config, sd, _ = read_openai_gpt2(FIXTURE)
    hf = GPT2LMHeadModel(GPT2Config(**hf_gpt2_config(config)))
    missing, unexpected = hf.load_state_dict(to_hf_gpt2(sd), strict=False)
    assert not unexpected and all(k.endswith("attn.bias") or k.endswith("masked_bias") for k in missing)
    hf.eval()
    with torch.no_grad():
        logits = hf(torch.tensor([EXPECTED["ids"]])).logits[0]
    assert (logits - torch.tensor(EXPECTED["logits"])).abs().max().item() <= 1e-4


def test_round_trip_to_hugging_face_gives_the_tensorflow_tensors():
    raw = read_bundle(FIXTURE / "model.ckpt")
    _, sd, _ = read_openai_gpt2(FIXTURE)
    hf = to_hf_gpt2(sd)
    top = {"model/wte": "transformer.wte.weight", "model/wpe": "transformer.wpe.weight",
           "model/ln_f/g": "transformer.ln_f.weight", "model/ln_f/b": "transformer.ln_f.bias"}
    seen = set()
    for name, value in raw.items():
        if name in top:
            hf_name = top[name]
        else:
            _, h, *rest = name.split("/")  # model/h0/attn/c_attn/w -> transformer.h.0.attn.c_attn.weight
            last = {"w": "weight", "b": "bias", "g": "weight"}[rest[-1]]
            hf_name = f"transformer.h.{h[1:]}.{'.'.join(rest[:-1])}.{last}"
        want = torch.from_numpy(value)
        want = want[0] if name.endswith("/w") else want  # Conv1D [1, in, out] -> HF's (in, out), no transpose
        assert torch.equal(hf[hf_name], want), name
        seen.add(hf_name)
    assert set(hf) == seen | {"lm_head.weight"}
    assert torch.equal(hf["lm_head.weight"], torch.from_numpy(raw["model/wte"]))  # tied


def test_is_openai_gpt2(copy, tmp_path):
    assert is_openai_gpt2(FIXTURE)
    assert not is_openai_gpt2(tmp_path)
    (copy / "hparams.json").unlink()
    assert not is_openai_gpt2(copy)


def test_checkpoint_file_names_the_prefix(copy):
    assert checkpoint_prefix(copy) == copy / "model.ckpt"
    # written on another machine: an absolute path that is not here -> the same name in this folder
    (copy / "checkpoint").write_text('model_checkpoint_path: "/home/openai/models/124M/model.ckpt"\n')
    assert checkpoint_prefix(copy) == copy / "model.ckpt"
    (copy / "checkpoint").unlink()  # no checkpoint file: OpenAI's name
    assert checkpoint_prefix(copy) == copy / "model.ckpt"
    assert read_openai_gpt2(copy)[0].n_layer == 2
    for f in copy.glob("model.ckpt.*"):
        f.rename(copy / f.name.replace("model.ckpt", "other.ckpt"))
    (copy / "checkpoint").write_text('model_checkpoint_path: "other.ckpt"\nall_model_checkpoint_paths: "other.ckpt"\n')
    assert checkpoint_prefix(copy) == copy / "other.ckpt"
    assert read_openai_gpt2(copy)[0].n_layer == 2
    (copy / "checkpoint").write_text("garbage\n")
    with pytest.raises(UserError, match="checkpoint names no model_checkpoint_path"):
        read_openai_gpt2(copy)


def test_missing_tensor_names_it(copy):
    _edit_hparams(copy, n_layer=3)
    with pytest.raises(UserError, match=r"model.ckpt.index has no tensor 'model/h2/ln_1/g' \(and 11 more\); "
                                        r"hparams.json says n_layer=3"):
        read_openai_gpt2(copy)


def test_extra_tensor_names_it(copy):
    _edit_hparams(copy, n_layer=1)
    with pytest.raises(UserError, match=r"model.ckpt.index has tensor 'model/h1/attn/c_attn/b' \(and 11 more\) "
                                        r"that a GPT-2 of these hparams does not"):
        read_openai_gpt2(copy)


def test_wrong_shape_names_the_tensor(copy):
    _edit_hparams(copy, n_vocab=500)
    with pytest.raises(UserError, match=r"tensor 'model/wte' has shape \[457, 32\], expected \[500, 32\]"):
        read_openai_gpt2(copy)


def test_vocabulary_that_does_not_match_the_tokenizer(copy):
    enc = json.loads((copy / "encoder.json").read_text(encoding="utf-8"))
    del enc["<|endoftext|>"]
    (copy / "encoder.json").write_text(json.dumps(enc), encoding="utf-8")
    with pytest.raises(UserError, match=r"encoder.json has 456 tokens but hparams.json says n_vocab=457"):
        read_openai_gpt2(copy)


def test_truncated_data_file(copy):
    data = copy / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"model.ckpt.data-00000-of-00001 is truncated: tensor '[^']+' needs"):
        read_openai_gpt2(copy)


def test_bad_hparams(copy, tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        read_openai_gpt2(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"hparams.json not found"):
        read_openai_gpt2(tmp_path)
    _edit_hparams(copy, n_head=None)
    with pytest.raises(UserError, match=r"hparams.json: OpenAI GPT-2 hparams need integer n_head"):
        read_openai_gpt2(copy)
    _edit_hparams(copy, n_head=5)
    with pytest.raises(UserError, match=r"hparams.json: model.n_embd \(32\) must be divisible by model.n_head"):
        read_openai_gpt2(copy)
    (copy / "hparams.json").write_text('{"n_vocab": 457,')
    with pytest.raises(UserError, match=r"hparams.json is not valid JSON"):
        read_openai_gpt2(copy)


def test_the_name_map_refuses_strangers():
    with pytest.raises(UserError, match=r"OpenAI GPT-2 tensor 'model/h0/attn/q/w' has no place"):
        from_openai_gpt2({"model/h0/attn/q/w": torch.zeros(1, 2, 2)})
    with pytest.raises(UserError, match=r"'model/h0/mlp/c_fc/w' has shape \[2, 8\]; a Conv1D kernel"):
        from_openai_gpt2({"model/h0/mlp/c_fc/w": torch.zeros(2, 8)})
