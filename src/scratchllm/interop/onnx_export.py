"""Our GPT as an ONNX graph, and greedy generation through onnxruntime with its KV cache.

Named `onnx_export` so that it never shadows the `onnx` package.

Two graphs, both with dynamic batch and sequence axes, in float32:
- without cache: `input_ids` (B, T) int64 -> `logits` (B, T, vocab).
- with cache (`kv_cache=True`): also `past_keys`, `past_values` (n_layer, B, kv_heads, P, head_dim) in,
  and `present_keys`, `present_values` (n_layer, B, kv_heads, P + T, head_dim) out. P may be 0
  (the prompt), and the caller feeds the present tensors back as the next step's past.

Our `model.KVCache` is a preallocated buffer written in place, which a graph cannot hold between
calls; `ExplicitCache` is a stand-in with the same two methods the model calls (`update`,
`advance`) that concatenates explicit past tensors with the new ones instead. The model itself is
unchanged: the export traces its ordinary `forward(idx, kv_cache=..., attention_mask=...)`. The
graph passes an all-true attention mask, so that the model's general masked path (queries at
positions P .. P+T-1 over P+T keys) is the one traced, valid for every P and T.

The exporter is torch's `torch.onnx.export(dynamo=True)` (torch.export, then onnxscript). The older
TorchScript exporter (dynamo=False) has no translation of `aten::rms_norm` (our RMSNorm) and is
deprecated, so it is not used.

`onnx_generate` is the greedy loop on the cached graph: the engine's (`generate.engine`) rules for
the cache length and the window that slides when the context is full, so it gives the engine's
tokens. Not here: sampling beyond argmax, batched prompts (the graph takes them; the loop does not).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import UserError
from scratchllm.files import fsync_dir
from scratchllm.runtime import eval_mode

INSTALL_HINT = "pip install 'scratchllm[export]'"
INPUTS = ("input_ids", "past_keys", "past_values")
OUTPUTS = ("logits", "present_keys", "present_values")
# Opset 18: the one the dynamo exporter's translations are written for (others are converted from it).
OPSET = 18
# Above this many bytes of weights the tensors go to FILE.data beside FILE: a protobuf cannot exceed 2 GiB.
EXTERNAL_DATA_BYTES = 1 << 30


def require_onnx() -> None:
    """Raise one clear error if the packages the exporter needs (onnx, onnxscript) are missing."""
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            raise UserError(f"ONNX export needs the {name} package, which is not installed: {INSTALL_HINT}") from None


def require_onnxruntime():
    """The onnxruntime module, or one clear error saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"running an ONNX model needs onnxruntime, which is not installed: {INSTALL_HINT}") from None
    return onnxruntime


class ExplicitCache:
    """A KV cache the model can use inside a graph: past keys/values (n_layer, B, kv_heads, P, head_dim)
    come in as tensors; `update` returns them joined with the new ones and keeps those as `present`."""

    def __init__(self, past_keys: torch.Tensor, past_values: torch.Tensor) -> None:
        self.past_keys, self.past_values = past_keys, past_values
        self.pos = past_keys.shape[3]  # positions already seen: the new tokens start here
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.cat([self.past_keys[layer], k], dim=2)  # (B, kv_heads, P + T, head_dim)
        v = torch.cat([self.past_values[layer], v], dim=2)
        self.keys.append(k)
        self.values.append(v)
        return k, v

    def advance(self, n: int) -> None:  # the next call gets its past from the caller
        pass

    def present(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.keys), torch.stack(self.values)  # (n_layer, B, kv_heads, P + T, head_dim)


class OnnxGPT(nn.Module):
    """The graph's signature around the model: input_ids [, past_keys, past_values] -> logits [, presents]."""

    def __init__(self, model: nn.Module, kv_cache: bool) -> None:
        super().__init__()
        self.model, self.kv_cache = model, kv_cache

    def forward(self, input_ids: torch.Tensor, past_keys: torch.Tensor | None = None,
                past_values: torch.Tensor | None = None):
        b, t = input_ids.shape
        if not self.kv_cache:
            mask = torch.ones(b, t, dtype=torch.bool, device=input_ids.device)  # (B, T): the general masked path
            return self.model(input_ids, attention_mask=mask)
        cache = ExplicitCache(past_keys, past_values)
        mask = torch.ones(b, past_keys.shape[3] + t, dtype=torch.bool, device=input_ids.device)  # (B, P + T)
        logits = self.model(input_ids, kv_cache=cache, attention_mask=mask)
        return (logits, *cache.present())


def empty_past(model_or_meta, batch_size: int = 1, length: int = 0) -> torch.Tensor:
    """Zero past keys (or values) (n_layer, B, kv_heads, length, head_dim) for a model's config."""
    c = model_or_meta.config
    return torch.zeros(c.n_layer, batch_size, c.kv_heads, length, c.head_dim)


def export_onnx(model: nn.Module, out: str | os.PathLike, *, kv_cache: bool = False, opset: int = OPSET) -> Path:
    """Write `model` (our GPT, exported in float32) as ONNX to `out`; returns the path.

    The file appears only when complete (written in a temporary folder beside it, then moved).
    Large models (over 1 GiB of weights) keep their tensors in `out` + ".data" beside it.
    """
    require_onnx()
    import onnx

    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the .onnx file to write, e.g. {out / 'model.onnx'}")
    cfg = model.config
    if cfg.context_length < 5:
        raise UserError(f"ONNX export needs a context of at least 5 tokens (example inputs of 3 new and 2 past "
                        f"tokens keep every axis dynamic); this model's is {cfg.context_length}")
    w = model.lm_head.weight
    if w.dtype != torch.float32 or w.device.type != "cpu":
        model = _fp32_copy(model)
    # in the model's mode, so that eval_mode(wrapper) below gives the model back in the mode it had
    wrapper = OnnxGPT(model, kv_cache).train(model.training)
    t = 3  # example sizes >= 2: torch.export fixes axes it sees at size 0 or 1
    ids = torch.zeros(2, t, dtype=torch.long)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic: dict[str, Any] = {"input_ids": {0: batch, 1: seq}}
    args: tuple = (ids,)
    if kv_cache:
        past = torch.export.Dim("past")
        p = 2
        args = (ids, empty_past(model, 2, p), empty_past(model, 2, p))
        dynamic.update(past_keys={1: batch, 3: past}, past_values={1: batch, 3: past})
    n = len(args)
    nbytes = sum(x.numel() * x.element_size() for x in model.state_dict().values())
    external = nbytes > EXTERNAL_DATA_BYTES
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        target = tmp / out.name
        with eval_mode(wrapper), torch.no_grad(), _quiet_exporter():
            program = torch.onnx.export(wrapper, args, dynamo=True, input_names=list(INPUTS[:n]),
                                        output_names=list(OUTPUTS if kv_cache else OUTPUTS[:1]),
                                        dynamic_shapes=dynamic, opset_version=opset, verbose=False)
        if program is None:
            raise UserError("torch.onnx.export returned no program; this torch is too old for the dynamo exporter")
        program.save(str(target), external_data=external)
        proto = onnx.load(str(target), load_external_data=False)
        meta = {"producer": "scratchllm", "kv_cache": str(int(kv_cache)), "n_layer": str(cfg.n_layer),
                "kv_heads": str(cfg.kv_heads), "head_dim": str(cfg.head_dim),
                "context_length": str(cfg.context_length), "vocab_size": str(cfg.vocab_size)}
        onnx.helper.set_model_props(proto, {f"scratchllm.{k}": v for k, v in meta.items()})
        onnx.save(proto, str(target))
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == out.name):  # the .onnx last: complete once it is
            os.replace(f, out.parent / f.name)
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _fp32_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).float().cpu()


class _quiet_exporter:
    """Silence the exporter's progress prints on stdout (the CLI prints only the file) and its log chatter."""

    def __enter__(self):
        import contextlib
        import io
        import logging

        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        import warnings

        logger = logging.getLogger("torch.onnx")
        level = logger.level
        logger.setLevel(logging.ERROR)
        self._stack.callback(logger.setLevel, level)
        # the exporter's own notes (deprecations inside torch.export, axis renames) are not the user's to act on
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*axis name", category=UserWarning)
        return self

    def __exit__(self, *exc):
        self._stack.close()


# --- running it ---------------------------------------------------------------------------------------------
def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime InferenceSession on the CPU for the exported file."""
    ort = require_onnxruntime()
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p} does not exist; export it first with `scratchllm export onnx RUN --out {p}`")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a bad file
        raise UserError(f"{p} is not a model onnxruntime can load ({type(e).__name__}: {str(e)[:200]})") from None


def session_meta(session) -> dict[str, str]:
    """The scratchllm.* metadata export_onnx wrote (without the prefix)."""
    props = session.get_modelmeta().custom_metadata_map
    return {k.removeprefix("scratchllm."): v for k, v in props.items() if k.startswith("scratchllm.")}


def onnx_generate(session, prompt_ids: Sequence[int], max_new_tokens: int, *, eos_id: int | None = None) -> list[int]:
    """Greedy new token ids after `prompt_ids` from a graph exported with kv_cache=True (a session or a path).

    The engine's rules (`generate.engine`): a prompt longer than the context keeps its last
    context_length tokens; the cache holds min(context, prompt + max_new_tokens) positions and, when
    full, is refilled from the last context_length // 2 tokens; `eos_id` ends generation (not returned).
    """
    import numpy as np

    if not hasattr(session, "run"):
        session = onnx_session(session)
    meta = session_meta(session)
    if meta.get("kv_cache") != "1":
        raise UserError("this ONNX file has no KV-cache inputs; export it with --kv-cache for generation")
    ctx, n_layer = int(meta["context_length"]), int(meta["n_layer"])
    kv_heads, head_dim = int(meta["kv_heads"]), int(meta["head_dim"])
    rows = [int(t) for t in prompt_ids][-ctx:]
    if not rows:
        raise UserError("a prompt is empty; give at least one token")
    cache_len = min(ctx, len(rows) + max(max_new_tokens, 1))
    keep = max(1, ctx // 2)
    empty = np.zeros((n_layer, 1, kv_heads, 0, head_dim), dtype=np.float32)

    def step(ids: list[int], pk, pv):
        logits, k, v = session.run(None, {"input_ids": np.array([ids], dtype=np.int64),
                                          "past_keys": pk, "past_values": pv})
        return logits[0, -1], k, v

    logits, pk, pv = step(rows, empty, empty)
    out: list[int] = []
    while len(out) < max_new_tokens:
        nxt = int(np.argmax(logits))
        if nxt == eos_id:
            break
        out.append(nxt)
        rows.append(nxt)
        if len(out) == max_new_tokens:
            break
        if pk.shape[3] >= cache_len:  # context full: slide the window, as the engine does
            logits, pk, pv = step(rows[-keep:], empty, empty)
        else:
            logits, pk, pv = step([nxt], pk, pv)
    return out
