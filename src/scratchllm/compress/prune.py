"""Magnitude pruning: weights, attention heads or MLP neurons removed by their size, and a recovery finetune.

What is pruned: the linear layers inside the transformer blocks (attention's qkv and output projection,
the MLP's fc, gate and proj): nearly all of a model's matmul weights but the head. Left alone: the token
and position embeddings (a zeroed embedding entry silences a token's feature for every position, and in
GPT-2 the token table is the head too), the head (its rows are the vocabulary's logits), norms and
biases (a few thousand numbers; a norm's gain scales a whole feature). SparseGPT and Wanda (Frantar &
Alistarh 2023; Sun et al. 2023) prune the same set.

Unstructured (`prune_unstructured`): the weights of smallest |w| are set to zero and a mask keeps them
there (`model.masks`: the gradient is masked, and the masks travel in the checkpoint), Han et al. 2015's
magnitude pruning. `scope="layer"`: each layer loses round(S * its weights); `scope="global"`: the
round(S * all of them) smallest across the layers go, so layers of small weights lose more (Frankle &
Carbin 2019 prune globally). Tensors keep their shapes: the zeros save nothing until a sparse kernel
or a compressed file reads them.

Structured (`prune_heads`, `prune_neurons`): whole attention heads or MLP neurons go, and the tensors and
the config shrink: the same number from every block (ModelConfig has one head count and one MLP width
for all blocks; the head size stays, set explicitly in `head_size` when it no longer equals
n_embd / n_head). Scores, from the weights alone (no data):
- a head h: ||W_O[:, h] W_V[h]||_F, the size of its "OV circuit" (Elhage et al. 2021): attention averages
  value vectors, so the head adds at most that matrix times a mix of its inputs to the residual stream.
  With grouped-query attention a key/value head goes with its whole group of query heads (the group's
  score is the root of the sum of its heads' squares): the grouping stays uniform.
- an MLP neuron j: ||W_proj[:, j]|| * ||W_fc[j]|| (* ||W_gate[j]|| for SwiGLU): how large its input
  weights can make it and how far its output row carries it.
Removing a head equals zeroing its columns of the output projection (and a neuron, its column of
`mlp.proj`) in the unpruned model: the pruned model computes the same logits (tested).

`recover(model, prepared, steps)` finetunes a pruned model through the one training loop
(`train.loop.train`) on a prepared corpus; the masks keep unstructured zeros at zero. `prune_folder`
does it all to any model folder and writes a checkpoint folder (masks.safetensors for unstructured
pruning; state.json's "pruning" says what was done).

Not here: the masks' mechanics (`model.masks`), files (`checkpoint`), the command (`cli.prune`).
References: Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks";
Frankle & Carbin 2019, "The Lottery Ticket Hypothesis"; Michel et al. 2019, "Are Sixteen Heads Really
Better than One?"; Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits".
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scratchllm.errors import UserError
from scratchllm.model.masks import MASK, attach_mask, masks

STRUCTURES = ("heads", "neurons")
SCOPES = ("layer", "global")
# the blocks' linear layers: what pruning touches (see the module doc for why not the rest)
PRUNABLE = re.compile(r"^blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc|gate|proj))$")


def check_request(sparsity: float, structured: str | None, scope: str) -> None:
    """One UserError for a request that cannot be done, before any model is loaded."""
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1) or math.isnan(sparsity):
        raise UserError(f"--sparsity must be in [0, 1) (the fraction removed, e.g. 0.3), got {sparsity}")
    if structured is not None and structured not in STRUCTURES:
        raise UserError(f"--structured {structured!r} is not known; use heads or neurons")
    if scope not in SCOPES:
        raise UserError(f"--scope {scope!r} is not known; use layer or global")
    if structured is not None and scope == "global":
        raise UserError("--scope global is for unstructured pruning; structured pruning removes the same number "
                        "of heads or neurons from every block (the config holds one count for all)")


def prunable(model: nn.Module) -> dict[str, nn.Linear]:
    """{name: layer} of the linear layers inside the blocks, in the model's order."""
    found = {n: m for n, m in model.named_modules() if PRUNABLE.match(n) and type(m) is nn.Linear}
    if not found:
        raise UserError("this model has no plain linear layers in its blocks to prune (a quantized model? prune "
                        "the model it was made from, then quantize)")
    return found


def _check_plain(model: nn.Module) -> None:
    from scratchllm.model.quant_linear import is_quantized

    if is_quantized(model):
        raise UserError("this model is quantized; prune the model it was made from, then quantize the pruned one")


def _keep_largest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """A bool mask of `scores`' shape, False at the `n_prune` smallest (exactly that many)."""
    flat = scores.flatten()
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if n_prune > 0:
        keep[torch.topk(flat, n_prune, largest=False, sorted=False).indices] = False
    return keep.view(scores.shape)


# --- unstructured -----------------------------------------------------------------------------------------
@torch.no_grad()
def prune_unstructured(model: nn.Module, sparsity: float, scope: str = "layer") -> dict[str, Any]:
    """Zero the smallest-|w| weights of the blocks' linear layers and attach masks (in place); returns what
    was done (state.json's "pruning"). A layer masked already keeps its pruned weights pruned (its zeros are
    the smallest)."""
    check_request(sparsity, None, scope)
    _check_plain(model)
    layers = prunable(model)
    mags = {n: m.weight.detach().abs().float() * (getattr(m, MASK).float() if getattr(m, MASK, None) is not None
                                                  else 1.0) for n, m in layers.items()}
    if scope == "layer":
        new = {n: _keep_largest(a, round(sparsity * a.numel())) for n, a in mags.items()}
    else:
        flat = torch.cat([a.flatten() for a in mags.values()])
        keep = _keep_largest(flat, round(sparsity * flat.numel())).split([a.numel() for a in mags.values()])
        new = {n: k.view(a.shape) for (n, a), k in zip(mags.items(), keep, strict=True)}
    for name, layer in layers.items():
        old = getattr(layer, MASK, None)
        mask = new[name] if old is None else new[name] & old
        if old is not None or not bool(mask.all()):  # sparsity 0 (e.g. to finetune a pruned model more): no new masks
            attach_mask(layer, mask)
    return {"method": "magnitude", "structured": None, "scope": scope, "sparsity": sparsity,
            **sparsity_report(model)}


def sparsity_report(model: nn.Module) -> dict[str, Any]:
    """Pruned (masked) weights: of the masked layers and of every parameter, and per layer."""
    ms = masks(model)
    pruned = {n: int((~m).sum()) for n, m in ms.items()}
    masked = sum(m.numel() for m in ms.values())
    total = sum(p.numel() for p in model.parameters())
    return {"pruned_weights": sum(pruned.values()), "masked_weights": masked,
            "sparsity_of_masked": round(sum(pruned.values()) / max(1, masked), 6),
            "sparsity_of_model": round(sum(pruned.values()) / max(1, total), 6),
            "layers": {n: round(pruned[n] / ms[n].numel(), 6) for n in ms}}


# --- structured -------------------------------------------------------------------------------------------
def head_scores(attn: nn.Module) -> torch.Tensor:
    """(n_kv_head,) scores of an attention layer's key/value groups: the root of the summed squared
    ||W_O[:, h] W_V[g]||_F of the query heads h in group g (for plain multi-head attention, one head each)."""
    d, n_kv, rep = attn.head_dim, attn.n_kv_head, attn.n_head // attn.n_kv_head
    q_rows, kv_rows = attn.n_head * d, n_kv * d
    wv = attn.qkv.weight.detach().float()[q_rows + kv_rows:].view(n_kv, d, -1)  # (n_kv, d, n_embd)
    wo = attn.proj.weight.detach().float().view(-1, attn.n_head, d).transpose(0, 1)  # (n_head, n_embd, d)
    # ||W_O W_V||_F^2 = sum((W_O^T W_O) * (W_V W_V^T)): two d x d Gram matrices instead of an n_embd^2 product
    oo = (wo.transpose(1, 2) @ wo).view(n_kv, rep, d, d)  # (n_kv, rep, d, d)
    vv = wv @ wv.transpose(1, 2)  # (n_kv, d, d)
    return (oo * vv[:, None]).sum(dim=(1, 2, 3)).clamp(min=0).sqrt()


def neuron_scores(mlp: nn.Module) -> torch.Tensor:
    """(hidden,) scores of an MLP's neurons: ||W_proj[:, j]|| * ||W_fc[j]|| (* ||W_gate[j]||)."""
    s = mlp.proj.weight.detach().float().norm(dim=0) * mlp.fc.weight.detach().float().norm(dim=1)
    if getattr(mlp, "gate", None) is not None:
        s = s * mlp.gate.weight.detach().float().norm(dim=1)
    return s


def _take(state: dict[str, torch.Tensor], ms: dict[str, torch.Tensor], layer: str, index: torch.Tensor,
          dim: int) -> None:
    """Keep rows (dim 0) or columns (dim 1) `index` of `layer`'s weight, its bias (rows) and its mask."""
    state[f"{layer}.weight"] = state[f"{layer}.weight"].index_select(dim, index)
    if dim == 0 and f"{layer}.bias" in state:
        state[f"{layer}.bias"] = state[f"{layer}.bias"].index_select(0, index)
    if layer in ms:
        ms[layer] = ms[layer].index_select(dim, index)


def _rebuilt(model: nn.Module, config: Any, state: dict[str, torch.Tensor], ms: dict[str, torch.Tensor]) -> nn.Module:
    """A GPT of `config` holding `state`, with the masks `ms`, in `model`'s dtype, device and mode."""
    from scratchllm.model import GPT

    p = next(model.parameters())
    new = GPT(config)
    new.load_state_dict(state)
    new.to(device=p.device, dtype=p.dtype)
    for name, mask in ms.items():
        attach_mask(new.get_submodule(name), mask)
    return new.train(model.training)


@torch.no_grad()
def prune_heads(model: nn.Module, sparsity: float) -> tuple[nn.Module, dict[str, Any]]:
    """A new model without the round(S * n_kv_head) lowest-scoring key/value groups of heads in each block
    (at least one kept), and what was done. The head size stays (config.head_size set when needed)."""
    check_request(sparsity, "heads", "layer")
    _check_plain(model)
    prunable(model)
    c = model.config
    n_kv, rep, d = c.kv_heads, c.n_head // c.kv_heads, c.head_dim
    keep_n = max(1, n_kv - round(sparsity * n_kv))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ms = dict(masks(model))
    kept = []
    for i, block in enumerate(model.blocks):
        groups = torch.topk(head_scores(block.attn), keep_n).indices.sort().values  # kept groups, in order
        heads = (groups[:, None] * rep + torch.arange(rep)).flatten()  # their query heads
        rows = lambda idx, start: (start + idx[:, None] * d + torch.arange(d)).flatten()  # noqa: E731
        q_rows = c.n_head * d
        qkv = torch.cat([rows(heads, 0), rows(groups, q_rows), rows(groups, q_rows + n_kv * d)])
        _take(state, ms, f"blocks.{i}.attn.qkv", qkv, 0)
        _take(state, ms, f"blocks.{i}.attn.proj", rows(heads, 0), 1)
        kept.append(groups.tolist())
    n_head = keep_n * rep
    new_cfg = c.replace(n_head=n_head, n_kv_head=None if c.n_kv_head is None else keep_n,
                        head_size=None if n_head * d == c.n_embd else d)
    new = _rebuilt(model, new_cfg, state, ms)
    return new, {"method": "magnitude", "structured": "heads", "scope": "layer", "sparsity": sparsity,
                 "score": "OV circuit norm per key/value group", "heads_before": c.n_head, "heads_after": n_head,
                 "kept_kv_heads": kept, "params_before": _params(model), "params_after": _params(new)}


@torch.no_grad()
def prune_neurons(model: nn.Module, sparsity: float) -> tuple[nn.Module, dict[str, Any]]:
    """A new model without the round(S * hidden) lowest-scoring MLP neurons of each block (at least one
    kept), and what was done (config.mlp_hidden becomes the new width)."""
    check_request(sparsity, "neurons", "layer")
    _check_plain(model)
    prunable(model)
    c = model.config
    hidden = c.hidden_dim
    keep_n = max(1, hidden - round(sparsity * hidden))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ms = dict(masks(model))
    for i, block in enumerate(model.blocks):
        idx = torch.topk(neuron_scores(block.mlp), keep_n).indices.sort().values
        for name in ("fc", "gate"):
            if f"blocks.{i}.mlp.{name}.weight" in state:
                _take(state, ms, f"blocks.{i}.mlp.{name}", idx, 0)
        _take(state, ms, f"blocks.{i}.mlp.proj", idx, 1)
    new = _rebuilt(model, c.replace(mlp_hidden=keep_n), state, ms)
    return new, {"method": "magnitude", "structured": "neurons", "scope": "layer", "sparsity": sparsity,
                 "score": "|proj column| x |fc row| (x |gate row|)", "mlp_hidden_before": hidden,
                 "mlp_hidden_after": keep_n, "params_before": _params(model), "params_after": _params(new)}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def prune_model(model: nn.Module, sparsity: float, structured: str | None = None,
                scope: str = "layer") -> tuple[nn.Module, dict[str, Any]]:
    """(pruned model, what was done): unstructured in place, or a new smaller model for heads/neurons."""
    check_request(sparsity, structured, scope)
    if structured == "heads":
        return prune_heads(model, sparsity)
    if structured == "neurons":
        return prune_neurons(model, sparsity)
    return model, prune_unstructured(model, sparsity, scope)


# --- recovery ---------------------------------------------------------------------------------------------
# recovery defaults: a short finetune of a pretrained model (a tenth of nanoGPT's small-model pretraining rate
# would undertrain in a few hundred steps; 3e-4 with a short warmup recovers most of the loss, see
# benchmarks/prune.py), small batches (a laptop CPU)
RECOVER_LR = 3e-4
RECOVER_BATCH = 8


def recover(model: nn.Module, prepared: Any, steps: int, *, lr: float = RECOVER_LR, batch_size: int = RECOVER_BATCH,
            seed: int = 0, progress: bool = True, eval_batches: int = 4, precision: str = "auto") -> Any:
    """Finetune `model` for `steps` optimizer steps on the train split of `prepared` (a `data.prepare`
    folder: random windows of the model's context) through `train.loop.train`, with AdamW (the masks keep
    pruned weights at zero) in `precision` (TrainConfig's: "auto" is bf16 autocast where the CPU has bf16
    matmuls); returns the loop's `TrainState` (its last_eval: the val split's loss)."""
    from scratchllm.config.train import TrainConfig
    from scratchllm.data.datasets import EvalBatches, RandomWindowBatches
    from scratchllm.train.loop import batch_eval_fn, train
    from scratchllm.train.losses import loss_for

    if steps < 1:
        raise UserError(f"--recover-steps must be at least 1, got {steps}")
    if prepared.tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"the recovery data in {prepared.dir} has a vocabulary of {prepared.tokenizer.vocab_size:,} "
                        f"tokens, the model {model.config.vocab_size:,}; give the data the model was trained on")
    ctx = model.config.context_length
    config = TrainConfig(max_steps=steps, lr=lr, warmup_steps=min(20, steps // 10), batch_size=batch_size,
                         eval_interval=steps, eval_batches=eval_batches, log_interval=max(1, steps // 10),
                         optimizer="adamw", seed=seed, progress=progress, precision=precision)
    batches = RandomWindowBatches(prepared.train, batch_size, ctx, seed=seed)
    eval_fn = batch_eval_fn({"val": list(EvalBatches(prepared.val, batch_size, ctx, eval_batches,
                                                     "the validation split"))})
    state = train(model, batches, loss_for(model.config), config, eval_fn=eval_fn)
    model.eval()
    return state


def recovery_data(data: str | os.PathLike | None, meta: dict[str, Any]) -> Any:
    """The prepared corpus to recover on: `data` (a prepared data folder), else the source run's own."""
    from scratchllm.data.prepare import load_prepared
    from scratchllm.data.shards import META_FILE

    folder = data if data is not None else meta.get("data_dir")
    if folder is None:
        raise UserError("--recover-steps needs training text: this model has no prepared data of its own (not a "
                        "scratchllm run); give --data DIR, a prepared data folder (runs/data/<name>-...)")
    if not (Path(folder) / META_FILE).is_file():
        raise UserError(f"{folder} is not a prepared data folder (no {META_FILE}); give --data DIR, one that "
                        f"`scratchllm train` prepared (runs/data/<name>-...)")
    return load_prepared(folder)


# --- a pruned checkpoint folder ---------------------------------------------------------------------------
def model_card(source: Path, config: Any, report: dict[str, Any], recovery: dict[str, Any] | None) -> str:
    """MODEL_CARD.md of a pruned checkpoint: its source, what was removed, the recovery finetune."""
    if report["structured"] == "heads":
        what = (f"attention heads by their OV-circuit norm: {report['heads_before']} -> {report['heads_after']} per "
                f"block; parameters {report['params_before']:,} -> {report['params_after']:,}")
    elif report["structured"] == "neurons":
        what = (f"MLP neurons by |proj column| x |fc row|: {report['mlp_hidden_before']} -> "
                f"{report['mlp_hidden_after']} per block; parameters {report['params_before']:,} -> "
                f"{report['params_after']:,}")
    else:
        what = (f"unstructured, the smallest |w| ({report['scope']} scope) of the blocks' linear layers: "
                f"{report['sparsity_of_masked']:.1%} of them zero ({report['sparsity_of_model']:.1%} of all "
                f"parameters); masks in masks.safetensors keep them zero in finetuning")
    rec = (f"- Recovery: {recovery['steps']} steps of finetuning at lr {recovery['lr']:g} on {recovery['data']} "
           f"(val loss {recovery.get('val_loss', float('nan')):.4f})\n" if recovery else "- Recovery: none\n")
    return (f"# {source.name} (pruned, {report['sparsity']:g})\n\n"
            f"- Source: `{source}`\n"
            f"- Pruned: {what}\n"
            f"- Kept: embeddings, the head, norms and biases\n"
            f"{rec}"
            f"- Model: {config.n_layer} layers, {config.n_head} heads, {config.n_embd} dims, MLP {config.hidden_dim}, "
            f"context {config.context_length}, vocabulary {config.vocab_size:,}\n\n"
            f"Written by `scratchllm prune`. Pruning changes the model's outputs: measure it on your text "
            f"(`scratchllm eval compare`; benchmarks/prune.py does, before and after recovery).\n")


def derived_card_lines(source: Path, config: Any, recovery: dict[str, Any] | None) -> str:
    """The card's transparency sections (`evaluate.card.derived_lines`): the source's data and compute,
    plus the recovery finetune's own compute (batch x context tokens a step) when there was one."""
    from scratchllm.evaluate.card import derived_lines, training_compute

    compute = None
    if recovery:
        tokens = recovery["steps"] * recovery["batch_size"] * config.context_length
        compute = training_compute(config, tokens, recovery["elapsed"], torch.get_num_threads())
    return derived_lines("pruned", source, source.name, compute=compute)


def prune_folder(path: str | os.PathLike, out: str | os.PathLike, sparsity: float, structured: str | None = None,
                 scope: str = "layer", *, recover_steps: int = 0, data: str | os.PathLike | None = None,
                 lr: float = RECOVER_LR, batch_size: int = RECOVER_BATCH, precision: str = "auto",
                 progress: bool = True) -> Path:
    """Prune the model at `path` (anything `interop.load.load_any` reads), optionally finetune it for
    `recover_steps` steps, and write it as a checkpoint folder at `out` (atomically; must not exist)."""
    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.interop.importer import CARD_FILE
    from scratchllm.interop.load import GENERATION_FILE, load_any

    check_request(sparsity, structured, scope)
    src, out = Path(path), Path(out)
    if out.exists():
        raise UserError(f"{out} already exists; choose a new folder for the pruned model (nothing was written)")
    if recover_steps < 0:
        raise UserError(f"--recover-steps must be 0 or more, got {recover_steps}")
    model, tokenizer, meta = load_any(src)
    if "quantization" in meta:
        raise UserError(f"{src} is quantized; prune the model it was made from, then quantize the pruned one")
    prepared = recovery_data(data, meta) if recover_steps else None  # a bad --data fails before the work
    model, report = prune_model(model.float(), sparsity, structured, scope)
    recovery = None
    if prepared is not None:
        state = recover(model, prepared, recover_steps, lr=lr, batch_size=batch_size, precision=precision,
                        progress=progress)
        recovery = {"steps": state.step, "lr": lr, "batch_size": batch_size, "data": str(prepared.dir),
                    "stop_reason": state.stop_reason, "elapsed": state.elapsed,
                    **{k: v for k, v in state.last_eval.items()}}
        if structured is None:
            report = {**report, **sparsity_report(model)}
    state = {"pruned_from": str(src.resolve()), "pruning": report}
    if recovery is not None:
        state["recovery"] = recovery
    data_dir = str(prepared.dir) if prepared is not None else meta.get("data_dir")
    if data_dir is not None:  # `eval --split`, and a later recovery, find the prepared data
        state["data_dir"] = data_dir
    if isinstance(meta.get("run_config"), dict):
        state["run_config"] = {**meta["run_config"], "model": model.config.to_dict()}
    card = model_card(src, model.config, report, recovery) + "\n" + derived_card_lines(src, model.config, recovery)
    generation = meta.get("generation", {})
    extra = {
        GENERATION_FILE: lambda p: p.write_text(json.dumps(generation, indent=1), encoding="utf-8"),
        CARD_FILE: lambda p: p.write_text(card, encoding="utf-8"),
    }
    return save_checkpoint(out, model.eval(), state=state, tokenizer=tokenizer, extra_files=extra)
