"""The command line's contract, table-driven: every subcommand against a matrix of bad input.

Each row runs `scratchllm.cli.main(argv)` in-process and asserts: exit code 2, exactly one line with
`error:` on stderr, no traceback anywhere, and no file written or left half-written (the working
folder's tree is the same before and after). Bad inputs: a missing file, an empty one, a binary one,
one that is not UTF-8, JSON and TOML of the wrong shape, out-of-range and non-finite numbers, and a
destination that cannot be written: a file in the way of a folder, a read-only folder and a full
disk. Running as root ignores permission bits, so the read-only folder and the full disk are made at
the OS-call level (writes under the folder fail with EACCES; fsync fails with ENOSPC).

Beside the table: the rules every command shares (help and exit 2 for a missing subcommand, warnings
as one line, a closed pipe, the umask, `--help` listing each config field once, from its dataclass).
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

from scratchllm.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = """name = "tiny"
[data]
dataset = "{good}"
tokenizer = {{ kind = "char" }}
dedup = false
near_dedup = false
[model]
n_layer = 1
n_head = 2
n_embd = 16
context_length = 16
[train]
max_steps = 2
batch_size = 2
eval_interval = 1
eval_batches = 1
peak_flops = 1e9
threads = 1
"""


class PickledCode:
    """Pickles as a call of `print`: what torch.load(weights_only=True) must refuse to run."""

    def __reduce__(self):
        return (print, ("this ran",))


@pytest.fixture(scope="session")
def hf_inputs(tmp_path_factory) -> dict[str, str]:
    """Hugging Face model folders, one good (tiny GPT-2) and one per fault, outside the working folder
    (read-only inputs; made once)."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from scratchllm.config.model import ModelConfig
    from scratchllm.interop.hf import write_hf
    from scratchllm.model import GPT
    from scratchllm.tokenizer.bpe import BPETokenizer
    from scratchllm.tokenizer.hf import export_hf

    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    good = write_hf(GPT(ModelConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, context_length=16)), None,
                    root / "hf_good")
    weights = load_file(str(good / "model.safetensors"))
    folders = {"hf_good": good}

    def variant(name, edit_weights=None):
        folders[name] = shutil.copytree(good, root / name)
        if edit_weights is not None:
            sd = dict(weights)
            edit_weights(sd)
            save_file(sd, str(folders[name] / "model.safetensors"))
        return folders[name]

    (variant("hf_noconfig") / "config.json").unlink()
    (variant("hf_bert") / "config.json").write_text(json.dumps({"model_type": "bert"}))
    f = variant("hf_truncated") / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    f = variant("hf_pickle")
    (f / "model.safetensors").unlink()
    torch.save({"transformer.wte.weight": torch.zeros(64, 16), "x": PickledCode()}, f / "pytorch_model.bin")
    variant("hf_missing", lambda sd: sd.pop("transformer.h.0.mlp.c_fc.weight"))
    variant("hf_extra", lambda sd: sd.update({"transformer.h.0.attn.extra": torch.zeros(2)}))
    variant("hf_shape", lambda sd: sd.update({"transformer.wpe.weight": torch.zeros(8, 16)}))
    export_hf(BPETokenizer([bytes([i]) for i in range(256)], [], special_tokens={"<|endoftext|>": 256}),
              variant("hf_vocab") / "tokenizer.json")  # 257 tokens for a 64-token model
    return {k: str(v) for k, v in folders.items()}


@pytest.fixture(scope="session")
def lora_inputs(tmp_path_factory) -> dict[str, str]:
    """LoRA folders outside the working folder (read-only inputs; made once): a plain checkpoint, a LoRA
    run without init_from, adapters alone (base recorded, missing base, truncated, edited adapters.json)."""
    import json

    import torch

    from scratchllm.checkpoint.folder import ADAPTERS_CONFIG, ADAPTERS_FILE, save_adapters, save_checkpoint
    from scratchllm.checkpoint.pointers import LATEST, write_pointer
    from scratchllm.config.lora import LoraConfig
    from scratchllm.config.model import ModelConfig
    from scratchllm.model import GPT
    from scratchllm.model.lora import add_lora

    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, n_layer=1, n_head=2, n_embd=16, context_length=16)
    plain = save_checkpoint(root / "plain_ck", GPT(config))
    model = GPT(config)
    add_lora(model, LoraConfig(r=2))
    run = root / "lora_run"
    write_pointer(run, LATEST, save_checkpoint(run / "checkpoints" / "step-0000001", model, state={"step": 1}))
    folders = {"plain_ck": plain, "lora_run": run,
               "adapters": save_adapters(model, root / "adapters", str(plain)),
               "adapters_nobase": save_adapters(model, root / "adapters_nobase", str(root / "gone")),
               "adapters_truncated": save_adapters(model, root / "adapters_truncated", str(plain)),
               "adapters_edited": save_adapters(model, root / "adapters_edited", str(plain))}
    f = folders["adapters_truncated"] / ADAPTERS_FILE
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    f = folders["adapters_edited"] / ADAPTERS_CONFIG
    f.write_text(json.dumps({**json.loads(f.read_text()), "r": "two"}))
    from scratchllm.compress.quantize import QuantScheme, quantize_model

    quantized = GPT(config)
    quantize_model(quantized, QuantScheme(8))
    folders["quantized_ck"] = save_checkpoint(root / "quantized_ck", quantized)
    return {k: str(v) for k, v in folders.items()}


@pytest.fixture(scope="session")
def eval_inputs(tmp_path_factory) -> dict[str, str]:
    """A tiny checkpoint with a byte-level tokenizer and multiple-choice files, one good and one per fault,
    outside the working folder (read-only inputs; made once)."""
    import json

    import torch

    from scratchllm.checkpoint.folder import save_checkpoint
    from scratchllm.config.model import ModelConfig
    from scratchllm.model import GPT
    from scratchllm.tokenizer.bpe import BPETokenizer

    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    tok = BPETokenizer([bytes([i]) for i in range(256)], [], special_tokens={"<|endoftext|>": 256})
    model = GPT(ModelConfig(vocab_size=257, n_layer=1, n_head=2, n_embd=16, context_length=16))
    names = {"evmodel": str(save_checkpoint(root / "evmodel", model, tokenizer=tok))}
    good = {"context": "a", "choices": ["b", "c"], "label": 0}
    for name, bad in [("mc_good", good), ("mc_nochoices", {"context": "a", "label": 0}),
                      ("mc_label", {**good, "label": 2}), ("mc_nocontext", {"choices": ["b", "c"], "label": 0}),
                      ("mc_badjson", "{oops")]:
        line = bad if isinstance(bad, str) else json.dumps(bad)
        (root / f"{name}.jsonl").write_text(json.dumps(good) + "\n" + line + "\n", encoding="utf-8")
        names[name] = str(root / f"{name}.jsonl")
    pair = {"instruction": "i", "input": "", "output": "a", "model_response": "a"}
    for name, second in [("gen_good", pair), ("gen_nofield", {"output": "b"})]:
        (root / f"{name}.jsonl").write_text(json.dumps(pair) + "\n" + json.dumps(second) + "\n", encoding="utf-8")
        names[name] = str(root / f"{name}.jsonl")
    return names


@pytest.fixture
def work(tmp_path, monkeypatch, hf_inputs, lora_inputs, eval_inputs):
    """A working folder with one input of each kind; returns the names the table's argv use."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCRATCHLLM_DATA_DIR", raising=False)
    monkeypatch.setenv("SCRATCHLLM_OFFLINE", "1")
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "good.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 40, encoding="utf-8")
    (inp / "empty.txt").write_bytes(b"")
    (inp / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (inp / "latin1.txt").write_bytes("café crème, naïve\n".encode("latin-1"))
    (inp / "list.json").write_text("[1, 2, 3]")
    (inp / "shape.json").write_text('{"format": "scratchllm.tokenizer", "version": 1, "kind": "bpe", "merges": 5}')
    (inp / "char_shape.json").write_text('{"format": "scratchllm.tokenizer", "version": 1, "kind": "char"}')
    (inp / "strversion.json").write_text('{"format": "scratchllm.tokenizer", "version": "1", "kind": "char"}')
    (inp / "malformed.toml").write_text("[model\nn_layer = ")
    (inp / "shape.toml").write_text("model = 5\ndata = [1, 2]\n")
    (inp / "tiny.toml").write_text(TINY_RECIPE.format(good=inp / "good.txt"))
    (inp / "blocker").write_text("a file where a folder should be")
    from scratchllm.tokenizer.char import CharTokenizer

    CharTokenizer.train("abc def").save(inp / "tok.json")
    (tmp_path / "readonly").mkdir()
    names = {"missing": str(inp / "missing.txt"), "nodir": str(tmp_path / "no-such-folder"),
             "ro": str(tmp_path / "readonly"), "out": str(tmp_path / "out"), "blocker": str(inp / "blocker")}
    names.update({p.stem if p.suffix != ".toml" else p.stem + "_toml": str(p) for p in inp.iterdir()})
    names.update(hf_inputs)
    names.update(lora_inputs)
    names.update(eval_inputs)
    return names


def read_only(monkeypatch, folder: str) -> None:
    """Make writes under `folder` fail as on a read-only folder (EACCES), for any user, root included."""
    folder = os.path.abspath(folder)

    def inside(path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(folder)
        except TypeError:  # a file descriptor
            return False

    def denied(path):
        return PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def fake_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            raise denied(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise denied(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            raise denied(path)
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def disk_full(monkeypatch) -> None:
    """Make every fsync fail with ENOSPC, as a full disk reports a write it could not keep."""

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)


def tree(root: Path) -> dict[str, int]:
    """Every file under `root` with its size (an empty folder left behind holds no half-written work)."""
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


# (argv, what the error line says, how the destination fails: "" | "ro" | "full", stdin bytes or None)
# Rows marked ENGINE rely on the one non-UTF-8 rule for generate --file/stdin and tokenizer encode
# (cli/inputs.py, helper "engine"), merged separately.
ROWS = [
    # --- data -------------------------------------------------------------------------------------
    (["data", "list", "--bogus"], "unrecognized arguments", "", None),
    (["data", "get", "no-such-dataset"], "unknown dataset", "", None),
    (["data", "get", "the-verdict", "--data-dir", "{nodir}"], "does not exist", "", None),
    (["data", "stats", "{missing}"], "not found", "", None),
    (["data", "stats", "{empty}"], "is empty", "", None),
    (["data", "stats", "{binary}"], "not valid UTF-8", "", None),
    (["data", "stats", "{latin1}"], "not valid UTF-8", "", None),
    (["data", "stats", "{good}", "--data-dir", "{nodir}"], "does not exist", "", None),
    (["data", "stats", "{good}", "--errors", "bogus"], "not one of strict, replace", "", None),
    (["data", "stats", "{good}", "--tokenizer", "{shape}"], "shape.json: BPE tokenizer data is corrupt", "", None),
    (["data", "clean", "{missing}"], "not found", "", None),
    (["data", "clean", "{good}", "--out", "{ro}/c.jsonl"], "permission denied", "ro", None),
    (["data", "clean", "{good}", "--out", "{blocker}/c.jsonl"], "a file stands where a folder is needed", "", None),
    (["data", "clean", "{good}", "--out", "{out}/c.jsonl"], "free some space", "full", None),
    (["data", "clean", "{good}", "--out", "{out}/c.csv"], "name a .jsonl file", "", None),
    (["data", "clean", "{good}", "--near-threshold", "2"], "near_threshold must be in (0, 1]", "", None),
    (["data", "clean", "{good}", "--near-threshold", "inf"], "must be a finite number", "", None),
    (["data", "clean", "{good}", "--shingle-size", "0"], "shingle_size must be at least 1", "", None),
    (["data", "prepare", "--dataset", "{missing}", "--out", "{out}/p"], "not found", "", None),
    (["data", "prepare", "--config", "{binary}"], "is not TOML", "", None),
    (["data", "prepare", "--config", "{malformed_toml}"], "is not valid TOML", "", None),
    (["data", "prepare", "--config", "{shape_toml}"], "unknown setting", "", None),
    (["data", "prepare", "--dataset", "{good}", "--tokenizer", "char", "--out", "{ro}/p"], "permission denied", "ro",
     None),
    (["data", "prepare", "--dataset", "{good}", "--tokenizer", "char", "--out", "{out}/p"], "free some space", "full",
     None),
    (["data", "prepare", "--dataset", "{good}", "--tokenizer", "char", "--out", "{blocker}/p"], "a file stands", "",
     None),
    (["data", "prepare", "--dataset", "{good}", "--val_fraction", "2"], "val_fraction must be in [0, 1)", "", None),
    (["data", "prepare", "--dataset", "{good}", "--vocab_size", "0"], "vocab_size: must be a positive", "", None),
    (["data", "prepare", "--dataset", "{good}", "--near_threshold", "nan"], "must be a finite number", "", None),
    (["data", "prepare", "--dataset", "{good}", "--data-dir", "{nodir}"], "does not exist", "", None),
    # --- tokenizer ------------------------------------------------------------------------------------
    (["tokenizer", "train", "{missing}"], "not found", "", None),
    (["tokenizer", "train", "{empty}"], "is empty", "", None),
    (["tokenizer", "train", "{binary}"], "is not UTF-8 text", "", None),
    (["tokenizer", "train", "{latin1}"], "is not UTF-8 text", "", None),
    (["tokenizer", "train", "{good}", "--vocab-size", "0"], "vocab_size: must be a positive number", "", None),
    (["tokenizer", "train", "{good}", "--vocab-size", "-5"], "vocab_size: must be a positive number", "", None),
    (["tokenizer", "train", "{good}", "--kind", "bogus"], "is not one of", "", None),
    (["tokenizer", "train", "{good}", "--kind", "gpt2"], "not trained here", "", None),
    (["tokenizer", "train", "{good}", "--min-frequency", "0"], "min_frequency: must be at least 1", "", None),
    (["tokenizer", "train", "{good}", "--pattern", "(unclosed"], "not a valid regex", "", None),
    (["tokenizer", "train", "{good}", "--kind", "char", "--out", "{ro}/t.json"], "permission denied", "ro", None),
    (["tokenizer", "train", "{good}", "--kind", "char", "--out", "{blocker}/t.json"], "a file stands", "", None),
    (["tokenizer", "train", "{good}", "--kind", "char", "--out", "{out}/t.json"], "free some space", "full", None),
    (["tokenizer", "encode", "--tokenizer", "{missing}", "x"], "not found", "", None),
    (["tokenizer", "encode", "--tokenizer", "{list}", "x"], "not a scratchllm tokenizer file", "", None),
    (["tokenizer", "encode", "--tokenizer", "{shape}", "x"], "shape.json: BPE tokenizer data is corrupt", "", None),
    (["tokenizer", "encode", "--tokenizer", "{char_shape}", "x"], "wrong content", "", None),
    (["tokenizer", "encode", "--tokenizer", "{strversion}", "x"], "must be the integer 1", "", None),
    (["tokenizer", "encode", "--tokenizer", "{binary}", "x"], "is not valid JSON", "", None),
    (["tokenizer", "encode", "--tokenizer", "{empty}", "x"], "is not valid JSON", "", None),
    (["tokenizer", "encode", "--tokenizer", "{tok}", "--file", "{missing}"], "not found", "", None),
    (["tokenizer", "encode", "--tokenizer", "{tok}", "--file", "{latin1}"], "UTF-8", "", None),  # ENGINE
    (["tokenizer", "encode", "--tokenizer", "{tok}"], "UTF-8", "", b"caf\xe9"),  # ENGINE
    (["tokenizer", "encode", "--tokenizer", "gpt2", "--data-dir", "{nodir}", "x"], "does not exist", "", None),
    (["tokenizer", "encode", "--tokenizer", "{tok}", "a<|endoftext|>"], "not in this character vocabulary", "",
     None),
    (["tokenizer", "decode", "--tokenizer", "{tok}", "1", "x2"], "is not a token id", "", None),
    (["tokenizer", "decode", "--tokenizer", "{tok}", "99999"], "outside this tokenizer's vocabulary", "", None),
    (["tokenizer", "decode", "--tokenizer", "{char_shape}", "1"], "wrong content", "", None),
    (["tokenizer", "decode", "--tokenizer", "{tok}", "--file", "{latin1}"], "UTF-8", "", None),
    (["tokenizer", "inspect", "{missing}"], "not found", "", None),
    (["tokenizer", "inspect", "{empty}"], "is empty", "", None),
    (["tokenizer", "inspect", "--tokenizer", "{strversion}"], "must be the integer 1", "", None),
    # --- model --------------------------------------------------------------------------------------
    (["model", "info", "no-such-preset"], "unknown model preset", "", None),
    (["model", "info"], "name a preset", "", None),
    (["model", "info", "--config", "{missing}"], "not found", "", None),
    (["model", "info", "--config", "{binary}"], "is not TOML", "", None),
    (["model", "info", "--config", "{malformed_toml}"], "is not valid TOML", "", None),
    (["model", "info", "--config", "{shape_toml}"], "unknown setting", "", None),
    (["model", "info", "tiny", "--n_layer", "0"], "n_layer must be a positive integer", "", None),
    (["model", "info", "tiny", "--dropout", "inf"], "must be a finite number", "", None),
    (["model", "info", "tiny", "--seq-len", "0"], "--seq-len must be a positive integer", "", None),
    (["model", "presets", "--bogus"], "unrecognized arguments", "", None),
    # --- generate -------------------------------------------------------------------------------------
    (["generate", "--model", "{missing}", "hi"], "neither a folder nor a preset", "", None),
    (["generate", "--model", "{binary}", "hi"], "checkpoint", "", None),
    (["generate", "--model", "tiny", "--file", "{missing}"], "not found", "", None),
    (["generate", "--model", "tiny", "--file", "{latin1}"], "UTF-8", "", None),  # ENGINE
    (["generate", "--model", "tiny", "--file", "{binary}"], "UTF-8", "", None),  # ENGINE
    (["generate", "--model", "tiny"], "UTF-8", "", b"caf\xe9"),  # ENGINE
    (["generate", "--model", "tiny", "hi", "--temperature", "inf"], "must be a finite number", "", None),
    (["generate", "--model", "tiny", "hi", "--temperature", "-1"], "temperature must be >= 0", "", None),
    (["generate", "--model", "tiny", "hi", "--top-p", "2"], "top_p must be in (0, 1]", "", None),
    (["generate", "--model", "tiny", "hi", "--top-k", "abc"], "expected an integer", "", None),
    (["generate", "--model", "tiny", "hi", "--stop", ""], "stop string is empty", "", None),
    (["generate", "--model", "tiny", "hi", "--max-new-tokens", "-1"], "max_new_tokens must be >= 0", "", None),
    (["generate", "--model", "tiny", "hi", "--device", "mps"], "mps", "", None),
    (["generate", "--model", "tiny", "hi", "--device", "tpu9"], "device", "", None),
    (["generate", "--model", "tiny", "hi", "--data-dir", "{nodir}"], "does not exist", "", None),
    (["chat", "--model", "{missing}"], "neither a folder nor a preset", "", None),
    (["chat", "--model", "{binary}"], "checkpoint", "", None),
    (["chat", "--model", "tiny", "--top-p", "2"], "top_p must be in (0, 1]", "", None),
    # --- train ---------------------------------------------------------------------------------------
    (["train"], "name a recipe", "", None),
    (["train", "--config", "{missing}"], "not found", "", None),
    (["train", "--config", "{binary}"], "is not TOML", "", None),
    (["train", "--config", "{malformed_toml}"], "is not valid TOML", "", None),
    (["train", "--config", "{shape_toml}"], "expected a table of settings", "", None),
    (["train", "--preset", "no-such-recipe"], "unknown preset", "", None),
    (["train", "--config", "{tiny_toml}", "--lr", "inf"], "train.lr must be a finite number", "", None),
    (["train", "--config", "{tiny_toml}", "--lr", "-1"], "train.lr must be positive", "", None),
    (["train", "--config", "{tiny_toml}", "--n_layer", "0"], "n_layer must be a positive integer", "", None),
    (["train", "--config", "{tiny_toml}", "--runs-dir", "{blocker}/runs"], "not writable", "", None),
    (["train", "--config", "{tiny_toml}", "--data.data_dir", "{nodir}"], "does not exist", "", None),
    (["train", "--config", "{tiny_toml}", "--data.dataset", "{missing}"], "not found", "", None),
    (["train", "--config", "{tiny_toml}", "--data.dataset", "{latin1}"], "not valid UTF-8", "", None),
    (["train", "--config", "{tiny_toml}", "--runs_dir", "{ro}/runs"], "writ", "ro", None),
    (["train", "--config", "{tiny_toml}", "--init-from", "{nodir}"], "does not exist", "", None),
    (["train", "--config", "{tiny_toml}", "--init-from", "{hf_bert}"], "architecture (model_type 'bert')", "", None),
    (["train", "--config", "{tiny_toml}", "--init-from", "{hf_truncated}"], "corrupted or truncated", "", None),
    (["train", "--config", "{tiny_toml}", "--nproc", "2"], "needs a strategy for the processes", "", None),
    (["train", "--config", "{tiny_toml}", "--nproc", "0", "--train.strategy", "ddp"], "--nproc must be at least 1",
     "", None),
    (["train", "--config", "{tiny_toml}", "--train.strategy", "bogus"], "train.strategy 'bogus' is unknown", "", None),
    (["train", "--config", "{tiny_toml}", "--train.strategy", "fsdp", "--optimizer", "muon"], "use train.strategy ddp",
     "", None),
    # --- sweep ------------------------------------------------------------------------------------------
    (["sweep", "--config", "{tiny_toml}", "--space", "{missing}"], "not found", "", None),
    (["sweep", "--config", "{tiny_toml}", "--space", "{malformed_toml}"], "is not valid TOML", "", None),
    (["sweep", "--config", "{tiny_toml}", "--space", "{shape_toml}"], "unknown table [data]", "", None),
    (["sweep", "--space", "{tiny_toml}"], "name the recipe", "", None),
    # --- import and export (Hugging Face folders: the hf_inputs fixture) -------------------------------
    (["import", "{nodir}", "--out", "{out}"], "does not exist", "", None),
    (["import", "{hf_noconfig}", "--out", "{out}"], "has no config.json", "", None),
    (["import", "{hf_bert}", "--out", "{out}"], "'bert'); scratchllm reads gpt2 (every GPT-2 size), llama",
     "", None),
    (["import", "{hf_truncated}", "--out", "{out}"], "model.safetensors is corrupted or truncated", "", None),
    (["import", "{hf_pickle}", "--out", "{out}"], "pytorch_model.bin is refused by torch.load(weights_only=True)",
     "", None),
    (["import", "{hf_missing}", "--out", "{out}"], "no 'h.0.mlp.c_fc.weight'", "", None),
    (["import", "{hf_extra}", "--out", "{out}"], "'h.0.attn.extra' has no place", "", None),
    (["import", "{hf_shape}", "--out", "{out}"], "tensor 'pos_emb.weight' has shape [8, 16]", "", None),
    (["import", "{hf_vocab}", "--out", "{out}"], "257 tokens but", "", None),
    (["import", "{hf_good}", "--out", "{tok}"], "already exists", "", None),
    (["import", "{hf_good}", "--out", "{ro}/m"], "permission denied", "ro", None),
    (["import", "{hf_good}", "--out", "{blocker}/m"], "a file stands", "", None),
    (["import", "{hf_good}", "--out", "{out}"], "free some space", "full", None),
    (["import", "{hf_good}"], "required: --out", "", None),
    (["export", "hf", "{nodir}", "--out", "{out}"], "does not exist", "", None),
    (["export", "hf", "{hf_bert}", "--out", "{out}"], "architecture (model_type 'bert')", "", None),
    (["export", "hf", "{hf_pickle}", "--out", "{out}"], "weights_only", "", None),
    (["export", "hf", "{hf_good}", "--out", "{tok}"], "already exists", "", None),
    (["export", "hf", "{hf_good}", "--out", "{ro}/m"], "permission denied", "ro", None),
    (["export", "hf", "{hf_good}", "--out", "{blocker}/m"], "a file stands", "", None),
    (["export", "hf", "{hf_good}", "--out", "{out}"], "free some space", "full", None),
    (["export", "bogus", "{hf_good}"], "invalid choice", "", None),
    (["generate", "--model", "{hf_truncated}", "hi"], "corrupted or truncated", "", None),
    (["generate", "--model", "{hf_noconfig}", "hi"], "has no config.json", "", None),
    # --- lora (LoRA folders: the lora_inputs fixture) ----------------------------------------------------
    (["lora", "bogus"], "invalid choice", "", None),
    (["lora", "extract", "{nodir}", "--out", "{out}"], "does not exist", "", None),
    (["lora", "extract", "{plain_ck}", "--out", "{out}"], "has no LoRA adapters", "", None),
    (["lora", "extract", "{lora_run}", "--out", "{out}"], "records no base model (init_from); name it with --base",
     "", None),
    (["lora", "extract", "{lora_run}", "--out", "{tok}", "--base", "{plain_ck}"], "already exists", "", None),
    (["lora", "extract", "{lora_run}", "--out", "{ro}/a", "--base", "{plain_ck}"], "permission denied", "ro", None),
    (["lora", "extract", "{lora_run}", "--out", "{blocker}/a", "--base", "{plain_ck}"], "a file stands", "", None),
    (["lora", "extract", "{lora_run}", "--out", "{out}", "--base", "{plain_ck}"], "free some space", "full", None),
    (["lora", "extract", "{lora_run}"], "required: --out", "", None),
    (["lora", "merge", "{plain_ck}", "--out", "{out}"], "has no LoRA adapters to merge", "", None),
    (["lora", "merge", "{lora_run}", "--out", "{out}", "--base", "{plain_ck}"],
     "--base is for a folder of adapters alone", "", None),
    (["lora", "merge", "{adapters_nobase}", "--out", "{out}"], "does not exist; give the model they were trained on",
     "", None),
    (["lora", "merge", "{adapters_truncated}", "--out", "{out}"], "adapters.safetensors is truncated", "", None),
    (["lora", "merge", "{adapters_edited}", "--out", "{out}"], "adapters.json is truncated or corrupted", "",
     None),
    (["lora", "merge", "{adapters}", "--out", "{out}", "--base", "{nodir}"], "does not exist", "", None),
    (["lora", "merge", "{adapters}", "--out", "{ro}/m"], "permission denied", "ro", None),
    (["lora", "merge", "{adapters}", "--out", "{out}"], "free some space", "full", None),
    (["generate", "--model", "{adapters_truncated}", "hi"], "adapters.safetensors is truncated", "", None),
    (["export", "hf", "{adapters_nobase}", "--out", "{out}"], "does not exist", "", None),
    # --- eval (a tiny model with a byte tokenizer and multiple-choice files: the eval_inputs fixture) ------
    (["eval", "bogus"], "invalid choice", "", None),
    (["eval", "perplexity", "-m", "{nodir}", "hi"], "does not exist", "", None),
    (["eval", "perplexity", "-m", "{binary}", "hi"], "checkpoint", "", None),
    (["eval", "perplexity", "-m", "{plain_ck}", "hi"], "has no tokenizer", "", None),
    (["eval", "perplexity", "-m", "{evmodel}", ""], "is empty", "", None),
    (["eval", "perplexity", "-m", "{evmodel}", "--file", "{empty}"], "is empty", "", None),
    (["eval", "perplexity", "-m", "{evmodel}", "--file", "{missing}"], "not found", "", None),
    (["eval", "perplexity", "-m", "{evmodel}", "--file", "{latin1}"], "UTF-8", "", None),
    (["eval", "perplexity", "-m", "{evmodel}"], "is empty", "", b""),
    (["eval", "perplexity", "-m", "{evmodel}", "hi", "--file", "{good}"], "give one text to score", "", None),
    (["eval", "perplexity", "-m", "{evmodel}", "hi", "--stride", "0"], "--stride must be >= 1", "", None),
    (["eval", "perplexity", "-m", "{evmodel}", "hi", "--stride", "17"], "between 1 and the model's context (16)",
     "", None),
    (["eval", "perplexity", "-m", "{evmodel}", "hi", "--batch-size", "0"], "--batch-size must be >= 1", "", None),
    (["eval", "perplexity", "-m", "{evmodel}", "--split", "val"], "--split needs --dataset", "", None),
    (["eval", "perplexity", "-m", "{evmodel}", "--dataset", "no-such-dataset"], "unknown dataset", "", None),
    (["eval", "perplexity", "-m", "{evmodel}", "--dataset", "{good}", "--split", "val"],
     "no model here was trained on", "", None),
    (["eval", "choice", "-m", "{evmodel}", "{missing}"], "not found", "", None),
    (["eval", "choice", "-m", "{evmodel}", "{mc_nochoices}"], 'mc_nochoices.jsonl:2: no "choices" field', "", None),
    (["eval", "choice", "-m", "{evmodel}", "{mc_nocontext}"], 'mc_nocontext.jsonl:2: no "context"', "", None),
    (["eval", "choice", "-m", "{evmodel}", "{mc_label}"], "mc_label.jsonl:2: \"label\" 2 is out of range", "", None),
    (["eval", "choice", "-m", "{evmodel}", "{mc_badjson}"], "mc_badjson.jsonl:2: not valid JSON", "", None),
    (["eval", "choice", "-m", "{evmodel}", "{latin1}"], "not valid UTF-8", "", None),
    (["eval", "choice", "-m", "{nodir}", "{mc_good}"], "does not exist", "", None),
    (["eval", "compare", "{evmodel}", "--out", "{out}"], "give the evaluations to compare on", "", None),
    (["eval", "compare", "{evmodel}", "--file", "{good}", "--out", "{blocker}"], "is a file", "", None),
    (["eval", "compare", "{evmodel}", "--choices", "{mc_label}", "--out", "{out}"], "out of range", "", None),
    (["eval", "compare", "{evmodel}", "--choices", "{mc_good}", "--out", "{ro}/r"], "permission denied", "ro", None),
    (["eval", "compare", "{evmodel}", "--choices", "{mc_good}"], "required: --out", "", None),
    (["eval", "generation", "{missing}"], "not found", "", None),
    (["eval", "generation", "{latin1}"], "not valid UTF-8", "", None),
    (["eval", "generation", "{gen_nofield}"], "gen_nofield.jsonl line 2 has no 'model_response' field", "", None),
    (["eval", "generation", "{mc_badjson}"], "mc_badjson.jsonl line 2 is not valid JSON", "", None),
    (["eval", "generation", "{gen_good}", "-m", "{nodir}"], "does not exist", "", None),
    (["eval", "generation", "{gen_good}", "-m", "{evmodel}", "--max-new-tokens", "0"], "--max-new-tokens must be",
     "", None),
    (["eval", "generation", "{gen_good}", "-m", "{evmodel}", "--out", "{ro}/r.json"], "not writable", "ro", None),
    (["eval", "judge", "{gen_nofield}"], "gen_nofield.jsonl line 2 has no 'model_response' field", "", None),
    (["eval", "judge", "{gen_good}", "--judge-url", "localhost:11434"], "is not an http(s) URL", "", None),
    (["eval", "judge", "{gen_good}", "--timeout", "0"], "--timeout must be > 0", "", None),
    (["eval", "judge", "{gen_good}", "--prompt", "{good}"], "has no {response} placeholder", "", None),
    (["eval", "judge", "{gen_good}", "--judge-url", "http://127.0.0.1:9/v1", "--retries", "0", "--out", "{out}"],
     "cannot connect", "", None),
    (["eval", "judge", "{gen_good}", "--out", "{ro}/j"], "permission denied", "ro", None),
    # --- quantize (the lora_inputs fixture's plain checkpoint: 16 dims) --------------------------------------
    (["quantize", "{plain_ck}", "--out", "{out}"], "required: --bits", "", None),
    (["quantize", "{plain_ck}", "--bits", "3", "--out", "{out}"], "--bits 3 is not supported; use 8", "", None),
    (["quantize", "{plain_ck}", "--bits", "4", "--out", "{out}"], "--group-size 32 does not divide", "", None),
    (["quantize", "{plain_ck}", "--bits", "4", "--group-size", "6", "--out", "{out}"],
     "--group-size 6 does not divide blocks.0.attn.qkv's 16 inputs", "", None),
    (["quantize", "{plain_ck}", "--bits", "4", "--group-size", "-2", "--out", "{out}"],
     "--group-size must be an even number", "", None),
    (["quantize", "{plain_ck}", "--bits", "8", "--group-size", "8", "--out", "{out}"], "--group-size is for --bits 4",
     "", None),
    (["quantize", "{plain_ck}", "--bits", "8", "--asymmetric", "--out", "{out}"], "--asymmetric is for --bits 4", "",
     None),
    (["quantize", "{plain_ck}", "--bits", "8", "--out", "{tok}"], "already exists", "", None),
    (["quantize", "{nodir}", "--bits", "8", "--out", "{out}"], "does not exist", "", None),
    (["quantize", "{hf_truncated}", "--bits", "8", "--out", "{out}"], "corrupted or truncated", "", None),
    (["quantize", "{quantized_ck}", "--bits", "8", "--out", "{out}"], "is quantized already", "", None),
    (["quantize", "{plain_ck}", "--bits", "8", "--out", "{ro}/q"], "permission denied", "ro", None),
    (["quantize", "{plain_ck}", "--bits", "8", "--out", "{blocker}/q"], "a file stands", "", None),
    (["quantize", "{plain_ck}", "--bits", "8", "--out", "{out}"], "free some space", "full", None),
    (["export", "hf", "{quantized_ck}", "--out", "{out}"], "is a quantized model, which export does not write", "",
     None),
    # --- inspect (the eval_inputs fixture's model: byte-level tokenizer, 1 layer, context 16) ----------------
    (["inspect", "bogus"], "invalid choice", "", None),
    (["inspect", "attention", "-m", "{nodir}", "hi"], "neither a folder nor a preset", "", None),
    (["inspect", "attention", "-m", "{plain_ck}", "hi"], "has no tokenizer", "", None),
    (["inspect", "attention", "-m", "{evmodel}", ""], "the prompt is empty", "", None),
    (["inspect", "attention", "-m", "{evmodel}", "a" * 17], "17 tokens, longer than the model's context of 16", "",
     None),
    (["inspect", "attention", "-m", "{evmodel}", "hi", "--layers", "1"], "the model has layers 0 to 0", "", None),
    (["inspect", "attention", "-m", "{evmodel}", "hi", "--layers", "x"], "give layer numbers", "", None),
    (["inspect", "attention", "-m", "{evmodel}", "hi", "--out", "{out}/a.jpg"], "name a .png file", "", None),
    (["inspect", "attention", "-m", "{evmodel}", "hi", "--out", "{ro}/a.png"], "permission denied", "ro", None),
    (["inspect", "attention", "-m", "{evmodel}", "hi", "--out", "{blocker}/a.png"], "a file stands", "", None),
    (["inspect", "next", "-m", "{evmodel}", "hi", "--top-p", "2"], "top_p must be in (0, 1]", "", None),
    (["inspect", "next", "-m", "{evmodel}", "hi", "--temperature", "-1"], "temperature must be >= 0", "", None),
    (["inspect", "next", "-m", "{evmodel}", "hi", "--temperature", "nan"], "must be a finite number", "", None),
    (["inspect", "next", "-m", "{evmodel}", "hi", "--show", "0"], "--show must be at least 1", "", None),
    (["inspect", "next", "-m", "{evmodel}", ""], "the prompt is empty", "", None),
    (["inspect", "next", "-m", "{evmodel}", "b" * 20], "longer than the model's context of 16", "", None),
    (["inspect", "embeddings", "-m", "{evmodel}", "a"], "at least two words", "", None),
    (["inspect", "embeddings", "-m", "{evmodel}", "a", "hello"], "'hello' is 5 tokens", "", None),
    (["inspect", "embeddings", "-m", "{evmodel}", "a", "b", "a"], "are the same token", "", None),
    (["inspect", "embeddings", "-m", "{evmodel}", "a", ""], "a word is empty", "", None),
    (["inspect", "embeddings", "-m", "{evmodel}", "a", "b", "--out", "{blocker}/e.png"], "a file stands", "", None),
    (["inspect", "tokens", ""], "the text is empty", "", None),
    (["inspect", "tokens", "hi", "--tokenizer", "{missing}"], "not gpt2, char, bytes", "", None),
    (["inspect", "tokens", "hi", "--tokenizer", "{shape}"], "BPE tokenizer data is corrupt", "", None),
    (["inspect", "tokens", "hi", "--tokenizer", "gpt2", "--data-dir", "{nodir}"], "does not exist", "", None),
    (["inspect", "tokens", "xyz", "--tokenizer", "{tok}"], "not in this character vocabulary", "", None),
    (["inspect", "tokens", "hi", "--tokenizer", "{nodir}"], "not gpt2, char, bytes", "", None),
    (["inspect", "tokens", "hi", "--tokenizer", "{plain_ck}"], "tokenizer file", "", None),
    (["inspect", "tokens", "hi", "--color", "sometimes"], "invalid choice", "", None),
    # --- prune (the lora_inputs fixture's plain checkpoint: 16 dims, 2 heads) ----------------------------------
    (["prune", "{plain_ck}", "--out", "{out}"], "required: --sparsity", "", None),
    (["prune", "{plain_ck}", "--sparsity", "1", "--out", "{out}"], "--sparsity must be in [0, 1)", "", None),
    (["prune", "{plain_ck}", "--sparsity", "-0.1", "--out", "{out}"], "--sparsity must be in [0, 1)", "", None),
    (["prune", "{plain_ck}", "--sparsity", "nan", "--out", "{out}"], "--sparsity must be in [0, 1)", "", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--structured", "layers", "--out", "{out}"],
     "--structured 'layers' is not known; use heads or neurons", "", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--scope", "model", "--out", "{out}"], "--scope 'model' is not known",
     "", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--structured", "heads", "--scope", "global", "--out", "{out}"],
     "--scope global is for unstructured pruning", "", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--lr", "1e-3", "--out", "{out}"], "add --recover-steps N", "", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--recover-steps", "-1", "--out", "{out}"],
     "--recover-steps must be 0 or more", "", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--recover-steps", "2", "--out", "{out}"],
     "--recover-steps needs training text", "", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--recover-steps", "2", "--data", "{tok}", "--out", "{out}"],
     "is not a prepared data folder", "", None),
    (["prune", "{quantized_ck}", "--sparsity", "0.5", "--out", "{out}"], "is quantized; prune the model it was made",
     "", None),
    (["prune", "{nodir}", "--sparsity", "0.5", "--out", "{out}"], "does not exist", "", None),
    (["prune", "{hf_truncated}", "--sparsity", "0.5", "--out", "{out}"], "corrupted or truncated", "", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--out", "{tok}"], "already exists", "", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--out", "{ro}/p"], "permission denied", "ro", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--out", "{blocker}/p"], "a file stands", "", None),
    (["prune", "{plain_ck}", "--sparsity", "0.5", "--structured", "heads", "--out", "{out}"], "free some space",
     "full", None),
    # --- export gguf (evmodel: a tiny GPT-2-shaped checkpoint with a byte-level BPE) --------------------------
    (["export", "gguf", "{evmodel}", "--out", "{out}.gguf", "--type", "q5_1"], "unknown --type 'q5_1'", "", None),
    (["export", "gguf", "{quantized_ck}", "--out", "{out}.gguf"], "is a quantized model, which export does not write",
     "", None),
    (["export", "gguf", "{plain_ck}", "--out", "{out}.gguf"], "has no tokenizer", "", None),
    (["export", "gguf", "{nodir}", "--out", "{out}.gguf"], "does not exist", "", None),
    (["export", "gguf", "{evmodel}", "--out", "{ro}/m.gguf"], "permission denied", "ro", None),
    (["export", "gguf", "{evmodel}", "--out", "{blocker}/m.gguf"], "a file stands", "", None),
    (["export", "gguf", "{evmodel}", "--out", "{out}.gguf"], "free some space", "full", None),
    (["export", "gguf", "{evmodel}"], "required: --out", "", None),
    # --- serve (settings are checked before any model is loaded) -------------------------------------------
    (["serve", "-m", "{nodir}"], "does not exist", "", None),
    (["serve", "-m", "{plain_ck}"], "has no tokenizer", "", None),
    (["serve", "-m", "{evmodel}", "-m", "{evmodel}"], "two models are named", "", None),
    (["serve", "-m", "{evmodel}", "--port", "70000"], "port must be in 0..65535", "", None),
    (["serve", "-m", "{evmodel}", "--max-batch", "0"], "max_batch must be >= 1", "", None),
    (["serve", "-m", "{evmodel}", "--max-n", "20"], "max_n (20) must be <= max_batch (16)", "", None),
    (["serve", "-m", "{evmodel}", "--request-timeout", "-1"], "request_timeout must be > 0", "", None),
    (["serve", "-m", "{evmodel}", "--api-key", " "], "api_key is empty", "", None),
    (["serve", "-m", "{evmodel}", "--feedback", " "], "feedback is empty", "", None),
    (["serve", "-m", "{evmodel}", "--feedback", "{nodir}/feedback.jsonl"], "does not exist; create it", "", None),
    (["serve", "-m", "{evmodel}", "--feedback", "{ro}"], "is a folder", "", None),
]


def _row_id(row) -> str:
    argv, _, how, stdin = row
    words = [a.strip("{}") for a in argv if not a.startswith("-") or a in ("--out",)][:4]
    flags = [a.lstrip("-") for a in argv if a.startswith("--") and a != "--out"]
    return "-".join(words + flags[:2] + ([how] if how else []) + (["stdin"] if stdin is not None else []))


@pytest.mark.parametrize("row", ROWS, ids=[_row_id(r) for r in ROWS])
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(row, work, tmp_path, capsys, monkeypatch):
    argv, message, how, stdin = row
    argv = [a.format(**work) for a in argv]
    if stdin is not None:
        fake = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        fake.isatty = lambda: False
        monkeypatch.setattr(sys, "stdin", fake)
    before = tree(tmp_path)
    with monkeypatch.context() as m:
        if how == "ro":
            read_only(m, work["ro"])
        elif how == "full":
            disk_full(m)
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
        except BaseException:
            pytest.fail(f"{argv} raised instead of one error line:\n{traceback.format_exc()}")
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2, (argv, rc, err)
    assert len(errors) == 1, (argv, err)
    assert message in errors[0], (argv, errors[0])
    assert "Traceback" not in err + out
    assert tree(tmp_path) == before, f"{argv} left files behind"


# --- rules every command shares ------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [[], ["data"], ["tokenizer"], ["model"], ["export"], ["lora"], ["eval"], ["finetune"],
                                  ["inspect"]])
def test_a_missing_subcommand_prints_help_and_exits_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: scratchllm") and "Traceback" not in err


def test_a_warning_is_one_line(monkeypatch, capsys):
    import warnings

    import scratchllm.cli.model as model_cli

    def presets(args):
        warnings.warn("something to know\nover two lines", UserWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(model_cli, "cmd_presets", presets)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["model", "presets"]) == 0
    err = capsys.readouterr().err
    assert err == "warning: something to know over two lines\n"


@pytest.mark.parametrize("raised, code, line", [(KeyboardInterrupt(), 130, "interrupted"),
                                               ("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_an_abort_exits_with_its_signals_code(raised, code, line, monkeypatch, capsys):
    """Ctrl-C is 130; a second stop signal during training (errors.Aborted) exits 128 + that signal."""
    import signal

    import scratchllm.cli.model as model_cli
    from scratchllm.errors import Aborted

    error = Aborted(getattr(signal, raised)) if isinstance(raised, str) else raised

    def presets(args):
        raise error

    monkeypatch.setattr(model_cli, "cmd_presets", presets)
    assert main(["model", "presets"]) == code
    assert capsys.readouterr().err == line + "\n"


def test_a_closed_pipe_ends_quietly(tmp_path):
    from scratchllm.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train("ab").save(tmp_path / "t.json")
    big = tmp_path / "big.txt"
    big.write_text("ab" * 500_000)
    code = "import sys; from scratchllm.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, "tokenizer", "encode", "--tokenizer", str(tok), "--file",
                             str(big)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout.read(10) == b"0 1 0 1 0 "
    proc.stdout.close()  # the reader goes away, as `| head` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


def test_written_files_respect_the_umask(tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_text("one document\n")
    old = os.umask(0o027)
    try:
        assert main(["tokenizer", "train", str(good), "--kind", "char", "--out", str(tmp_path / "t.json")]) == 0
        assert main(["data", "clean", str(good), "--out", str(tmp_path / "c.jsonl")]) == 0
        assert main(["data", "prepare", "--dataset", str(good), "--tokenizer", "char", "--val_fraction", "0",
                     "--dedup", "false", "--near_dedup", "false", "--out", str(tmp_path / "prep"), "--quiet"]) == 0
        os.umask(0o002)
        assert main(["data", "clean", str(good), "--out", str(tmp_path / "d.txt")]) == 0
    finally:
        os.umask(old)
    for name in ("train.bin", "meta.json", "tokenizer.scratchllm.json"):
        assert (tmp_path / "prep" / name).stat().st_mode & 0o777 == 0o640, name
    assert (tmp_path / "t.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "c.jsonl").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d.txt").stat().st_mode & 0o777 == 0o664


def test_clean_out_follows_the_extension_and_reads_back(tmp_path, capsys):
    import json

    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["first doc\nline two", "second doc"]))
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "c.jsonl")]) == 0
    assert [json.loads(x)["text"] for x in (tmp_path / "c.jsonl").read_text().splitlines()] == \
        ["first doc\nline two", "second doc"]
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "c.txt"), "--separator", "\\n\\n"]) == 0
    assert (tmp_path / "c.txt").read_text() == "first doc\nline two\n\nsecond doc"
    capsys.readouterr()
    assert main(["data", "stats", str(tmp_path / "c.txt"), "--separator", "\\n\\n"]) == 0
    assert "documents          2" in capsys.readouterr().out
    assert main(["data", "clean", str(src), "--out", str(tmp_path / "d.txt")]) == 2  # two documents, no separator
    assert "need --separator" in capsys.readouterr().err and not (tmp_path / "d.txt").exists()


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv, config, flag", [
    (["generate"], "SampleConfig", "--{dashed}"),
    (["data", "prepare"], "DataConfig", "--{name}"),
    (["model", "info"], "ModelConfig", "--{name}"),
    (["train"], "TrainConfig", "--train.{name}"),
    (["train"], "ModelConfig", "--model.{name}"),
    (["train"], "DataConfig", "--data.{name}"),
    (["train"], "SampleConfig", "--sample.{name}"),
    (["train"], "TokenizerConfig", "--data.tokenizer.{name}"),
])
def test_help_lists_each_field_with_its_type_default_and_comment(argv, config, flag, capsys):
    import scratchllm.config.data
    import scratchllm.config.model
    import scratchllm.config.sample
    import scratchllm.config.tokenizer
    import scratchllm.config.train
    from scratchllm.config.base import describe_type, field_docs

    cls = next(getattr(m, config) for m in (scratchllm.config.data, scratchllm.config.model, scratchllm.config.sample,
                                            scratchllm.config.tokenizer, scratchllm.config.train) if hasattr(m, config))
    text = _help(argv, capsys)
    docs = field_docs(cls)
    types_ = cls.field_types()
    for f in dataclasses.fields(cls):
        tp = types_[f.name]
        if dataclasses.is_dataclass(tp):  # a nested table: its comment is under the table's heading
            assert "".join(docs[f.name].split()) in "".join(text.split()), f.name
            continue
        name = flag.format(name=f.name, dashed=f.name.replace("_", "-"))
        assert text.count(f"{name} ") + text.count(f"{name},") >= 1, name
        assert "".join(describe_type(tp).replace(",...", "").split()) in "".join(text.split()), name
        if docs.get(f.name):  # compared without whitespace: the help wraps lines (argparse also at hyphens)
            assert "".join(docs[f.name].split()) in "".join(text.split()), name


def test_other_spellings_work_and_only_one_is_listed(tmp_path, capsys):
    from scratchllm.tokenizer import load

    good = tmp_path / "good.txt"
    good.write_text("a b c d e f g\n")
    assert main(["tokenizer", "train", str(good), "--kind", "char", "--special-token", "<|x|>", "--special_tokens",
                 "<|y|>", "--out", str(tmp_path / "t.json")]) == 0
    assert set(load(tmp_path / "t.json").special_tokens) == {"<|x|>", "<|y|>"}
    assert main(["data", "clean", str(good), "--no-gutenberg", "--near_threshold", "0.5"]) == 0
    for argv, listed, hidden in [(["tokenizer", "train"], "--special-tokens", "--special-token "),
                                 (["data", "clean"], "--no-strip-gutenberg", "--no-gutenberg"),
                                 (["train"], "--runs-dir", "--runs_dir "), (["generate"], "--top-k", "--top_k")]:
        text = _help(argv, capsys)
        assert listed in text and hidden not in text, argv
