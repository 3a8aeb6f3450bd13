"""Hugging Face model folders, both ways: read one into our GPT, write our GPT as one.

A Hugging Face causal-LM folder holds `config.json` (with `model_type`), the weights, and the
tokenizer files:

    config.json                      architecture and sizes (`model_type`: gpt2, llama, qwen3)
    model.safetensors                weights; or shards listed in model.safetensors.index.json;
                                     or pytorch_model.bin (+ .index.json), read with
                                     torch.load(weights_only=True): never plain pickle
    tokenizer.json                   or GPT-2's vocab.json + merges.txt (tokenizer.hf)
    generation_config.json           end-of-text (eos) and begin (bos) token ids
    tokenizer_config.json            the chat template (or chat_template.jinja beside it)

Reading (`read_hf`): config.json -> ModelConfig and the weights -> our names through
`model.weights` (the one place names are translated), dispatched on `model_type` (`weights.hf_model_type`); every
tensor is checked against the model's shapes (a missing, extra or misshapen tensor is one error
naming it and the file), and the model is built on the meta device (no random initialisation to
throw away) and given the loaded tensors: memory-mapped ones as they are (GPT-2's Conv1D matrices too,
as transposed views that nn.Linear and the decode kernel read in place: nothing is copied, so loading
takes the time of mapping the file), the others (other dtypes) copied once, on torch's threads, each
copied one's file pages then let go of (the process keeps the copy, not both).
Writing (`write_hf`): the inverse, GPT-2-shaped models as `GPT2LMHeadModel`, Llama-style ones as
`LlamaForCausalLM`, QK-norm ones as `Qwen3ForCausalLM`, into a temporary folder renamed into place at
the end, so an error leaves nothing half-written.

Not here: scratchllm's own checkpoints (`checkpoint`), choosing a reader for a path
(`interop.load`), converting to a checkpoint (`interop.importer`), downloading.
References: transformers' `modeling_utils.save_pretrained` and `PreTrainedModel.from_pretrained`
(file names, the shard index format); safetensors' format (an 8-byte header length, a JSON header,
raw tensors).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import mmap
import os
import pickle
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from scratchllm.checkpoint import check_tensors
from scratchllm.checkpoint.load import skip_init
from scratchllm.config.model import ModelConfig
from scratchllm.errors import UserError
from scratchllm.files import fsync_dir
from scratchllm.model import weights

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# What a checkpoint keeps of a model's generation settings (`generation.json` beside its tokenizer):
# eos_token_id (int or list), bos_token_id, chat_template (a Jinja string), and the source.
GENERATION_KEYS = ("eos_token_id", "bos_token_id", "chat_template")


# --- reading -----------------------------------------------------------------------------------------------
def is_hf_folder(folder: Path) -> bool:
    """A folder whose config.json names a `model_type` (scratchllm's own config.json has none)."""
    try:
        cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); it may be truncated") from None


def read_hf_config(folder: Path) -> tuple[str, dict, ModelConfig]:
    """(model_type, config.json as a dict, ModelConfig) of a HF folder."""
    path = folder / CONFIG
    if not path.is_file():
        raise UserError(f"{folder} has no {CONFIG}; a Hugging Face model folder holds {CONFIG} and "
                        f"{SAFETENSORS} (or {PYTORCH})")
    hf = _json(path)
    if not isinstance(hf, dict):
        raise UserError(f"{path} holds a JSON {type(hf).__name__}, expected an object")
    try:
        kind = weights.hf_model_type(hf)
        config = weights.config_from_hf(hf)
    except KeyError as e:
        raise UserError(f"{path} has no {e.args[0]!r}; is it a complete {kind} config?") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return kind, hf, config


def _safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    if not path.is_file():
        raise UserError(f"weights file {path} is missing")
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error type (and OSError) for a bad file
        raise UserError(f"weights file {path} is corrupted or truncated ({str(e).splitlines()[0]})") from None


def _torch_bin(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise UserError(f"weights file {path} is missing")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = str(e).splitlines()[-1] if str(e) else "it holds pickled code"
        raise UserError(f"weights file {path} is refused by torch.load(weights_only=True), which never runs "
                        f"pickled code ({why[:120]}); get the model as safetensors") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise UserError(f"weights file {path} is corrupted or truncated ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"weights file {path} does not hold a state dict (name -> tensor)")
    return sd


def read_hf_weights(folder: Path) -> tuple[dict, dict[str, Path]]:
    """(state dict in HF's names, name -> the file it came from): single, sharded or PyTorch files."""
    for index_name, read in ((SAFETENSORS_INDEX, _safetensors), (PYTORCH_INDEX, _torch_bin)):
        single = folder / index_name.removesuffix(".index.json")
        if single.is_file():
            sd = read(single)
            return sd, dict.fromkeys(sd, single)
        if (folder / index_name).is_file():
            index = _json(folder / index_name)
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise UserError(f"{folder / index_name} has no weight_map (tensor name -> shard file)")
            sd, where = {}, {}
            for shard in sorted(set(weight_map.values())):
                path = folder / shard
                if Path(shard).name != shard:
                    raise UserError(f"{folder / index_name} names shard {shard!r}, not a file in {folder}")
                part = read(path)
                sd.update(part)
                where.update(dict.fromkeys(part, path))
            for name, shard in weight_map.items():
                if name not in sd:
                    raise UserError(f"tensor {name!r} is listed in {folder / index_name} but missing from "
                                    f"{folder / shard}")
            return sd, where
    raise UserError(f"{folder} has no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {PYTORCH} or "
                    f"{PYTORCH_INDEX}")


def generation_info(folder: Path, hf: dict | None = None) -> dict[str, Any]:
    """eos/bos ids and chat template from generation_config.json, tokenizer_config.json (or
    chat_template.jinja) and config.json, the first that has each."""
    out: dict[str, Any] = {}
    sources = [folder / GENERATION_CONFIG, folder / TOKENIZER_CONFIG]
    dicts = [_json(p) for p in sources if p.is_file()] + [hf or {}]
    for d in dicts:
        if not isinstance(d, dict):
            continue
        for key in GENERATION_KEYS:
            if d.get(key) is not None and key not in out:
                out[key] = d[key]
    if "chat_template" not in out and (folder / "chat_template.jinja").is_file():
        out["chat_template"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return out


def release_pages(t: Any) -> None:
    """Let go of the memory pages that lie wholly inside tensor `t`, which must have been read from a
    memory-mapped file and never written (safetensors maps files copy-on-write: `_safetensors`).

    `madvise(MADV_DONTNEED)`: the process stops counting those pages in its resident memory (its
    RSS); the kernel keeps them in its page cache, and a later read of `t` maps them back, the same
    bytes, from the file. Used once a tensor has been copied (converted to another dtype), so that a
    loaded model does not hold both the file's pages and their copies. On a
    written (copy-on-write) or anonymous page it would lose the data: callers pass only tensors of a
    file they mapped. Linux only; elsewhere it does nothing."""
    madvise = _libc_madvise()
    if madvise is None:
        return
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    start = -(-start // PAGE) * PAGE  # whole pages only: the tensors before and after keep theirs
    end = end // PAGE * PAGE
    if end > start:
        madvise(start, end - start, MADV_DONTNEED)


@functools.cache
def _libc_madvise() -> Any:
    """libc's madvise(addr, length, advice) through ctypes, or None where it is not Linux's."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return fn


PAGE = mmap.PAGESIZE
MADV_DONTNEED = 4  # Linux's value (<sys/mman.h>); Python's mmap module applies it only to maps it made


def model_tensors(sd: dict, dtype: Any = None, mapped: bool = False) -> dict:
    """`sd` as the model holds it: every tensor contiguous, or a matrix stored transposed (a 2-D view whose
    transpose is contiguous: GPT-2's Conv1D weights as `weights.from_hf` maps them, which F.linear and the
    decode kernel `model.gemv` read as they lie), and the floating-point ones of `dtype` (None: as they are).

    A tensor that already is stays itself, not a copy: a memory-mapped one goes on reading the
    file's pages (safetensors maps a file copy-on-write, so writing to such a tensor never changes
    the file). The others (other dtypes, other strided views) are copied, contiguous,
    into new memory, one tensor per task on `torch.get_num_threads()` threads, largest first: such a
    copy is a strided read plus the first touch of every new page, work that torch does on one
    thread per tensor. A tensor under two names (a tied head) stays one tensor. `mapped`: the tensors
    are read from memory-mapped files and never written; each copied one then lets go of its file
    pages (`release_pages`), so the model's resident memory is its tensors, not those plus the file."""
    import torch

    def dtype_of(t: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    def laid_out(t: torch.Tensor) -> bool:
        return t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous())

    todo = {id(t): t for t in sd.values() if not laid_out(t) or dtype_of(t) != t.dtype}
    if not todo:
        return sd

    # New memory from torch's allocator (small pages). Not huge pages (an mmap with MADV_HUGEPAGE): fewer
    # page faults, but where the kernel hands free memory back to a hypervisor (virtio-balloon free page
    # reporting: whole 2 MB blocks) a fresh huge page's first touch costs more than the small pages'.
    def copy(t: torch.Tensor) -> torch.Tensor:
        out = torch.empty(t.shape, dtype=dtype_of(t), device=t.device).copy_(t)
        if mapped and t.device.type == "cpu":
            release_pages(t)
        return out

    order = sorted(todo, key=lambda k: -todo[k].numel())
    threads = min(torch.get_num_threads(), len(order))
    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:  # torch lets go of the GIL while it copies
            copies = dict(zip(order, pool.map(copy, (todo[k] for k in order))))
    else:
        copies = {k: copy(todo[k]) for k in order}
    return {name: copies.get(id(t), t) for name, t in sd.items()}


def build_model(config: ModelConfig, sd: dict, source: str = "the weights", dtype: Any = None,
                mapped: bool = False) -> Any:
    """Our GPT holding the tensors of `sd` (our names), checked first (`check_tensors`); built on the
    meta device without initialisation (`skip_init`), and given the tensors themselves where they are
    laid out as the model reads them and of `dtype` (a torch dtype; None: any), else contiguous copies
    (`model_tensors`). `mapped`: `sd`'s tensors are memory-mapped file pages, released once copied.
    Buffers (RoPE tables) come from a one-block copy of the model, built on the CPU."""
    import torch

    from scratchllm.model import GPT

    with skip_init(), torch.device("meta"):
        model = GPT(config)
    check_tensors(model.state_dict(), sd, source)
    model.load_state_dict(model_tensors(sd, dtype, mapped), strict=True, assign=True)
    if config.tie_weights:
        model.lm_head.weight = model.tok_emb.weight
    meta_buffers = [n for n, b in model.named_buffers() if b.is_meta]
    if meta_buffers:
        with skip_init():
            small = dict(GPT(dataclasses.replace(config, n_layer=1)).named_buffers())
        for name in meta_buffers:
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            setattr(module, attr, small[name])
    return model.eval()


def read_hf(folder: str | os.PathLike, dtype: Any = "float32") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer or None, meta) from a HF folder. meta: source, format "hf", model_type,
    generation (eos/bos ids, chat template). Floating-point weights become `dtype` (a torch dtype or
    its name; default fp32, scratchllm's working precision: hub models are mostly stored in bf16;
    None keeps the file's)."""
    import torch

    from scratchllm.tokenizer.hf import hf_folder_tokenizer

    folder = Path(folder)
    kind, hf, config = read_hf_config(folder)
    raw, where = read_hf_weights(folder)
    files = sorted({str(p) for p in where.values()})
    source = files[0] if len(files) == 1 else f"the weights in {folder}"
    try:
        ours = weights.from_hf(raw, kind, tied=config.tie_weights)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tokenizer = hf_folder_tokenizer(folder)
    if tokenizer is not None and tokenizer.vocab_size > config.vocab_size:
        raise UserError(f"the tokenizer in {folder} has {tokenizer.vocab_size} tokens but {folder / CONFIG} says "
                        f"vocab_size {config.vocab_size}: the files are from different models")
    mapped = all(p.suffix == ".safetensors" for p in where.values())  # memory-mapped by `_safetensors`
    model = build_model(config, ours, source, dtype, mapped)  # converted where needed, after the checks
    generation = generation_info(folder, hf)
    for key in ("eos_token_id", "bos_token_id"):  # GPT2Config's default 50256 in a smaller vocabulary: unusable
        ids = generation.get(key)
        if any(not isinstance(i, int) or not 0 <= i < config.vocab_size for i in (ids if isinstance(ids, list)
                                                                                   else [ids])):
            generation.pop(key, None)
    meta = {"source": str(folder), "format": "hf", "model_type": kind, "generation": generation}
    return model, tokenizer, meta


# --- writing -----------------------------------------------------------------------------------------------
def hf_config_dict(config: ModelConfig, generation: dict | None = None) -> dict[str, Any]:
    """config.json for `config`: the arch's keyword arguments plus model_type and architectures."""
    d = weights.hf_config(config)
    gen = generation or {}
    for key in ("eos_token_id", "bos_token_id"):
        d[key] = gen.get(key)
    return d


def hf_state_dict(model: Any) -> dict:
    """The model's tensors in HF's names, contiguous and unshared (safetensors refuses shared memory):
    a tied head is left out, as save_pretrained does."""
    m = getattr(model, "_orig_mod", model)
    sd = weights.to_hf(m.state_dict(), weights.model_type_for(m.config))
    if m.config.tie_weights:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().contiguous() for k, v in sd.items()}


def write_hf(model: Any, tokenizer: Any, out: str | os.PathLike, generation: dict | None = None) -> Path:
    """Write a HF folder at `out` (which must not exist) atomically: config.json, model.safetensors,
    generation_config.json, and for a byte-level BPE tokenizer tokenizer.json + tokenizer_config.json."""
    from safetensors.torch import save_file

    from scratchllm.tokenizer.bpe import BPETokenizer
    from scratchllm.tokenizer.hf import export_hf

    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new folder for the export (nothing was written)")
    m = getattr(model, "_orig_mod", model)
    gen = dict(generation or {})
    specials = getattr(tokenizer, "special_tokens", {})
    if "eos_token_id" not in gen and "<|endoftext|>" in specials:
        gen["eos_token_id"] = specials["<|endoftext|>"]
    config = hf_config_dict(m.config, gen)  # refuses options the HF architecture cannot hold, before writing
    config["torch_dtype"] = str(m.lm_head.weight.dtype).removeprefix("torch.")
    sd = hf_state_dict(m)
    if tokenizer is not None and tokenizer.vocab_size > m.config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens, the model's vocab_size is "
                        f"{m.config.vocab_size}; they do not belong together")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        save_file(sd, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        gen_config = {k: gen[k] for k in ("eos_token_id", "bos_token_id") if gen.get(k) is not None}
        (tmp / GENERATION_CONFIG).write_text(json.dumps(gen_config, indent=2), encoding="utf-8")
        if isinstance(tokenizer, BPETokenizer):
            export_hf(tokenizer, tmp / "tokenizer.json")
            tok_config = tokenizer_config(tokenizer, gen)
            (tmp / TOKENIZER_CONFIG).write_text(json.dumps(tok_config, indent=2), encoding="utf-8")
        elif tokenizer is not None:
            import warnings

            warnings.warn(f"a {type(tokenizer).__name__} has no Hugging Face form; {out} gets no tokenizer files "
                          f"(only byte-level BPE tokenizers are exported)", stacklevel=2)
        for p in tmp.iterdir():
            with open(p, "rb+") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def tokenizer_config(tokenizer: Any, generation: dict) -> dict[str, Any]:
    """tokenizer_config.json: the fast tokenizer class, the special tokens by role, the chat template."""
    by_id = {i: s for s, i in tokenizer.special_tokens.items()}
    # PreTrainedTokenizerFast: the class that runs any tokenizer.json; no clean-up of spaces, so decoding
    # gives the text back byte for byte as ours does; model_max_length: no length limit of the tokenizer's
    # own (the model's context is in config.json).
    d: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                         "model_max_length": 1_000_000_000}
    eos = generation.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if eos in by_id:
        d["eos_token"] = by_id[eos]
    if generation.get("bos_token_id") in by_id:
        d["bos_token"] = by_id[generation["bos_token_id"]]
    if generation.get("chat_template"):
        d["chat_template"] = generation["chat_template"]
    return d
