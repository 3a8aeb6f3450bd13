"""OpenAI's original GPT-2 release folder, read without TensorFlow.

The folder `download_model.py` of openai/gpt-2 fills (and the book's chapter 5 loads with TensorFlow):
- `hparams.json`: n_vocab, n_ctx, n_embd, n_head, n_layer (the rest is fixed by OpenAI's model.py);
- `checkpoint`: a text protobuf whose `model_checkpoint_path` names the checkpoint prefix (`model.ckpt`);
- `model.ckpt.index` + `model.ckpt.data-00000-of-00001`: the weights, a TensorFlow tensor bundle
  (`interop.tf_bundle`) under the names `model/wte`, `model/h0/attn/c_attn/w`, ...;
- `encoder.json` + `vocab.bpe`: GPT-2's byte-level BPE (`tokenizer.bpe.BPETokenizer.from_gpt2_files`).
(`model.ckpt.meta`, the TensorFlow graph, is not needed.)

`read_openai_gpt2(folder)` returns (ModelConfig, state dict in scratchllm's names, tokenizer). Every
tensor is checked before any is used: a missing or extra tensor or a wrong shape is one UserError
naming the tensor, the index file and what hparams.json says; so is a vocabulary that does not match
the tokenizer. Names are translated by `model.weights.from_openai_gpt2`, nowhere else.

Not here: building the model, writing a scratchllm checkpoint or downloading (the importer in
`interop`, `scratchllm download gpt2`). Reference: openai/gpt-2 src/model.py, src/encoder.py.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from pathlib import Path

import torch

from scratchllm.config.model import ModelConfig
from scratchllm.errors import UserError
from scratchllm.interop.tf_bundle import read_index, read_tensors
from scratchllm.model.weights import config_from_openai_gpt2, from_openai_gpt2, openai_gpt2_shapes
from scratchllm.tokenizer.bpe import BPETokenizer

HPARAMS_FILE = "hparams.json"
CHECKPOINT_FILE = "checkpoint"
DEFAULT_PREFIX = "model.ckpt"  # what OpenAI's files use when the `checkpoint` file is absent
# For the model card of a converted model: where the weights come from and under which terms.
SOURCE = "OpenAI GPT-2 (https://github.com/openai/gpt-2), original TensorFlow release"
LICENSE = "Modified MIT License (https://github.com/openai/gpt-2/blob/master/LICENSE)"


def is_openai_gpt2(folder: str | os.PathLike) -> bool:
    """Whether `folder` looks like OpenAI's GPT-2 release (hparams.json next to a checkpoint index)."""
    folder = Path(folder)
    return (folder / HPARAMS_FILE).is_file() and any(folder.glob("*.index"))


def checkpoint_prefix(folder: Path) -> Path:
    """The checkpoint prefix the `checkpoint` file names (`model_checkpoint_path: "model.ckpt"`).

    A relative path is taken inside `folder`; an absolute one that does not exist (the folder was
    moved since TensorFlow wrote it) by its file name inside `folder`. Without the file: model.ckpt.
    """
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return folder / DEFAULT_PREFIX
    text = path.read_text(encoding="utf-8", errors="replace")
    m = re.search(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', text, re.M)
    if not m:
        raise UserError(f"{path} names no model_checkpoint_path; is this TensorFlow's checkpoint file?")
    # text-format strings are C-escaped: \" for a quote, \ooo for each byte of a non-ASCII character
    named = Path(codecs.escape_decode(m.group(1).encode("utf-8"))[0].decode("utf-8", "replace"))
    if not named.is_absolute():
        return folder / named
    if Path(f"{named}.index").is_file():
        return named
    return folder / named.name


def _read_hparams(folder: Path) -> dict:
    path = folder / HPARAMS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found; OpenAI's GPT-2 folder has hparams.json, checkpoint, model.ckpt.* "
                        f"and encoder.json + vocab.bpe")
    try:
        hparams = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); it may be truncated") from None
    if not isinstance(hparams, dict):
        raise UserError(f"{path} must be a JSON object with n_vocab, n_ctx, n_embd, n_head, n_layer")
    return hparams


def read_openai_gpt2(folder: str | os.PathLike, *, verify: bool = True
                     ) -> tuple[ModelConfig, dict[str, torch.Tensor], BPETokenizer]:
    """(config, state dict in scratchllm's parameter names, GPT-2 tokenizer) from OpenAI's GPT-2 folder.

    `verify` checks each tensor's CRC-32C (tf_bundle.read_tensors)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass OpenAI's GPT-2 folder (hparams.json, model.ckpt.*, ...)")
    hparams_file = folder / HPARAMS_FILE
    try:
        config = config_from_openai_gpt2(_read_hparams(folder))
    except UserError as e:
        raise UserError(f"{hparams_file}: {e}") from None
    bundle = read_index(checkpoint_prefix(folder))
    index = bundle.index_file
    says = (f"{hparams_file.name} says n_layer={config.n_layer}, n_embd={config.n_embd}, "
            f"n_vocab={config.vocab_size}, n_ctx={config.context_length}")
    expected = openai_gpt2_shapes(config)
    missing = [n for n in expected if n not in bundle.entries]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UserError(f"{index} has no tensor {missing[0]!r}{more}; {says}")
    extra = [n for n in bundle.entries if n not in expected]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise UserError(f"{index} has tensor {extra[0]!r}{more} that a GPT-2 of these hparams does not; {says}")
    for name, shape in expected.items():
        if bundle.entries[name].shape != shape:
            raise UserError(f"{index}: tensor {name!r} has shape {list(bundle.entries[name].shape)}, expected "
                            f"{list(shape)}; {says}")
    arrays = read_tensors(bundle, expected, verify=verify)
    state_dict = from_openai_gpt2({name: torch.from_numpy(a) for name, a in arrays.items()})
    tokenizer = BPETokenizer.from_gpt2_files(folder / "encoder.json", folder / "vocab.bpe")
    if tokenizer.vocab_size != config.vocab_size:
        raise UserError(f"{folder / 'encoder.json'} has {tokenizer.vocab_size} tokens but {hparams_file.name} says "
                        f"n_vocab={config.vocab_size}; are the files from the same model?")
    return config, state_dict, tokenizer
