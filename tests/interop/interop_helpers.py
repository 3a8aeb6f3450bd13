"""Helpers for the interop tests (imported by name: the folder is on sys.path): Hugging Face folders
that transformers writes at random init.

Tiny sizes (2 layers, 32-64 dims) so each folder takes milliseconds; each kind tied and untied.
Tokenizer files are built from GPT-2's shared encoder.json/vocab.bpe (written as vocab.json +
merges.txt) or from a BPE trained here, then saved by the `tokenizers` library itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GPT2_FILES = DATA / "gpt2"
# Text that stresses tokenizers: unicode of many scripts, emoji sequences, whitespace runs, numbers,
# contractions, control characters, special tokens between and inside words.
TORTURE = ("Hello  world!! 12345 3.14159 café naïve e\u0301 日本語のテキスト 你好 한국어 مرحبا Привет 😀 👩‍👩‍👧 🇫🇷\n\n"
           "  they're we'll I'M don't 's\t\tx\u00a0y\u3000z \r\n<|endoftext|>after<|endoftext|> $$ ... -- "
           "\x00\x07\x1b[0m\u200b 𝔘𝔫𝔦𝔠𝔬𝔡𝔢    end   \n")
VOCAB = 300


def gpt2_config(**kw):
    from transformers import GPT2Config

    return GPT2Config(**{"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, "vocab_size": VOCAB,
                         "bos_token_id": 0, "eos_token_id": 0, **kw})


def llama_config(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(**{"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                          "hidden_size": 32, "intermediate_size": 64, "max_position_embeddings": 64,
                          "vocab_size": VOCAB, "rope_theta": 500000.0, "bos_token_id": 1, "eos_token_id": 2, **kw})


def qwen3_config(**kw):
    """Qwen3's QK-norm and a head size apart from hidden_size / heads (16 x 4 heads on 48 dims)."""
    from transformers import Qwen3Config

    return Qwen3Config(**{"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                          "head_dim": 16, "hidden_size": 48, "intermediate_size": 64, "max_position_embeddings": 64,
                          "vocab_size": VOCAB, "rope_theta": 1000000.0, "bos_token_id": 1, "eos_token_id": 2, **kw})


# Llama 3.x's rope scaling, with a context beyond original_max_position_embeddings so that it matters
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500000.0}


def hf_model(kind: str, tied: bool):
    """A transformers model at random init: gpt2, llama, llama3 (rope scaling) or qwen3."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM, Qwen3ForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2LMHeadModel(gpt2_config(tie_word_embeddings=tied))
    elif kind == "llama3":
        model = LlamaForCausalLM(llama_config(tie_word_embeddings=tied, rope_scaling=dict(LLAMA3_ROPE)))
    elif kind == "qwen3":
        model = Qwen3ForCausalLM(qwen3_config(tie_word_embeddings=tied))
    else:
        model = LlamaForCausalLM(llama_config(tie_word_embeddings=tied))
    with torch.no_grad():  # random norms and biases too, so a swapped tensor shows
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def save(model, folder: Path, **kw) -> Path:
    model.save_pretrained(folder, **kw)
    return folder


def gpt2_vocab_merges(folder: Path) -> Path:
    """GPT-2's encoder.json/vocab.bpe written as the hub's vocab.json/merges.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(GPT2_FILES / "encoder.json", folder / "vocab.json")
    shutil.copy(GPT2_FILES / "vocab.bpe", folder / "merges.txt")
    return folder


def gpt2_tokenizer_json(path: Path) -> Path:
    """GPT-2's tokenizer as a tokenizer.json that the `tokenizers` library itself builds and saves."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    files = gpt2_vocab_merges(path.parent / "gpt2-files")
    tok = Tokenizer(models.BPE.from_file(str(files / "vocab.json"), str(files / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.save(str(path))
    return path


def trained_bpe(pattern: str = "gpt2", vocab_size: int = VOCAB):
    from scratchllm.tokenizer.bpe import BPETokenizer

    text = (DATA / "the-verdict.txt").read_text(encoding="utf-8")
    return BPETokenizer.train(text, vocab_size, pattern=pattern, special_tokens=["<|endoftext|>", "<|im_end|>"])
