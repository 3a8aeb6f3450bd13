"""GGUF export checked with the gguf package's reader and with llama.cpp itself (llama-cpp-python).

- Read back: metadata, tensor names (each one llama.cpp's graph for the architecture knows), shapes,
  types and data as written, for each architecture (gpt2, llama, qwen3) and each type.
- llama.cpp runs our f32 export of tiny models of each architecture (GPT-2's shape with and without
  biases; Llama's with grouped-query attention, biases, Llama 3 RoPE scaling and an untied head;
  Qwen3's QK-norm with a head size of its own) and of a GPT-2 124M-shaped model: logits agree with
  ours (1e-3 for the tiny models; 5e-3 for 124M, where llama.cpp's GELU, read from an fp16 table,
  differs from ours by up to about 1e-3 per activation), greedy tokens are the engine's; f16 logits
  within 1e-2 of ours.
- q8_0 and q4_0: a model trained briefly here on the-verdict: llama.cpp's perplexity of the f32 file
  equals ours (0.1%), f16 within 0.5%, q8_0 within 1% and q4_0 within 5% of it.
- Tokenizer: llama.cpp encodes text to our ids (and decodes them back to the text) for GPT-2's
  tokenizer and for byte-level BPEs trained by scratchllm with each pre-tokenisation pattern it maps.
- The main job's recipe (`make demo`) shrunk, trained a few steps by `scratchllm train`, exported by
  `export gguf`: llama.cpp tokenizes as its BPE and gives its logits and greedy tokens.
- The chat template of instruction-tuned runs; the command and its errors.
Needs the export extra (gguf) and llama-cpp-python (installed by `make dev` from its wheel cache).
"""

from __future__ import annotations

import json
import math
import re

import gguf
import jinja2
import numpy as np
import pytest
import torch
from interop_helpers import DATA, TORTURE, hf_model, save, trained_bpe
from llama_cpp import Llama

from scratchllm.checkpoint import save_checkpoint
from scratchllm.cli import main
from scratchllm.compress.blocks import QUANTIZE
from scratchllm.config.model import ModelConfig
from scratchllm.config.sample import SampleConfig
from scratchllm.errors import UserError
from scratchllm.generate import generate
from scratchllm.generate.templates import ALPACA_RESPONSE, chat_prompt, instruction_prompt
from scratchllm.interop import gguf as gx
from scratchllm.interop.load import GENERATION_FILE
from scratchllm.model import GPT
from scratchllm.tokenizer.bpe import BPETokenizer
from scratchllm.tokenizer.bytelevel import str_to_token as token_bytes
from scratchllm.tokenizer.factory import gpt2

VOCAB = 320
LLAMA = dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, qkv_bias=False)
SHAPES = {
    "gpt2": dict(n_layer=2, n_head=2, n_embd=64),
    "gpt2-nobias": dict(n_layer=2, n_head=2, n_embd=64, bias=False, qkv_bias=False),
    "llama": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, **LLAMA, tie_weights=False),
    "llama-bias-llama3": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, **{**LLAMA, "bias": True, "qkv_bias": True},
                              rope_scaling="llama3", rope_original_context=16, rope_base=500000.0),
    "qwen3": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, head_size=32, **LLAMA, qk_norm=True),
}
ARCH = {"gpt2": "gpt2", "gpt2-nobias": "gpt2", "llama": "llama", "llama-bias-llama3": "llama", "qwen3": "qwen3"}
TEXT = (DATA / "the-verdict.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TEXT, VOCAB, special_tokens=["<|endoftext|>", "<|im_end|>"])  # 318, 319


def tiny(name: str, vocab: int = VOCAB, context: int = 64) -> GPT:
    """A random model of shape `name`, its norms and biases moved off 1 and 0 so a swapped tensor shows."""
    torch.manual_seed(sorted(SHAPES).index(name))
    model = GPT(ModelConfig(vocab_size=vocab, context_length=context, **SHAPES[name])).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or n.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def llama_cpp(path, threads: int = 1, **kw) -> Llama:
    return Llama(str(path), n_ctx=kw.pop("n_ctx", 64), n_threads=threads, n_batch=512, logits_all=True,
                 verbose=False, **kw)


def their_logits(llm: Llama, ids: list[int]) -> np.ndarray:
    """llama.cpp's logits (len(ids), vocab) for `ids` from an empty cache."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def our_logits(model: GPT, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


def their_greedy(llm: Llama, prompt: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation: argmax of its logits, one token at a time with its KV cache."""
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return out


def greedy(model: GPT, prompt: list[int], n: int) -> list[int]:
    return generate(model, prompt, SampleConfig(temperature=0.0, max_new_tokens=n), eos_id=None)


# --- read back with the gguf package ------------------------------------------------------------------------
def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


@pytest.mark.parametrize("kind", gx.TYPES)
@pytest.mark.parametrize("name", ["gpt2", "llama-bias-llama3", "qwen3"])
def test_read_back_metadata_names_shapes_types_and_data(name, kind, bpe, tmp_path):
    model = tiny(name)
    c, arch = model.config, ARCH[name]
    path = gx.write_gguf(model, bpe, tmp_path / "m.gguf", kind, {"eos_token_id": 318})
    r = gguf.GGUFReader(path)
    assert field(r, "general.architecture") == arch
    assert field(r, "general.file_type") == {"f32": 0, "f16": 1, "q8_0": 7, "q4_0": 2}[kind]
    expect = {"context_length": 64, "embedding_length": c.n_embd, "block_count": 2, "feed_forward_length": c.hidden_dim,
              "attention.head_count": c.n_head, "attention.head_count_kv": c.kv_heads, "vocab_size": VOCAB}
    if arch != "gpt2":
        expect |= {"rope.dimension_count": c.head_dim, "attention.key_length": c.head_dim,
                   "rope.freq_base": c.rope_base}
    for key, value in expect.items():
        assert field(r, f"{arch}.{key}") == pytest.approx(value), key
    eps = "attention.layer_norm_epsilon" if arch == "gpt2" else "attention.layer_norm_rms_epsilon"
    assert field(r, f"{arch}.{eps}") == pytest.approx(1e-5)
    assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "gpt-2"
    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == VOCAB and tokens[318:] == ["<|endoftext|>", "<|im_end|>"]
    assert tokens[ord("a")] == "a" and tokens[ord(" ")] == "Ġ"  # GPT-2's spelling of bytes
    assert bpe.vocab[300] == token_bytes(tokens[300])
    assert list(field(r, "tokenizer.ggml.token_type")[317:]) == [1, 3, 3]
    assert field(r, "tokenizer.ggml.eos_token_id") == 318 and not field(r, "tokenizer.ggml.add_bos_token")

    ours = gx.gguf_tensors(model, arch)
    got = {t.name: t for t in r.tensors}
    assert list(got) == list(ours)
    legal = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[getattr(gguf.MODEL_ARCH, arch.upper())]}
    for tname, t in ours.items():
        base = tname.rsplit(".", 1)[0]  # "blk.0.attn_q" -> llama.cpp's "blk.{bid}.attn_q"
        assert (re.sub(r"^blk\.\d+\.", "blk.{bid}.", base)) in legal, tname
        want = gx.tensor_type(tname, t, kind)
        assert got[tname].tensor_type.name == want.upper(), tname
        assert list(reversed(got[tname].shape.tolist())) == list(t.shape), tname  # ggml's ne: innermost first
        data = np.asarray(got[tname].data)
        if want in QUANTIZE:
            assert np.array_equal(data, QUANTIZE[want](t).numpy()), tname
        else:
            assert np.array_equal(data.reshape(t.shape), t.numpy().astype(np.float16 if want == "f16" else np.float32))
    if kind != "f32":  # the matrices are stored in the type (tiny's 64-wide rows are 32-aligned)
        assert got["blk.0.ffn_down.weight"].tensor_type.name == kind.upper()
    assert got["output_norm.weight"].tensor_type.name == "F32"
    if name == "gpt2":
        assert got["position_embd.weight"].tensor_type.name == "F32"
    if name == "llama-bias-llama3":
        factors = np.asarray(got["rope_freqs.weight"].data)
        # how much slower each frequency turns: from kept (1) for fast ones to rope_factor (8) for slow ones
        assert factors.shape == (c.head_dim // 2,) and factors[-1] == pytest.approx(8.0)
        assert (np.diff(factors) >= 0).all() and factors.min() >= 1.0


def test_llama_q_and_k_rows_are_interleaved_per_head():
    w = torch.arange(16.0)[:, None].repeat(1, 3)  # 2 heads of 8 rows: rotate-half order
    p = gx.permute_rope_rows(w, 2)
    assert p[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


# --- llama.cpp runs it ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_llama_cpp_gives_our_logits_and_greedy_tokens(name, bpe, tmp_path):
    model = tiny(name)
    path = gx.write_gguf(model, bpe, tmp_path / f"{name}.gguf", "f32")
    llm = llama_cpp(path)
    ids = bpe.encode(TEXT[:400])[:60]  # past llama3's original context of 16: the scaled frequencies count
    assert np.abs(their_logits(llm, ids) - our_logits(model, ids)).max() <= 1e-3
    assert their_greedy(llm, ids[:8], 24) == greedy(model, ids[:8], 24)


@pytest.mark.parametrize("kind", ["gpt2", "llama3", "qwen3"])
def test_a_hugging_face_model_runs_in_llama_cpp_as_in_transformers(kind, tmp_path):
    """A transformers folder (random weights; Llama with Llama 3 RoPE scaling, Qwen3 with its head size), read by
    `export gguf` as any RUN: llama.cpp's logits are transformers' own."""
    from scratchllm.tokenizer.hf import export_hf

    model = hf_model(kind, tied=False)
    folder = save(model, tmp_path / kind)
    tok = trained_bpe()
    export_hf(tok, folder)
    out = tmp_path / f"{kind}.gguf"
    assert main(["export", "gguf", str(folder), "--out", str(out)]) == 0
    ids = tok.encode(TEXT[:400])[:60]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(their_logits(llama_cpp(out), ids) - ref).max() <= 1e-3


@pytest.fixture(scope="module")
def gpt2_124m(tmp_path_factory):
    """GPT-2 124M's shape with random weights and GPT-2's tokenizer, written as f32 and f16."""
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("gpt2-small")).eval()
    tok = gpt2(DATA)
    folder = tmp_path_factory.mktemp("gguf-124m")
    return model, tok, {kind: gx.write_gguf(model, tok, folder / f"{kind}.gguf", kind) for kind in ("f32", "f16")}


def test_gpt2_124m_shape_f32_greedy_tokens_and_f16_logits(gpt2_124m):
    model, tok, files = gpt2_124m
    prompt = tok.encode("Every effort moves you, and the quick brown fox")
    ours = greedy(model, prompt, 16)
    f32 = llama_cpp(files["f32"], threads=2)
    assert their_greedy(f32, prompt, 16) == ours
    ids = prompt + ours
    ref = our_logits(model, ids)
    assert np.abs(their_logits(f32, ids) - ref).max() <= 5e-3
    del f32
    f16 = llama_cpp(files["f16"], threads=2)
    assert np.abs(their_logits(f16, ids) - ref).max() <= 1e-2


# --- q8_0 and q4_0 on a trained model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(bpe):
    """A GPT-2-shaped model trained for 150 steps on the first 90% of the-verdict (its held-out 10% is then
    predictable: the perplexities below mean something), and the held-out ids."""
    from scratchllm.config.train import TrainConfig
    from scratchllm.train.loop import train

    ids = torch.tensor(bpe.encode(TEXT))
    cut = int(len(ids) * 0.9)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=VOCAB, context_length=64, n_layer=2, n_head=2, n_embd=64))
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            starts = torch.randint(0, cut - 65, (16,), generator=g)
            window = torch.stack([ids[s:s + 65] for s in starts.tolist()])  # (16, 65)
            yield window[:, :-1], window[:, 1:]

    config = TrainConfig(max_steps=150, lr=3e-3, warmup_steps=20, batch_size=16, precision="fp32", device="cpu",
                         progress=False, eval_interval=10_000, log_interval=10_000)
    train(model, batches(), lambda m, b: m(b[0], targets=b[1])[1], config)
    return model.eval(), ids[cut:].tolist()


def perplexity(logits_of, ids: list[int], t: int = 64) -> float:
    """exp(mean next-token cross-entropy) over non-overlapping windows of `t` tokens."""
    nll, n = 0.0, 0
    for i in range(0, len(ids) - t, t):
        window = ids[i:i + t + 1]
        logits = torch.from_numpy(np.asarray(logits_of(window[:-1]), dtype=np.float32))
        nll += torch.nn.functional.cross_entropy(logits, torch.tensor(window[1:]), reduction="sum").item()
        n += t
    return math.exp(nll / n)


def test_quantized_types_stay_within_their_perplexity_distance(trained, bpe, tmp_path):
    model, held_out = trained
    ours = perplexity(lambda w: our_logits(model, w), held_out)
    ppl = {}
    for kind in gx.TYPES:
        llm = llama_cpp(gx.write_gguf(model, bpe, tmp_path / f"{kind}.gguf", kind))
        ppl[kind] = perplexity(lambda w, llm=llm: their_logits(llm, w), held_out)
    assert ours < 0.5 * VOCAB  # trained: far better than a uniform guess over the vocabulary
    assert ppl["f32"] == pytest.approx(ours, rel=1e-3)
    assert ppl["f16"] == pytest.approx(ours, rel=5e-3)
    assert abs(ppl["q8_0"] / ppl["f32"] - 1) <= 0.01, ppl
    assert abs(ppl["q4_0"] / ppl["f32"] - 1) <= 0.05, ppl
    assert ppl["q4_0"] != ppl["q8_0"]  # each file holds its own type


# --- the tokenizer ------------------------------------------------------------------------------------------------
def vocab_only(tok, tmp_path, vocab: int | None = None) -> Llama:
    """llama.cpp's tokenizer of a GGUF holding `tok` (the model's weights are not loaded)."""
    model = GPT(ModelConfig(vocab_size=vocab or tok.vocab_size, context_length=16, n_layer=1, n_head=2, n_embd=32))
    return Llama(str(gx.write_gguf(model, tok, tmp_path / "vocab.gguf")), vocab_only=True, verbose=False)


def check_same_ids(llm: Llama, tok, texts) -> None:
    for text in texts:
        ids = tok.encode(text)
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) == ids, text[:40]
        assert llm.detokenize(ids) == text.encode("utf-8")
    with_special = "one<|endoftext|>two <|endoftext|> three"
    assert llm.tokenize(with_special.encode(), add_bos=False, special=True) == tok.encode(with_special, "all")


# (TORTURE without its special tokens and NUL, which ends a C string)
TEXTS = [TEXT[:5000], TORTURE.replace("<|endoftext|>", "").replace("\x00", ""), "  leading and trailing spaces  ",
         "a\n\n\nb\r\n c 1234567"]


def test_llama_cpp_tokenizes_as_gpt2s_tokenizer(tmp_path):
    tok = gpt2(DATA)
    llm = vocab_only(tok, tmp_path)
    check_same_ids(llm, tok, TEXTS + [(DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20000]])
    assert llm.token_eos() == 50256


@pytest.mark.parametrize("pattern", ["gpt2", "gpt4", gx.LLAMA3_PATTERN, gx.QWEN2_PATTERN],
                         ids=["gpt2", "gpt4", "llama3", "qwen2"])
def test_llama_cpp_tokenizes_as_a_bpe_we_trained(pattern, tmp_path):
    tok = BPETokenizer.train(TEXT, 400, pattern=pattern)
    llm = vocab_only(tok, tmp_path, vocab=416)  # a model vocabulary larger than the tokenizer's: padded
    check_same_ids(llm, tok, TEXTS)
    assert llm.metadata["tokenizer.ggml.pre"] == {"gpt2": "gpt-2", "gpt4": "llama-bpe"}.get(
        pattern, "llama-bpe" if pattern == gx.LLAMA3_PATTERN else "qwen2")


def test_tokenizers_llama_cpp_cannot_run_are_refused(bpe):
    from scratchllm.tokenizer.char import CharTokenizer

    model = tiny("gpt2")
    with pytest.raises(UserError, match="byte-level BPE"):
        gx.tokenizer_fields(CharTokenizer.train("abc"), VOCAB)
    with pytest.raises(UserError, match="no llama.cpp equivalent"):
        gx.tokenizer_fields(BPETokenizer.train("abc abd", 260, pattern=r"\w+|\s"), VOCAB)
    with pytest.raises(UserError, match="has no tokenizer"):
        gx.write_gguf(model, None, "never.gguf")
    with pytest.raises(UserError, match="tokenizer has 320 tokens but the model only 300"):
        gx.tokenizer_fields(bpe, 300)


# --- the chat template --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_chat_template_renders_our_prompt_template(template):
    jinja = jinja2.Environment().from_string(gx.chat_template_jinja(template))
    user = [{"role": "user", "content": "Name a colour."}]
    assert jinja.render(messages=user, add_generation_prompt=True) == instruction_prompt(template, "Name a colour.")
    turns = user + [{"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another."}]
    text = jinja.render(messages=turns, add_generation_prompt=True)
    if template == "chat":
        assert text == chat_prompt(turns)
    else:
        assert text.count(ALPACA_RESPONSE) == 2 and text.endswith("Another." + ALPACA_RESPONSE)


def test_an_instruction_tuned_run_carries_its_chat_template(bpe, tmp_path):
    run = save_checkpoint(tmp_path / "run", tiny("gpt2"), tokenizer=bpe, extra_files={
        GENERATION_FILE: lambda p: p.write_text(json.dumps({"prompt_template": "chat", "eos_token_id": 319}))})
    assert main(["export", "gguf", str(run), "--out", str(tmp_path / "chat.gguf")]) == 0
    llm = Llama(str(tmp_path / "chat.gguf"), vocab_only=True, verbose=False)
    assert llm.metadata["tokenizer.chat_template"] == gx.chat_template_jinja("chat")
    assert llm.token_eos() == 319  # <|im_end|>: the run's own end of text
    hf_template = "{{ messages[0]['content'] }}"  # a converted model's own template is kept as it is
    assert gx.chat_template({"chat_template": hf_template, "prompt_template": "chat"}) == hf_template
    assert gx.chat_template({}) is None


# --- the command -----------------------------------------------------------------------------------------------
def test_export_gguf_command_writes_a_file_llama_cpp_runs(bpe, tmp_path, capsys):
    model = tiny("llama")
    run = save_checkpoint(tmp_path / "run", model, tokenizer=bpe)
    out = tmp_path / "out" / "m.gguf"
    assert main(["export", "gguf", str(run), "--out", str(out), "--type", "q8_0"]) == 0
    assert f"wrote {out} (q8_0" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf"]  # no temp file left
    assert gguf.GGUFReader(out).fields["general.name"].contents() == "run"
    ids = bpe.encode(TEXT[:300])[:40]
    assert np.abs(their_logits(llama_cpp(out), ids) - our_logits(model, ids)).max() < 0.1


# The main job's recipe (`make demo`), shrunk: its own [model] table (RoPE, RMSNorm, SwiGLU, no biases, tied
# head: Llama's block) with smaller sizes, its tokenizer kind (a byte-level BPE trained on the data), its
# optimizer (Muon), trained for a few steps by `scratchllm train` on a small local text.
DEMO = """preset = "shakespeare-bpe"
name = "demo"
[data]
dataset = "{data}"
tokenizer = {{ vocab_size = {vocab} }}
[model]
n_layer = 2
n_embd = 64
context_length = 64
vocab_size = {vocab}
[train]
max_steps = 60
warmup_steps = 10
batch_size = 8
eval_interval = 30
eval_batches = 2
peak_flops = 1e9
[sample]
max_new_tokens = 8
"""


def test_the_demo_recipe_trains_then_runs_in_llama_cpp_as_in_scratchllm(tmp_path, capsys):
    """What a user of `make demo` does next: export the run to GGUF and run it in llama.cpp."""
    from scratchllm.checkpoint import latest_run, load_model
    from scratchllm.config.train import RunConfig
    from scratchllm.train.logging import read_metrics

    recipe = tmp_path / "demo.toml"
    recipe.write_text(DEMO.format(data=DATA / "the-verdict.txt", vocab=VOCAB))
    shipped, shrunk = RunConfig.load(preset="shakespeare-bpe"), RunConfig.load(recipe)
    sizes = ("n_layer", "n_embd", "context_length", "vocab_size")
    assert {k: v for k, v in vars(shrunk.model).items() if k not in sizes} == \
        {k: v for k, v in vars(shipped.model).items() if k not in sizes}  # the recipe's architecture
    assert shrunk.data.tokenizer.kind == "bpe" and shrunk.train.optimizer == "muon"
    assert gx.gguf_arch(shipped.model) == "llama"

    runs = tmp_path / "runs"
    assert main(["train", "--config", str(recipe), "--runs_dir", str(runs), "--quiet"]) == 0
    run = latest_run(runs)
    out = tmp_path / "demo.gguf"
    assert main(["export", "gguf", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    model, tok, meta = load_model(run)
    assert meta["step"] == 60 and model.config.mlp == "swiglu" and model.config.tie_weights
    evals = [r["val_loss"] for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]
    assert evals[-1] < evals[0] - 1.0  # trained: its greedy tokens are not noise
    llm = llama_cpp(out)
    assert llm.metadata["general.architecture"] == "llama"
    text = shrunk.prompt + TEXT[:200]
    ids = tok.encode(text)[:48]
    assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)[:48] == ids  # its tokenizer is ours
    assert np.abs(their_logits(llm, ids) - our_logits(model, ids)).max() <= 1e-3
    prompt = ids[:8]
    ours = greedy(model, prompt, 40)
    assert their_greedy(llm, prompt, 40) == ours


def test_export_gguf_help_says_how_to_run_the_file(capsys):
    with pytest.raises(SystemExit):
        main(["export", "gguf", "--help"])
    out = capsys.readouterr().out
    assert "llama-cli -m model.gguf" in out and "Modelfile" in out and "ollama create" in out
    assert "f32|f16|q8_0|q4_0" in out and "|".join(gx.TYPES) in out


@pytest.mark.parametrize("case,message", [
    ("type", "unknown --type 'q5_1'; choose one of f32, f16, q8_0, q4_0"),
    ("architecture", "llama.cpp has no architecture for this model (position=rope, norm=layernorm"),
    ("demo", "(position=rope, norm=rmsnorm, mlp=gelu, qk_norm=False); GGUF export takes GPT-2-style models "
             "(learned, layernorm, gelu), Llama-style (rope, rmsnorm, swiglu) and Qwen3-style (the same with "
             "qk_norm); a model trained with model.mlp=swiglu (Llama's MLP) exports as a Llama"),
    ("classifier", "is a classifier"),
    ("quantized", "is a quantized model, which export does not write"),
    ("char", "takes byte-level BPE tokenizers"),
])
def test_bad_input_is_one_error_line_and_nothing_written(case, message, bpe, tmp_path, capsys):
    from scratchllm.compress.quantize import QuantScheme, quantize_model
    from scratchllm.tokenizer.char import CharTokenizer

    torch.manual_seed(0)
    config = dict(vocab_size=VOCAB, context_length=16, n_layer=1, n_head=2, n_embd=32)
    tok = bpe
    if case == "architecture":
        model = GPT(ModelConfig(**config, position="rope"))
    elif case == "demo":  # RoPE, RMSNorm and a GELU MLP (the demo recipe's block before it took SwiGLU)
        model = GPT(ModelConfig(**config, position="rope", norm="rmsnorm", bias=False, qkv_bias=False))
    elif case == "classifier":
        model = GPT(ModelConfig(**config, n_classes=2, tie_weights=False))
    elif case == "char":
        tok = CharTokenizer.train("abc")
        model = GPT(ModelConfig(**{**config, "vocab_size": tok.vocab_size}))
    else:
        model = GPT(ModelConfig(**config))
        if case == "quantized":
            quantize_model(model, QuantScheme(8))
    run = save_checkpoint(tmp_path / "run", model, tokenizer=tok)
    out = tmp_path / "m.gguf"
    argv = ["export", "gguf", str(run), "--out", str(out)] + (["--type", "q5_1"] if case == "type" else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], captured.err
    assert "Traceback" not in captured.err and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
