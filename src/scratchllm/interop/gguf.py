"""GGUF files: our GPT written for llama.cpp, and so for Ollama, LM Studio and llama-cpp-python.

A GGUF file (llama.cpp's format) is one file: a header of typed key/value metadata (the
architecture and its sizes, the tokenizer, the chat template) and then the tensors, each with its
name, shape and type. It is written here with the `gguf` package (llama.cpp's own Python writer,
the one its convert_hf_to_gguf.py uses), in llama.cpp's architecture and tensor names:

    our model                                              llama.cpp architecture
    learned positions, LayerNorm, GELU (GPT-2)             gpt2   fused attn_qkv; missing biases written as zeros
    RoPE, RMSNorm, SwiGLU (Llama, SmolLM2, Llama 3.x)      llama  q/k/v apart, q and k rows permuted (below)
    the same with QK-norm (Qwen3)                          qwen3  q/k/v apart, attn_q_norm/attn_k_norm

Other mixes (RoPE with LayerNorm, ...) have no llama.cpp graph and are refused, as are classifiers.
The gpt2 graph computes GELU's tanh form: a model trained with exact GELU (mlp = "gelu_exact") is
written with a warning (the two differ by less than 0.001 per activation). The names are llama.cpp's
(BLOCK_NAMES, TOP_NAMES): `model.weights` translates other codebases' checkpoints, this module llama.cpp's.
RoPE layouts: our RoPE (as Hugging Face's) rotates the two halves of each head; llama.cpp's `llama`
graph rotates adjacent pairs, so its q and k rows are interleaved per head (row 2i is our row i,
row 2i+1 our row i + head_dim/2; convert_hf_to_gguf's `permute`). Its `qwen3` graph rotates halves as
we do. Llama 3.x's RoPE scaling goes in `rope_freqs.weight`: per frequency, how much slower it turns.

Types (`--type`): f32; f16 (2-D weights in fp16); q8_0 and q4_0 (2-D weights in llama.cpp's blocks of
32 with an fp16 scale, computed by `compress.blocks`). Norms, biases, RoPE factors and GPT-2's
position table stay f32 in every type (llama.cpp's own converter keeps them so); a matrix whose rows
are not a multiple of 32 long gets f16 in q8_0/q4_0 files (as llama.cpp's converter does).

The tokenizer: byte-level BPE only (GPT-2's, or one trained by scratchllm), written as llama.cpp's
"gpt2" tokenizer model: tokens in GPT-2's byte-to-unicode spelling, the merges (`tokenizer.hf.hf_merges`,
every split of each token ranked as the token, so ranking pairs gives our ids), token types (normal,
control for special tokens, unused for padding rows of a vocabulary larger than the tokenizer) and the
pre-tokenizer llama.cpp applies before merging: "gpt-2" for GPT-2's pattern, "llama-bpe" for GPT-4's
(cl100k) and Llama 3's, "qwen2" for Qwen2/3's; other patterns are refused, since llama.cpp would cut
text differently. No BOS is added.
End-of-text: the run's eos id, else the tokenizer's <|endoftext|>. The chat template: the run's own
(a converted instruction-tuned model's Jinja template), or for a run finetuned by scratchllm, its
prompt template as Jinja (`chat_template_jinja`).

Not here: the q8_0/q4_0 numbers (`compress.blocks`), reading GGUF (the `gguf` package's GGUFReader
does; tests use it), running it (llama.cpp). The `gguf` package is optional (`pip install
'scratchllm[export]'`); this module imports it only when writing.
References: ggml docs/gguf.md (the format); llama.cpp's convert_hf_to_gguf.py (names, the q/k
permutation, what stays f32) and src/models/{gpt2,llama,qwen3}.cpp (the tensors each graph reads).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from scratchllm.compress.blocks import QK, QUANTIZE
from scratchllm.errors import UserError

TYPES = ("f32", "f16", "q8_0", "q4_0")
INSTALL_HINT = "pip install 'scratchllm[export]'"

# Our block parameter (inside `blocks.{i}.`) -> llama.cpp's tensor (inside `blk.{i}.`); q/k/v of the
# llama and qwen3 graphs are split out of our fused `attn.qkv` (see `block_tensors`).
BLOCK_NAMES = {
    "norm1": "attn_norm",
    "attn.qkv": "attn_qkv",
    "attn.proj": "attn_output",
    "attn.q_norm": "attn_q_norm",
    "attn.k_norm": "attn_k_norm",
    "norm2": "ffn_norm",
    "mlp.fc": "ffn_up",
    "mlp.gate": "ffn_gate",
    "mlp.proj": "ffn_down",
}
# Our top-level modules -> llama.cpp's tensors (`output` only when the head is not tied: llama.cpp then
# reads token_embd as the head, as we do).
TOP_NAMES = {"tok_emb": "token_embd", "pos_emb": "position_embd", "norm_f": "output_norm", "lm_head": "output"}
# The pre-tokenisation regexes of Llama 3's and Qwen2/3's tokenizer.json (read by tokenizer.hf): llama.cpp
# knows them as the pre-tokenizers "llama-bpe" and "qwen2" (src/llama-vocab.cpp); ours (patterns.PATTERNS) as
# "gpt-2" and "llama-bpe" (GPT-4's cl100k pattern, which Llama 3 took over).
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}", 1)
# llama.cpp's token types (gguf.TokenType): NORMAL, CONTROL (special tokens), UNUSED (padding rows).
NORMAL, CONTROL, UNUSED = 1, 3, 5


def require_gguf():
    """The `gguf` module, or one clear error saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise UserError(f"GGUF export needs the gguf package (llama.cpp's writer), which is not installed: "
                        f"{INSTALL_HINT}") from None
    return gguf


# --- which llama.cpp graph --------------------------------------------------------------------------------
def gguf_arch(config) -> str:
    """llama.cpp's architecture for a ModelConfig ("gpt2", "llama" or "qwen3"), or a UserError saying what
    does not map."""
    if config.n_classes is not None:
        raise UserError("this model is a classifier (model.n_classes is set); llama.cpp runs language models only")
    gpt2 = config.position == "learned" and config.norm == "layernorm" and config.mlp in ("gelu", "gelu_exact")
    llama = config.position == "rope" and config.norm == "rmsnorm" and config.mlp == "swiglu"
    if gpt2 and not config.qk_norm:
        if config.attn_dim != config.n_embd:
            raise UserError(f"llama.cpp's gpt2 graph needs n_head * head_size = n_embd; this model has "
                            f"{config.n_head} x {config.head_dim} heads on {config.n_embd} dims")
        return "gpt2"
    if llama:
        if not config.qk_norm:
            return "llama"
        if config.bias or config.qkv_bias or config.attn_out_bias:
            raise UserError("llama.cpp's qwen3 graph has no biases; this QK-norm model has some (model.bias, "
                            "model.qkv_bias or model.attn_proj_bias)")
        if config.rope_scaling != "none":
            raise UserError(f"llama.cpp's qwen3 graph does not take rope_scaling={config.rope_scaling}")
        return "qwen3"
    parts = f"position={config.position}, norm={config.norm}, mlp={config.mlp}, qk_norm={config.qk_norm}"
    hint = ""
    if config.position == "rope" and config.norm == "rmsnorm":  # a GELU MLP (e.g. older demo runs)
        hint = "; a model trained with model.mlp=swiglu (Llama's MLP) exports as a Llama"
    raise UserError(f"llama.cpp has no architecture for this model ({parts}); GGUF export takes GPT-2-style "
                    f"models (learned, layernorm, gelu), Llama-style (rope, rmsnorm, swiglu) and Qwen3-style "
                    f"(the same with qk_norm){hint}")


# --- tensors ------------------------------------------------------------------------------------------------
def permute_rope_rows(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """q or k rows (n_head * head_dim, ...) from rotate-half order (ours, HF's) to llama.cpp's
    adjacent-pair order: within each head, row 2i is row i and row 2i+1 is row i + head_dim/2.

    >>> permute_rope_rows(torch.arange(8), n_head=2).tolist()  # heads [0 1 2 3] and [4 5 6 7]
    [0, 2, 1, 3, 4, 6, 5, 7]
    """
    shape = w.shape
    return w.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).transpose(1, 2).reshape(shape)


def _params(module: torch.nn.Module, prefix: str, zeros: bool) -> dict[str, torch.Tensor]:
    """{"{prefix}.weight", "{prefix}.bias"} of a layer; a missing bias is zeros when `zeros` (llama.cpp's
    gpt2 graph requires every bias) and left out otherwise."""
    out = {f"{prefix}.weight": module.weight}
    if getattr(module, "bias", None) is not None:
        out[f"{prefix}.bias"] = module.bias
    elif zeros:
        out[f"{prefix}.bias"] = torch.zeros(module.weight.shape[0])
    return out


def _module(parent: torch.nn.Module, name: str) -> torch.nn.Module | None:
    """The submodule `name` ("attn.q_norm"), or None where the model has none (no QK-norm, no gate)."""
    m = parent
    for part in name.split("."):
        m = getattr(m, part, None)
    return m if isinstance(m, torch.nn.Module) else None


def block_tensors(block: torch.nn.Module, i: int, arch: str, config) -> dict[str, torch.Tensor]:
    """One block's tensors in llama.cpp's names (`blk.{i}.…`): gpt2 keeps our fused qkv; llama and qwen3
    get q, k and v apart, llama's q and k rows permuted to its adjacent-pair RoPE."""
    out: dict[str, torch.Tensor] = {}
    for ours, theirs in BLOCK_NAMES.items():
        module = _module(block, ours)
        if module is None or (ours == "attn.qkv" and arch != "gpt2"):
            continue
        out.update(_params(module, f"blk.{i}.{theirs}", zeros=arch == "gpt2"))
    if arch == "gpt2":
        return out
    qkv, sizes = block.attn.qkv, block.attn.qkv_sizes()
    heads = {"attn_q": config.n_head, "attn_k": config.kv_heads}
    for suffix, t in (("weight", qkv.weight), ("bias", qkv.bias)):
        if t is None:
            continue
        for name, part in zip(("attn_q", "attn_k", "attn_v"), t.split(sizes)):
            if arch == "llama" and name in heads:
                part = permute_rope_rows(part, heads[name])
            out[f"blk.{i}.{name}.{suffix}"] = part
    return out


def rope_freq_factors(config) -> torch.Tensor:
    """Llama 3.x's RoPE scaling as llama.cpp reads it (`rope_freqs.weight`, head_dim/2): per frequency,
    the original over the scaled one (1 where kept, rope_factor where fully scaled)."""
    from scratchllm.model import functional as ops

    inv_freq = ops.rope_frequencies(config.head_dim, config.rope_base)
    scaled = ops.llama3_rope_frequencies(inv_freq, config.rope_factor, config.rope_low_freq_factor,
                                         config.rope_high_freq_factor, config.rope_original_context)
    return inv_freq / scaled


def gguf_tensors(model: torch.nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """Every tensor of the file, in llama.cpp's names and our (out, in) layout (which is ggml's
    ne = [in, out]), fp32, in the order written."""
    config = model.config
    out: dict[str, torch.Tensor] = {"token_embd.weight": model.tok_emb.weight}
    if arch == "gpt2":
        out["position_embd.weight"] = model.pos_emb.weight
    out.update(_params(model.norm_f, "output_norm", zeros=arch == "gpt2"))
    if not config.tie_weights:
        out["output.weight"] = model.lm_head.weight
    if arch == "llama" and config.rope_scaling == "llama3":
        out["rope_freqs.weight"] = rope_freq_factors(config)
    for i, block in enumerate(model.blocks):
        out.update(block_tensors(block, i, arch, config))
    return {k: v.detach().to(torch.float32).contiguous() for k, v in out.items()}


def tensor_type(name: str, t: torch.Tensor, kind: str) -> str:
    """The type a tensor is stored in: f32 for 1-D tensors and the position table, else `kind`, with f16
    for a q8_0/q4_0 matrix whose rows are not a multiple of 32 long."""
    if t.dim() == 1 or name == "position_embd.weight" or kind == "f32":
        return "f32"
    if kind in QUANTIZE and t.shape[1] % QK:
        return "f16"
    return kind


# --- the tokenizer -----------------------------------------------------------------------------------------
def tokenizer_fields(tokenizer, vocab_size: int) -> dict[str, Any]:
    """tokens, token types, merges and the pre-tokenizer type of a byte-level BPE, padded to the model's
    vocabulary; a UserError for tokenizers llama.cpp cannot run as we do."""
    from scratchllm.tokenizer.bpe import BPETokenizer
    from scratchllm.tokenizer.bytelevel import token_to_str
    from scratchllm.tokenizer.hf import hf_merges
    from scratchllm.tokenizer.patterns import GPT2_PATTERN_ORIGINAL, PATTERNS

    if tokenizer is None:
        raise UserError("the model has no tokenizer, and a GGUF file needs one; export a run or checkpoint "
                        "that has its tokenizer")
    if not isinstance(tokenizer, BPETokenizer):
        raise UserError(f"GGUF export takes byte-level BPE tokenizers (GPT-2's or one trained by scratchllm); "
                        f"this model's is a {getattr(tokenizer, 'kind', type(tokenizer).__name__)} tokenizer")
    known = {PATTERNS["gpt2"]: "gpt-2", GPT2_PATTERN_ORIGINAL: "gpt-2", PATTERNS["gpt4"]: "llama-bpe",
             LLAMA3_PATTERN: "llama-bpe", QWEN2_PATTERN: "qwen2"}
    pre = known.get(tokenizer.pattern)
    if pre is None:
        raise UserError(f"the tokenizer's pre-tokenisation pattern {tokenizer.pattern[:60]!r} has no llama.cpp "
                        f"equivalent; GGUF export takes GPT-2's and GPT-4's patterns (and Llama 3's and Qwen2's)")
    if tokenizer.vocab_size > vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only {vocab_size}; "
                        f"they do not belong together")
    tokens = [token_to_str(t) for t in tokenizer.vocab]
    types = [NORMAL] * len(tokens)
    by_id = {i: s for s, i in tokenizer.special_tokens.items()}
    for i in range(len(tokens), vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(CONTROL if i in by_id else UNUSED)
    merges = [f"{token_to_str(tokenizer.vocab[a])} {token_to_str(tokenizer.vocab[b])}" for a, b in hf_merges(tokenizer)]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": pre}


def chat_template_jinja(prompt_template: str) -> str:
    """A scratchllm prompt template ("chat" or "alpaca", `generate.templates`) as the Jinja chat template
    llama.cpp, llama-cpp-python and Ollama read from `tokenizer.chat_template`. Rendered with
    add_generation_prompt, one user message gives exactly `instruction_prompt(template, message)`
    (tests check it); "chat" is ChatML, which llama.cpp also recognises by its markers."""
    from scratchllm.generate import templates as tpl

    def s(text: str) -> str:  # a Jinja string literal
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"

    if tpl.check_template(prompt_template) == "chat":
        return ("{% for message in messages %}"
                f"{{{{ {s(tpl.CHAT_START)} + message['role'] + {s(chr(10))} + message['content'] + "
                f"{s(tpl.CHAT_END + chr(10))} }}}}"
                "{% endfor %}"
                f"{{% if add_generation_prompt %}}{{{{ {s(tpl.CHAT_START + 'assistant' + chr(10))} }}}}{{% endif %}}")
    # the book's Alpaca format: each user message is an instruction, each assistant message its response
    return ("{% for message in messages %}"
            "{% if message['role'] == 'user' %}"
            f"{{{{ {s(tpl.ALPACA_PREAMBLE + chr(10) * 2 + '### Instruction:' + chr(10))} + message['content'] }}}}"
            "{% if loop.last and add_generation_prompt %}"
            f"{{{{ {s(tpl.ALPACA_RESPONSE)} }}}}"
            "{% endif %}"
            "{% elif message['role'] == 'assistant' %}"
            f"{{{{ {s(tpl.ALPACA_RESPONSE)} + message['content'] + {s(chr(10) * 2)} }}}}"
            "{% endif %}"
            "{% endfor %}")


def chat_template(generation: dict[str, Any]) -> str | None:
    """The run's chat template: its own Jinja one, else its scratchllm prompt template as Jinja, else None."""
    if generation.get("chat_template"):
        return str(generation["chat_template"])
    if generation.get("prompt_template"):
        return chat_template_jinja(generation["prompt_template"])
    return None


def _first(ids: Any) -> int | None:
    if isinstance(ids, list):
        return ids[0] if ids else None
    return ids if isinstance(ids, int) else None


# --- the file ----------------------------------------------------------------------------------------------
def write_gguf(model: torch.nn.Module, tokenizer, out: str | os.PathLike, kind: str = "f32",
               generation: dict[str, Any] | None = None, name: str | None = None) -> Path:
    """Write `model` (our GPT, full precision) and its `tokenizer` as a GGUF file at `out`, its 2-D weights
    in `kind` (f32, f16, q8_0, q4_0), atomically (a temp file beside it, renamed at the end).
    `generation`: the run's eos/bos ids, chat template or prompt template (meta["generation"])."""
    if kind not in TYPES:
        raise UserError(f"unknown GGUF type {kind!r}; choose one of {', '.join(TYPES)}")
    gguf = require_gguf()
    from scratchllm.files import fsync_dir, temp_file

    config = model.config
    arch = gguf_arch(config)
    if arch == "gpt2" and config.mlp == "gelu_exact":
        warnings.warn("this model's MLP uses exact (erf) GELU, llama.cpp's gpt2 graph the tanh form GPT-2 uses; "
                      "the two differ by less than 0.001 per activation", stacklevel=2)
    vocab = tokenizer_fields(tokenizer, config.vocab_size)
    generation = generation or {}
    tensors = gguf_tensors(model, arch)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(out)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_type("model")
        w.add_name(name or out.stem)
        w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                         "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[kind])
        if kind in QUANTIZE:
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hyperparameters(w, config, arch)
        _add_tokenizer(w, gguf, vocab, tokenizer, generation)
        for tname, t in tensors.items():
            ttype = tensor_type(tname, t, kind)
            if ttype in QUANTIZE:
                raw = QUANTIZE[ttype](t).numpy()
                w.add_tensor(tname, raw, raw_shape=raw.shape, raw_dtype=getattr(gguf.GGMLQuantizationType,
                                                                                 ttype.upper()))
            else:
                w.add_tensor(tname, t.numpy().astype("float16" if ttype == "f16" else "float32"))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    return out


def _add_hyperparameters(w, config, arch: str) -> None:
    w.add_context_length(config.context_length)
    w.add_embedding_length(config.n_embd)
    w.add_block_count(config.n_layer)
    w.add_feed_forward_length(config.hidden_dim)
    w.add_head_count(config.n_head)
    w.add_head_count_kv(config.kv_heads)
    w.add_vocab_size(config.vocab_size)
    if arch == "gpt2":
        w.add_layer_norm_eps(config.norm_eps)
        return
    w.add_layer_norm_rms_eps(config.norm_eps)
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
    w.add_rope_dimension_count(config.head_dim)
    w.add_rope_freq_base(config.rope_base)


def _add_tokenizer(w, gguf, vocab: dict[str, Any], tokenizer, generation: dict[str, Any]) -> None:
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab["pre"])
    w.add_token_list(vocab["tokens"])
    w.add_token_types(vocab["types"])
    w.add_token_merges(vocab["merges"])
    eos = _first(generation.get("eos_token_id"))
    eos = eos if eos is not None else tokenizer.eot_id
    bos = _first(generation.get("bos_token_id"))
    bos = bos if bos is not None else eos
    if eos is not None:
        w.add_eos_token_id(eos)
    if bos is not None:
        w.add_bos_token_id(bos)
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    template = chat_template(generation)
    if template:
        w.add_chat_template(template)
