"""Classification finetuning (the book's chapter 6) and classifying with the result.

`plan(config, model, tokenizer, source_meta)` is what `finetune.job.finetune` calls for
`scratchllm finetune classify`: the labelled texts (`finetune.classify_data`: read, balanced, split
70/10/20 with the seed, tokenised, truncated), the source model with a new head of one output per
class (`classifier_from`), the loss, the evaluation and the report.

The head reads one hidden state per text (`logits`): the last real token's (pooling "last", the
book's: under causal attention it is the only position that has seen the whole text) or the mean
over the real tokens ("mean"). The book pads every text to the training split's longest and reads
the last position, padding or not; here each batch is padded on the right to its own longest and
the last REAL token is read, so a text's logits do not depend on the padding (causal attention keeps
real positions blind to the padding after them), and batches grouped by length waste little.
Loss: cross-entropy over the classes. Evaluation (every train.eval_interval steps): loss and
accuracy on train.eval_batches fixed batches of the training and validation splits (the book's
`calc_loss_loader`/`calc_accuracy_loader` with eval_iter). Report (after training): accuracy,
precision, recall, F1 and the confusion matrix on every split, printed and in report.json, with
the test split's confusion matrix and the loss and accuracy curves as PNGs in the run folder.

For the commands that use a finetuned classifier: `load_classifier(folder)` (the model, its
tokenizer and the task saved in state.json: labels, pooling, max length) and `predict` (class
probabilities of many texts, in length-sorted batches).

Not here: the data steps (`finetune.classify_data`), the metrics (`evaluate.classification`), the
loop and the run folder (`finetune.job`, `train.loop`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.errors import UserError
from scratchllm.finetune import classify_data as data
from scratchllm.finetune.job import Plan

POOLING = ("last", "mean")
CONFUSION_PNG = "confusion.png"
CURVES_PNG = "curves.png"
# Texts per batch when classifying (inference only: no gradients, so larger than training's 8).
PREDICT_BATCH = 32


# --- the model --------------------------------------------------------------------------------------------
def classifier_from(model: Any, n_classes: int, seed: int) -> Any:
    """A GPT like `model` with a new head of `n_classes` outputs (and a bias; not tied to the embedding),
    every other weight `model`'s own tensor (taken over, not copied: `model` is not to be used after).
    The head is initialised as the book's (`torch.manual_seed(seed)`, then nn.Linear's initialisation),
    so the same seed gives the same head."""
    import torch
    from torch import nn

    from scratchllm.model import GPT

    config = dataclasses.replace(model.config, n_classes=n_classes, tie_weights=False)
    with torch.device("meta"):  # the shape only: no memory, no initialisation (the weights come from `model`)
        new = GPT(config)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head.")}
    missing, unexpected = new.load_state_dict(state, strict=False, assign=True)
    assert not unexpected and set(missing) == {"lm_head.weight", "lm_head.bias"}, (missing, unexpected)
    for name, buffer in model.named_buffers():  # buffers outside the state dict (RoPE's tables)
        owner, _, leaf = name.rpartition(".")
        setattr(new.get_submodule(owner), leaf, buffer)
    weight = model.tok_emb.weight
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new.lm_head = nn.Linear(config.n_embd, n_classes).to(weight.device, weight.dtype)
    return new


def logits(model: Any, ids: Any, lengths: Any, pooling: str = "last") -> Any:
    """Class logits (B, K) of right-padded `ids` (B, T) whose real lengths are `lengths` (B,)."""
    import torch

    h = model.features(ids)  # (B, T, C)
    if pooling == "last":
        pooled = h[torch.arange(h.shape[0], device=h.device), lengths - 1]  # (B, C)
    else:
        real = (torch.arange(h.shape[1], device=h.device)[None, :] < lengths[:, None]).to(h.dtype)  # (B, T)
        pooled = (h * real[..., None]).sum(1) / lengths[:, None].to(h.dtype)  # (B, C)
    return model.lm_head(pooled)


def loss_fn(pooling: str):
    """loss(model, (ids, lengths, labels)) -> mean cross-entropy over the classes."""
    import torch.nn.functional as F

    def loss(model: Any, batch: Any) -> Any:
        ids, lengths, labels = batch
        return F.cross_entropy(logits(model, ids, lengths, pooling).float(), labels)

    return loss


def _scores(model: Any, batches: Sequence[Any], pooling: str) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean loss per batch, true labels, predicted labels) over `batches` (no gradients, as given)."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    losses, true, pred = [], [], []
    with torch.no_grad():
        for ids, lengths, labels in batches:
            ids, lengths, labels = ids.to(device), lengths.to(device), labels.to(device)
            out = logits(model, ids, lengths, pooling).float()
            losses.append(float(F.cross_entropy(out, labels)))
            true.append(labels.cpu().numpy())
            pred.append(out.argmax(-1).cpu().numpy())
    return sum(losses) / max(1, len(losses)), np.concatenate(true), np.concatenate(pred)


def eval_fn(splits: dict[str, Sequence[Any]], pooling: str):
    """eval(model) -> {"<split>_loss", "<split>_accuracy"} over fixed batches per split."""

    def evaluate(model: Any) -> dict[str, float]:
        out = {}
        for name, batches in splits.items():
            if batches:
                loss, true, pred = _scores(model, batches, pooling)
                out[f"{name}_loss"] = loss
                out[f"{name}_accuracy"] = float((true == pred).mean())
        return out

    return evaluate


# --- the plan ---------------------------------------------------------------------------------------------
def check_vocabulary(ids: Sequence[Sequence[int]], model: Any, source: str) -> None:
    """Token ids beyond the model's vocabulary: its tokenizer is not the one it was trained with."""
    top = max((max(x) for x in ids if x), default=0)
    if top >= model.config.vocab_size:
        raise UserError(f"{source}: its tokenizer gives token id {top}, beyond the model's vocabulary of "
                        f"{model.config.vocab_size}; the tokenizer does not match the model (use the tokenizer it "
                        f"was trained with)")


def plan(config: Any, model: Any, tokenizer: Any, source_meta: dict[str, Any]) -> Plan:
    """The job's Plan for `scratchllm finetune classify` (module doc)."""
    from scratchllm.finetune.batches import ExampleBatches, fixed_batches

    tc = config.train
    records = data.read_labelled(config.data, config.text_column, config.label_column)
    labels = data.label_names(records, config.labels, source=config.data)
    balanced = data.balance(records, labels, tc.seed) if config.balance else list(records)
    splits = dict(zip(("train", "val", "test"), data.split(balanced, config.split, tc.seed), strict=True))
    context = model.config.context_length
    max_length = min(config.max_length or context, context)
    pad = data.pad_id(tokenizer)
    index = {name: i for i, name in enumerate(labels)}
    examples, truncated = {}, 0
    for name, rows in splits.items():
        ids, cut = data.encode([r["text"] for r in rows], tokenizer, max_length)
        check_vocabulary(ids, model, config.init_from)
        truncated += cut
        examples[name] = [(x, index[r["label"]]) for x, r in zip(ids, rows, strict=True)]
    if truncated:
        warnings.warn(f"{truncated} of {len(balanced)} texts are longer than {max_length} tokens; each was cut to "
                      f"its first {max_length} (set max_length to change it)", stacklevel=2)
    if not examples["test"]:
        raise UserError(f"{config.data}: {len(balanced)} texts leave the test split empty; give more data")

    def collate(batch: list[tuple[list[int], int]]) -> Any:
        return data.collate(batch, pad)

    train = examples["train"]
    batches = ExampleBatches(train, tc.batch_size, collate, seed=tc.seed, lengths=[len(x) for x, _ in train],
                             bucket=True)
    evals = {name: fixed_batches(examples[name], tc.batch_size, collate, limit=tc.eval_batches)
             for name in ("train", "val")}
    new_model = classifier_from(model, len(labels), tc.seed)
    sizes = {name: len(rows) for name, rows in examples.items()}
    meta = {"kind": "classify", "labels": labels, "pooling": config.pooling, "max_length": max_length,
            "text_column": config.text_column, "label_column": config.label_column}

    def report(trained: Any, folder: Path) -> dict[str, Any]:
        return write_report(trained, folder, examples, labels, config.pooling, collate, truncated)

    counts = {name: sum(r["label"] == name for r in balanced) for name in labels}
    return Plan(model=new_model, batches=batches, loss_fn=loss_fn(config.pooling),
                eval_fn=eval_fn(evals, config.pooling), new_modules=("lm_head",), meta=meta, report=report,
                data={"name": config.data, "labels": labels, "balanced": config.balance, "per_class": counts,
                      "examples": sizes, "split": list(config.split), "seed": tc.seed, "truncated": truncated,
                      "max_length": max_length})


def write_report(model: Any, folder: Path, examples: dict[str, list], labels: list[str], pooling: str,
                 collate: Any, truncated: int) -> dict[str, Any]:
    """Metrics on every split (printed; returned for report.json), the test confusion matrix and the
    loss and accuracy curves as PNGs in `folder`."""
    from scratchllm.evaluate.classification import classification_metrics, format_table, plot_confusion, plot_curves
    from scratchllm.finetune.batches import fixed_batches
    from scratchllm.runtime import eval_mode
    from scratchllm.train.logging import METRICS_FILE, read_metrics

    out: dict[str, Any] = {"labels": labels}
    with eval_mode(model):
        for name, rows in examples.items():
            if not rows:
                continue
            _, true, pred = _scores(model, fixed_batches(_by_length(rows), PREDICT_BATCH, collate), pooling)
            out[name] = classification_metrics(true, pred, labels)
            print(format_table(out[name], title=f"{name} ({len(rows)} texts)"))
    out["truncated"] = truncated
    out["examples"] = {name: len(rows) for name, rows in examples.items()}
    plot_confusion(out["test"]["confusion"], labels, folder / CONFUSION_PNG, title=f"{folder.name}: test")
    plot_curves(read_metrics(folder / METRICS_FILE), folder / CURVES_PNG, title=folder.name)
    return out


def _by_length(rows: list) -> list:
    """Rows sorted by length: batches of similar lengths pad little (metrics do not depend on order)."""
    return sorted(rows, key=lambda r: len(r[0]))


# --- using a finetuned classifier ----------------------------------------------------------------------------
def load_classifier(path: str, device: Any = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, task) from a run or checkpoint folder of a classifier; anything else is one
    clear error. `task` is state.json's "task": labels, pooling, max_length, text and label columns."""
    from scratchllm.checkpoint import load_model

    model, tokenizer, meta = load_model(path, device)
    task = meta.get("task") if isinstance(meta.get("task"), dict) else {}
    where = meta.get("checkpoint", path)
    if model.config.n_classes is None or task.get("kind") != "classify":
        raise UserError(f"{path} is not a classifier (its model has no classification head or its state.json no "
                        f"labels); make one with `scratchllm finetune classify --init-from {path}`")
    labels = task.get("labels")
    if not isinstance(labels, list) or len(labels) != model.config.n_classes or not all(
            isinstance(x, str) for x in labels):
        raise UserError(f"{where}/state.json: task.labels must list the {model.config.n_classes} label names of "
                        f"the model's classes, got {labels!r}")
    if task.get("pooling", "last") not in POOLING:
        raise UserError(f"{where}/state.json: task.pooling {task.get('pooling')!r} is unknown; "
                        f"choose one of {', '.join(POOLING)}")
    if tokenizer is None:
        raise UserError(f"{where} has no tokenizer; a classifier needs the tokenizer it was trained with")
    return model, tokenizer, task


def predict(model: Any, tokenizer: Any, task: dict[str, Any], texts: Sequence[str],
            batch_size: int = PREDICT_BATCH, source: str = "the classifier") -> tuple[np.ndarray, int]:
    """(probabilities (N, K) in the texts' order, how many texts were truncated to the task's max_length).
    Texts are classified in batches of similar lengths, padded on the right; the head reads as in training."""
    import torch

    from scratchllm.runtime import eval_mode

    max_length = min(int(task.get("max_length") or model.config.context_length), model.config.context_length)
    ids, truncated = data.encode(texts, tokenizer, max_length)
    check_vocabulary(ids, model, source)
    pad = data.pad_id(tokenizer)
    order = np.argsort([len(x) for x in ids], kind="stable")
    probs = np.zeros((len(texts), model.config.n_classes), dtype=np.float64)
    device = next(model.parameters()).device
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x, lengths, _ = data.collate([(ids[i], 0) for i in idx], pad)
            out = logits(model, x.to(device), lengths.to(device), task.get("pooling", "last"))
            probs[idx] = torch.softmax(out.float(), dim=-1).cpu().numpy()
    return probs, truncated
