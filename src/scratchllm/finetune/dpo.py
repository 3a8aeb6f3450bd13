"""Preference tuning with DPO: make a model prefer the chosen response of each pair to the rejected one.

Direct preference optimisation (Rafailov et al. 2023, "Direct Preference Optimization: Your Language
Model is Secretly a Reward Model"; the book's chapter 7 bonus notebook) trains the policy (the model
being finetuned) against a frozen reference (the model it started from) with, for each pair,

    loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))

where pi_c, pi_r are the policy's summed log-probabilities of the chosen and rejected responses given
the prompt and ref_c, ref_r the reference's. beta * (pi_c - ref_c) is the chosen response's implicit
reward and beta * (pi_r - ref_r) the rejected one's; their difference is the reward margin, and the
preference accuracy is the fraction of pairs whose margin is positive. The reference model never
changes, so its log-probabilities are computed once, for every pair, before training starts
(`reference_logprobs`) and travel with the examples: the reference is not kept in memory and never
run again. In a job of several processes (`train.distributed`) each process computes them for its
share of the batches and they are exchanged once; the reference is never wrapped by DDP or FSDP, and
each process's part of a training batch is whole pairs (`PairBatch`) with their cached values.

The preference data (`--data`): the book's `alpaca-book-preference`, or a file of entries, either a
JSON list or JSON Lines (one object per line; what the ratings of the future web page produce):

    {"instruction": "Name a colour.", "input": "", "chosen": "Blue.", "rejected": "I will not."}
    {"prompt": "<the exact text the model read>", "chosen": "...", "rejected": "..."}

- instruction (+ input, optional, may be empty): formatted with the book's Alpaca template
  (`generate.templates.alpaca_prompt`) followed by `ALPACA_RESPONSE` ("\\n\\n### Response:\\n");
- or prompt: a ready prompt, used verbatim: the whole text before the response (for a model tuned on
  the Alpaca template, alpaca_prompt(...) + ALPACA_RESPONSE, as `scratchllm generate` feeds it);
- chosen, rejected: the preferred and the other response, non-empty texts. Other fields (the book's
  `output`, a rater's id) are ignored.

An entry whose chosen equals its rejected carries no preference and is left out (counted). A pair's
token ids are prompt + response + end-of-text: the prompt and each response are encoded apart (so the
response starts on a token boundary, as when the model generates after the prompt), and the
end-of-text token closes each response, as in Rafailov et al.'s code (the book's notebook leaves it
out), so the model also learns where a preferred answer stops. Pairs longer than `max_length` (or the
model's context) are truncated at the end (counted); a pair left without a response token is dropped.

Differences from the book's notebook, on purpose: summed log-probabilities (the paper's; the book
averages over the response's tokens), rewards scaled by beta (the paper's and TRL's), the response
mask without the "### Response:" line (those tokens are the same in both sequences of a pair, so
the loss is unchanged; only the rewards' common offset is), and a seeded shuffle before the split.
With `mask_prompt` false the prompt's tokens are summed too; they are the same for chosen and
rejected, so again only the rewards move, not the loss.

Not here: the loop (`train.loop`), what trains (`finetune.job`), the template (`generate.templates`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError
from scratchllm.finetune.job import Plan
from scratchllm.generate.templates import ALPACA_RESPONSE, alpaca_prompt


# --- the data -----------------------------------------------------------------------------------
@dataclass
class Pair:
    """One preference pair as token ids, with the reference model's log-probabilities once computed."""

    # prompt + chosen response (+ end-of-text), truncated to max_length
    chosen: list[int]
    # prompt + rejected response (+ end-of-text), truncated to max_length
    rejected: list[int]
    # tokens of the prompt: both responses start at this position
    prompt_len: int
    # the reference model's summed log-probabilities of the two responses (`reference_logprobs`)
    ref_chosen: float = math.nan
    ref_rejected: float = math.nan

    @property
    def length(self) -> int:
        return max(len(self.chosen), len(self.rejected))


def _entry(record: Any, where: str) -> tuple[str, str, str]:
    """(prompt text, chosen, rejected) of one entry (see the module doc), or a UserError naming it."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object with instruction (or prompt), chosen and rejected, "
                        f"got {type(record).__name__}")
    missing = [k for k in ("chosen", "rejected") if k not in record]
    if missing:
        keys = ", ".join(map(str, record)) or "none"
        raise UserError(f"{where} has no {' or '.join(repr(k) for k in missing)} field (fields: {keys}); "
                        f"each entry needs 'chosen' and 'rejected' responses")
    if ("instruction" in record) == ("prompt" in record):
        raise UserError(f"{where} needs exactly one of 'instruction' (with an optional 'input', formatted "
                        f"with the Alpaca template) or 'prompt' (used as it is)")
    texts = {}
    for key in ("instruction", "input", "prompt", "chosen", "rejected"):
        value = record.get(key, "")
        if value is None and key == "input":
            value = ""
        if not isinstance(value, str):
            raise UserError(f"{where}: field {key!r} is {type(value).__name__}, expected text")
        texts[key] = value
    for key in ("chosen", "rejected", "instruction" if "instruction" in record else "prompt"):
        if not texts[key].strip():
            raise UserError(f"{where}: field {key!r} is empty")
    prompt = texts["prompt"] or alpaca_prompt(texts["instruction"], texts["input"]) + ALPACA_RESPONSE
    return prompt, texts["chosen"], texts["rejected"]


def read_preferences(data: str) -> list[tuple[str, str, str, str]]:
    """Every entry of `data` (a named dataset or a JSON / JSONL file) as (where, prompt, chosen, rejected);
    one UserError naming the file and the entry (or line) for the first bad one."""
    from scratchllm.data import readers, sources

    path = Path(data)
    if not path.exists() and data in sources.DATASETS:
        records = sources.load_records(data)
        located = [(f"{data} entry {i}", r) for i, r in enumerate(records)]
        where = data
    elif not path.exists():
        raise UserError(f"--data {data}: no such file, and not a named dataset; pass a JSON or JSONL file of "
                        f"{{instruction, input, chosen, rejected}} entries or alpaca-book-preference")
    else:
        text = readers.decode(readers.read_bytes(path), str(path))
        if not text.strip():
            raise UserError(f"{path} is empty: there are no preference pairs to read")
        if text.lstrip().startswith("["):  # a JSON list (malformed JSON is named with its line)
            records = readers.load_json_records(path)
            located = [(f"{path} entry {i}", r) for i, r in enumerate(records)]
        else:  # JSON Lines: one object per line, blank lines skipped
            located = [(f"{path} line {i}", rec) for i, rec in readers.jsonl_records(
                text, path, hint="expected a JSON list of entries or JSON Lines (one entry per line)")]
        where = str(path)
    if not located:
        raise UserError(f"{where} holds no entries: there are no preference pairs to read")
    return [(loc, *_entry(record, loc)) for loc, record in located]


def _encode(tokenizer: Any, text: str, where: str) -> list[int]:
    try:
        return tokenizer.encode(text)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def encode_pairs(entries: Sequence[tuple[str, str, str, str]], tokenizer: Any, eos_id: int,
                 max_length: int) -> tuple[list[Pair], dict[str, int]]:
    """Token ids of each (where, prompt, chosen, rejected) entry (see the module doc), and the counts of
    entries left out or cut: {"same": chosen == rejected, "truncated", "no_response": cut to nothing}."""
    pairs: list[Pair] = []
    stats = {"same": 0, "truncated": 0, "no_response": 0}
    for where, prompt, chosen, rejected in entries:
        if chosen == rejected:
            stats["same"] += 1
            continue
        p = _encode(tokenizer, prompt, where)
        c = p + _encode(tokenizer, chosen, where) + [eos_id]
        r = p + _encode(tokenizer, rejected, where) + [eos_id]
        if max(len(c), len(r)) > max_length:
            stats["truncated"] += 1
            if len(p) >= max_length:
                stats["no_response"] += 1
                continue
            c, r = c[:max_length], r[:max_length]
        pairs.append(Pair(c, r, len(p)))
    return pairs, stats


# --- batches ------------------------------------------------------------------------------------
class PairBatch(dict):
    """A `collate` batch (a dict), which knows how several processes share it: process r of n takes
    pairs [r*B/n, (r+1)*B/n), both the chosen and the rejected row of each (`local_rows`), so that
    each pair's loss is computed where both its rows are."""

    def local_rows(self, r: int, n: int) -> PairBatch:
        b = self["input_ids"].shape[0] // 2
        if b % n:
            raise UserError(f"a batch of {b} preference pairs cannot be split evenly across {n} processes; make "
                            f"train.batch_size a multiple of the number of processes")
        k = b // n
        rows = list(range(r * k, (r + 1) * k)) + list(range(b + r * k, b + (r + 1) * k))  # chosen, then rejected
        return PairBatch({key: v[rows] for key, v in self.items()})


def collate(pairs: Sequence[Pair], pad_id: int, mask_prompt: bool = True) -> PairBatch:
    """B pairs as one batch of 2B rows: the B chosen sequences, then the B rejected ones.

    input_ids (2B, T): padded to the longest with `pad_id` (the end-of-text id);
    response_mask (2B, T) bool: True at the tokens whose log-probabilities count (the response's, or with
    mask_prompt false the prompt's too; never padding);
    ref_logps (2B,): the reference model's summed log-probabilities, in the same order.
    """
    import torch

    b = len(pairs)
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    t = max(len(r) for r in rows)
    input_ids = torch.full((2 * b, t), pad_id, dtype=torch.long)
    response_mask = torch.zeros((2 * b, t), dtype=torch.bool)
    for i, ids in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        response_mask[i, pairs[i % b].prompt_len if mask_prompt else 0:len(ids)] = True
    ref = [p.ref_chosen for p in pairs] + [p.ref_rejected for p in pairs]
    return PairBatch(input_ids=input_ids, response_mask=response_mask,
                     ref_logps=torch.tensor(ref, dtype=torch.float32))


# --- log-probabilities and the loss -----------------------------------------------------------------
def sequence_logprobs(model: Any, input_ids: Any, response_mask: Any) -> Any:
    """Summed log-probability (R,) of each row's tokens where `response_mask` (R, T) is True.

    Position t's logits predict token t+1, so token t+1 counts when response_mask[:, t+1] is True (a
    token at position 0 has no prediction). The head runs only where a counted token is predicted:
    the vocabulary-sized logits of prompts and padding are never made.
    """
    import torch

    h = model.features(input_ids)[:, :-1]  # (R, T-1, C): position t predicts token t+1
    rows, cols = response_mask[:, 1:].nonzero(as_tuple=True)
    logits = model.lm_head(h[rows, cols]).float()  # (N, vocab), N counted tokens
    targets = input_ids[rows, cols + 1]  # (N,)
    logp = logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)  # (N,)
    return torch.zeros(input_ids.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)


def dpo_loss(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any,
             beta: float) -> tuple[Any, Any, Any]:
    """(mean DPO loss, chosen rewards (B,), rejected rewards (B,)) from summed log-probabilities (B,)."""
    import torch.nn.functional as F

    reward_chosen = beta * (policy_chosen - ref_chosen)
    reward_rejected = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(reward_chosen - reward_rejected)  # = -logsigmoid(beta * (pi and ref log-ratios))
    return losses.mean(), reward_chosen.detach(), reward_rejected.detach()


def loss_fn(model: Any, batch: dict[str, Any], beta: float) -> Any:
    """The DPO loss of a `collate` batch: one forward pass over its chosen and rejected rows."""
    logps = sequence_logprobs(model, batch["input_ids"], batch["response_mask"])  # (2B,)
    b = logps.shape[0] // 2
    ref = batch["ref_logps"]
    return dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta)[0]


def reference_logprobs(model: Any, pairs: Sequence[Pair], batch_size: int, pad_id: int, mask_prompt: bool,
                       amp: Any = None, progress: bool = False) -> None:
    """Fill each pair's ref_chosen and ref_rejected with `model`'s summed log-probabilities (eval mode,
    no gradients), `batch_size` pairs at a time in their order; the model's weights are untouched.

    In order, because evaluation (`fixed_batches`) cuts a split the same way: the policy's first
    evaluation then runs the very computations that made the cache, so its rewards start at exactly 0.
    In a job of several processes, process r of n computes every n-th of these batches from the r-th,
    and all exchange their values (the same batches as one process cuts, so the same values)."""
    import contextlib

    import torch
    from tqdm import tqdm

    from scratchllm.runtime import eval_mode
    from scratchllm.train import distributed

    r, n = (distributed.rank(), distributed.world_size()) if distributed.active() else (0, 1)
    device = next(model.parameters()).device
    starts = range(0, len(pairs), batch_size)[r::n]  # this process's batches
    values: dict[int, list[float]] = {}  # first pair's index -> the batch's log-probabilities
    with eval_mode(model), torch.no_grad(), amp or contextlib.nullcontext():
        for start in tqdm(starts, disable=not progress, unit="batch", desc="reference", leave=False):
            batch = collate(pairs[start:start + batch_size], pad_id, mask_prompt)
            values[start] = sequence_logprobs(model, batch["input_ids"].to(device),
                                              batch["response_mask"].to(device)).float().cpu().tolist()
    if n > 1:
        values = {start: v for part in distributed.gather_objects(values) for start, v in part.items()}
    for start, logps in values.items():
        chunk = pairs[start:start + batch_size]
        for j, pair in enumerate(chunk):
            pair.ref_chosen, pair.ref_rejected = logps[j], logps[len(chunk) + j]


def preference_metrics(model: Any, batches: Sequence[dict[str, Any]], beta: float) -> dict[str, float]:
    """Over `batches` (no gradients): loss, reward_chosen, reward_rejected, reward_margin (means over
    pairs), preference_accuracy (margin > 0); and the summed log-probability margins chosen - rejected
    of the policy (logp_margin, prefers_chosen: margin > 0) and of the reference (ref_logp_margin,
    ref_prefers_chosen)."""
    import torch

    device = next(model.parameters()).device
    parts: dict[str, list] = {k: [] for k in ("loss", "chosen", "rejected", "pi", "ref")}
    with torch.no_grad():
        for batch in batches:
            ids, mask, ref = (batch[k].to(device) for k in ("input_ids", "response_mask", "ref_logps"))
            logps = sequence_logprobs(model, ids, mask).float()
            b = logps.shape[0] // 2
            _, chosen, rejected = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta)
            parts["chosen"].append(chosen.cpu())
            parts["rejected"].append(rejected.cpu())
            parts["pi"].append((logps[:b] - logps[b:]).cpu())
            parts["ref"].append((ref[:b] - ref[b:]).cpu())
    if not parts["chosen"]:
        return {}
    chosen, rejected, pi, ref = (torch.cat(parts[k]).double() for k in ("chosen", "rejected", "pi", "ref"))
    margin = chosen - rejected
    return {"loss": float(-torch.nn.functional.logsigmoid(margin).mean()),
            "reward_chosen": float(chosen.mean()), "reward_rejected": float(rejected.mean()),
            "reward_margin": float(margin.mean()), "preference_accuracy": float((margin > 0).double().mean()),
            "logp_margin": float(pi.mean()), "prefers_chosen": float((pi > 0).double().mean()),
            "ref_logp_margin": float(ref.mean()), "ref_prefers_chosen": float((ref > 0).double().mean())}


# What the loop logs per split at each evaluation (metrics.jsonl): the loss and the rewards.
LOGGED = ("loss", "reward_chosen", "reward_rejected", "reward_margin", "preference_accuracy")


# --- the plan for finetune.job ---------------------------------------------------------------------
def plan(config: Any, model: Any, tokenizer: Any, source_meta: dict[str, Any]) -> Plan:
    """The preference pairs, their reference log-probabilities (from `model`, still the untouched source:
    computed here, once), the batches, the loss, the evaluation and the report (see the module doc)."""
    from scratchllm.finetune.batches import ExampleBatches, fixed_batches
    from scratchllm.finetune.instruct import end_of_text_id, generation_settings, split_entries
    from scratchllm.interop.load import GENERATION_FILE
    from scratchllm.runtime import autocast, eval_mode, pick_device
    from scratchllm.train import distributed
    from scratchllm.train.loop import resolve_precision

    tc, beta = config.train, config.beta
    context = model.config.context_length
    if config.max_length is not None and config.max_length > context:
        raise UserError(f"max_length {config.max_length} is longer than the model's context of {context} tokens; "
                        f"lower max_length or leave it out")
    max_length = config.max_length or context
    eos = end_of_text_id(tokenizer, source_meta)
    entries = read_preferences(config.data)
    pairs, stats = encode_pairs(entries, tokenizer, eos, max_length)
    if not pairs:
        why = "its chosen equals its rejected response" if stats["same"] == len(entries) else \
            f"its prompt fills max_length {max_length} or chosen equals rejected"
        raise UserError(f"{config.data}: no usable preference pair: in every entry {why}; DPO needs pairs "
                        f"whose responses differ")
    train, val, test = split_entries(pairs, config.split, tc.seed)
    left_out = "".join([f"; {stats['same']} with chosen == rejected left out" if stats["same"] else "",
                        f"; {stats['truncated']} truncated to {max_length} tokens" if stats["truncated"] else "",
                        f" ({stats['no_response']} dropped: no response left)" if stats["no_response"] else ""])
    print(f"dpo: {len(pairs)} preference pairs from {config.data}{left_out}; split {len(train)}/{len(val)}/"
          f"{len(test)}; reference log-probabilities of {config.init_from or 'the model'}, computed once")

    pad = partial(collate, pad_id=eos, mask_prompt=config.mask_prompt)
    batches = ExampleBatches(train, tc.batch_size, pad, seed=tc.seed, lengths=[p.length for p in train],
                             bucket=True)  # (collates when iterated: after the cache is filled)

    device = distributed.device_for(tc.device) if distributed.active() else pick_device(tc.device)
    amp = autocast(device, resolve_precision(tc.precision, device))  # as the loop will run the policy
    model.to(device)
    for split in (train, val, test):  # each pair once, before training changes the model
        reference_logprobs(model, split, tc.batch_size, eos, config.mask_prompt, amp=amp,
                           progress=tc.progress and distributed.is_main())
    watched = {"train": fixed_batches(train, tc.batch_size, pad, limit=tc.eval_batches),
               "val": fixed_batches(val, tc.batch_size, pad, limit=tc.eval_batches)}

    def eval_fn(m: Any) -> dict[str, float]:
        out = {}
        for split, fixed in watched.items():
            metrics = preference_metrics(m, fixed, beta)
            out.update({f"{split}_{k}": metrics[k] for k in LOGGED if k in metrics})
        return out

    def report(m: Any, folder: Path) -> dict[str, Any]:
        import torch

        with eval_mode(m), torch.no_grad(), amp:
            metrics = preference_metrics(m, fixed_batches(test, tc.batch_size, pad), beta)
        if not metrics:
            return {}
        result = {
            "test": {"pairs": len(test), **{k: metrics[k] for k in LOGGED}},
            # summed log-probability of chosen minus rejected, mean over the test pairs, and the fraction
            # where it is positive: the source model (the reference; its own reward margin is 0) and after
            "before": {"logp_margin": metrics["ref_logp_margin"], "prefers_chosen": metrics["ref_prefers_chosen"]},
            "after": {"logp_margin": metrics["logp_margin"], "prefers_chosen": metrics["prefers_chosen"]},
        }
        print(f"dpo test ({len(test)} pairs): loss {metrics['loss']:.4f}, reward margin "
              f"{metrics['reward_margin']:.4f}, preference accuracy {metrics['preference_accuracy']:.3f}; "
              f"prefers chosen {metrics['ref_prefers_chosen']:.3f} before, {metrics['prefers_chosen']:.3f} after")
        return result

    generation = generation_settings(source_meta, "alpaca", eos)

    def write_generation(path: Path) -> None:
        path.write_text(json.dumps(generation, indent=1), encoding="utf-8")

    return Plan(model=model, batches=batches, loss_fn=partial(loss_fn, beta=beta), eval_fn=eval_fn,
                meta={"kind": "dpo", "beta": beta, "template": "alpaca"},
                files={GENERATION_FILE: write_generation}, report=report,
                data={"name": config.data, "pairs": {"train": len(train), "val": len(val), "test": len(test)},
                      "left_out_same": stats["same"], "truncated": stats["truncated"],
                      "dropped_no_response": stats["no_response"], "max_length": max_length,
                      "mask_prompt": config.mask_prompt})
