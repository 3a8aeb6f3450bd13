"""Instruction finetuning (the book's chapter 7): a model learns to answer instructions.

`plan(config, model, tokenizer, source_meta)` is what `finetune.job.finetune` asks of this method:
1. Data (`read_entries`): the book's `alpaca-book` (1,100 entries), or a JSON list / JSONL file of
   {"instruction", "input" (optional), "output"} entries; with `template = "chat"`, entries of
   {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]} (Alpaca entries are
   read as one user turn and its answer). Bad entries stop the run before anything is written, with
   the file and the entry (JSON: its index from 0) or line (JSONL: from 1) named.
2. Split (`split_entries`): train, test, then validation (the rest), cut in that order as the book
   does, after a shuffle with train.seed (`shuffle = false`: the file's order, the book's split).
3. Each entry becomes its text (`entry_text`: the Alpaca prompt, `### Response:` and the output; or
   the chat turns) and then an `Example`: its tokens and which of them are responses.
4. Batches (`collate`, the book's `custom_collate_fn`): the end-of-text id appended to each example,
   padded with it to the batch's longest, inputs and targets shifted by one, every end-of-text after
   the first in a row's targets set to -100 (only the one that ends the text is learned), optionally
   the prompt's targets too (`mask_prompt`, the book's exercise 7.2), then cut to `max_length`.
   With the prompt masked, an example whose response begins past max_length has no target left
   and is left out (counted: the model card's "skipped").
   Training batches come length-grouped (`ExampleBatches(bucket=True)`), each with the number of
   targets that count in it; the loss (`loss_fn`) is the next-token cross-entropy averaged over
   those targets, as `train.losses.lm_loss`, also when several processes share the batch; evaluation
   is the validation loss on fixed batches.
5. Report (`Plan.report`, after training): greedy responses to the test split's prompts, by the
   finetuned model and by the model it started from (reloaded), written beside the references in
   the book's format (each entry plus "model_response": test-responses.json, base-responses.json)
   and scored with ROUGE-L and exact match (`evaluate.text`); report.json also counts the training
   and validation examples that were cut to max_length ("truncated").
Every checkpoint carries generation.json (`interop.load.GENERATION_FILE`) with "prompt_template"
("alpaca" or "chat"), which `scratchllm generate --instruction` reads.

Text is encoded with special tokens allowed, as `generate.text` encodes prompts, so training and
generation see the same tokens (a chat template's markers become the tokenizer's special tokens
where it has them). Not here: the templates (`generate.templates`), the loop (`train.loop`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.errors import UserError
from scratchllm.files import write_atomic
from scratchllm.finetune.batches import ExampleBatches, fixed_batches
from scratchllm.finetune.job import Plan
from scratchllm.generate.templates import (
    ALPACA_RESPONSE,
    alpaca_prompt,
    chat_prompt,
    check_messages,
    render_chat,
    template_stops,
)

# Targets with this value are left out of the loss (torch's cross_entropy default, the book's).
IGNORE_INDEX = -100
TEST_RESPONSES = "test-responses.json"
BASE_RESPONSES = "base-responses.json"
# Test examples shown in report.json.
REPORT_EXAMPLES = 3


# --- data ---------------------------------------------------------------------------------------------
def _read_jsonl(path: Path) -> list[tuple[str, Any]]:
    from scratchllm.data.readers import decode, jsonl_records, read_bytes

    out = [(f"{path} line {n}", rec) for n, rec in jsonl_records(decode(read_bytes(path), str(path)), path)]
    if not out:
        raise UserError(f"{path} is empty: there are no entries to read")
    return out


def _raw_entries(data: str) -> tuple[list[tuple[str, Any]], str]:
    """[(where, raw entry)] of a named dataset or a JSON/JSONL file, and the data's short name."""
    from scratchllm.data.readers import load_json_records
    from scratchllm.data.sources import DATASETS, load_records

    if data in DATASETS:
        if not DATASETS[data].reader.startswith("alpaca"):  # alpaca-book, alpaca-book-preference (its "output")
            raise UserError(f"dataset {data} is not instruction data; use alpaca-book or a JSON/JSONL file")
        return [(f"{data} entry {i}", r) for i, r in enumerate(load_records(data))], data
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"{data} is neither a file nor an instruction dataset; give alpaca-book or a JSON/JSONL "
                        f"file of {{instruction, input, output}} entries")
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path), path.stem
    return [(f"{path} entry {i}", r) for i, r in enumerate(load_json_records(path))], path.stem


def _text_field(entry: dict, key: str, where: str, required: bool = True) -> str:
    if key not in entry or (entry[key] is None and not required):
        if required:
            raise UserError(f"{where} has no {key!r}; each entry needs instruction and output (input is optional)")
        return ""
    if not isinstance(entry[key], str):
        raise UserError(f"{where}: {key!r} is {type(entry[key]).__name__}, expected text")
    return entry[key]


def check_entry(entry: Any, template: str, where: str) -> dict[str, Any]:
    """A raw entry checked for `template`: an Alpaca entry with text instruction, input ("" when
    missing) and output; or a chat entry ({"messages"}) with known roles and an assistant turn (an
    Alpaca entry becomes one user turn and its answer). Anything else: a UserError naming `where`."""
    if not isinstance(entry, dict):
        raise UserError(f"{where} is a JSON {type(entry).__name__}, expected an object with instruction, input "
                        f"and output" + (" (or messages)" if template == "chat" else ""))
    if "messages" in entry:
        if template != "chat":
            raise UserError(f"{where} is a chat entry (messages); finetune chat data with --template chat")
        messages = check_messages(entry["messages"], where)
        if not any(m["role"] == "assistant" for m in messages):
            raise UserError(f"{where} has no assistant turn: nothing to learn; each conversation needs at least "
                            f"one message with role 'assistant'")
        return {**entry, "messages": messages}
    instruction = _text_field(entry, "instruction", where)
    output = _text_field(entry, "output", where)
    checked = {**entry, "instruction": instruction, "input": _text_field(entry, "input", where, required=False),
               "output": output}
    return checked


def read_entries(data: str, template: str) -> tuple[list[dict[str, Any]], str]:
    """The checked entries of `data` (see the module doc) and the data's short name."""
    raw, name = _raw_entries(data)
    if not raw:
        raise UserError(f"{data} has no entries")
    return [check_entry(e, template, where) for where, e in raw], name


def split_entries(entries: Sequence[Any], fractions: Sequence[float], seed: int, shuffle: bool = True
                  ) -> tuple[list[Any], list[Any], list[Any]]:
    """(train, validation, test) the book's way: int(n * train) entries for training, then int(n * test)
    for testing, the rest for validation; shuffled with `seed` first unless `shuffle` is false.

    >>> train, val, test = split_entries(list(range(20)), (0.85, 0.05, 0.10), seed=0, shuffle=False)
    >>> len(train), val, test
    (17, [19], [17, 18])
    """
    order = list(entries)
    if shuffle:
        order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    n_train, n_test = int(len(order) * fractions[0]), int(len(order) * fractions[2])
    return order[:n_train], order[n_train + n_test:], order[n_train:n_train + n_test]


def entry_text(entry: dict[str, Any], template: str) -> tuple[str, list[tuple[int, int]]]:
    """(text, response spans): what the model trains on and the [start, end) characters it answers.
    Alpaca: the book's format_input, "### Response:" and the output; the response span begins at
    the response header, as the book's exercise 7.2 masks (format_input's tokens only)."""
    if template == "chat":
        return render_chat(_messages(entry))
    prompt = alpaca_prompt(entry["instruction"], entry["input"])
    text = prompt + ALPACA_RESPONSE + entry["output"]
    return text, [(len(prompt), len(text))]


def _messages(entry: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" in entry:
        return entry["messages"]
    user = entry["instruction"] + (f"\n\n{entry['input']}" if entry["input"] else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": entry["output"]}]


def prompt_and_reference(entry: dict[str, Any], template: str) -> tuple[str, str]:
    """(prompt, reference) of a test entry: the text to generate from and the response it should give.
    Chat: the conversation up to its last assistant turn, and that turn's content."""
    if template == "chat":
        messages = _messages(entry)
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        return chat_prompt(messages[:last]), messages[last]["content"]
    return alpaca_prompt(entry["instruction"], entry["input"]) + ALPACA_RESPONSE, entry["output"]


# --- examples and batches -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    """One training example: its tokens (prompt and response, without the end-of-text `collate`
    appends) and the [start, end) token ranges of its responses (the rest is prompt)."""

    ids: list[int]
    spans: tuple[tuple[int, int], ...] = ()


def encode_example(tokenizer: Any, text: str, spans: Sequence[tuple[int, int]] = ()) -> Example:
    """`text` as tokens; a token belongs to a response when its first byte lies in one of `spans`
    (character ranges of `text`)."""
    ids = tokenizer.encode(text, allowed_special="all")
    if not spans:
        return Example(ids)
    byte_spans = [(len(text[:a].encode()), len(text[:b].encode())) for a, b in spans]
    at, flags = 0, []
    for t in ids:
        flags.append(any(a <= at < b for a, b in byte_spans))
        at += len(tokenizer.decode_bytes([t]))
    token_spans, start = [], None
    for i, f in enumerate([*flags, False]):  # runs of response tokens
        if f and start is None:
            start = i
        elif not f and start is not None:
            token_spans.append((start, i))
            start = None
    return Example(ids, tuple(token_spans))


def collate(batch: Sequence[Example | Sequence[int]], pad_id: int, max_length: int | None = None,
            mask_prompt: bool = False, ignore_index: int = IGNORE_INDEX) -> tuple[Any, Any]:
    """(inputs, targets), each (B, T) long: the book's `custom_collate_fn` (module doc, step 4).

    `batch` holds Examples or plain lists of ids (no masking for those). `pad_id` is the end-of-text
    id (appended to each example, then padding). With `mask_prompt`, target i is -100 unless token
    i + 1 is a response token or the appended end-of-text. T is the longest example's length, cut
    to `max_length`.

    >>> x, y = collate([[5, 6, 7], [8]], pad_id=0)
    >>> x.tolist(), y.tolist()
    ([[5, 6, 7], [8, 0, 0]], [[6, 7, 0], [0, -100, -100]])
    """
    import torch

    items = [e if isinstance(e, Example) else Example(list(e)) for e in batch]
    width = max(len(e.ids) for e in items) + 1
    seq = torch.full((len(items), width), pad_id, dtype=torch.long)  # (B, longest + 1)
    for r, e in enumerate(items):
        seq[r, :len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
    inputs, targets = seq[:, :-1].clone(), seq[:, 1:].clone()  # (B, longest) each
    is_pad = targets == pad_id
    targets[is_pad & (is_pad.cumsum(1) > 1)] = ignore_index  # every end-of-text but a row's first
    if mask_prompt:
        for r, e in enumerate(items):
            n = len(e.ids)
            response = torch.zeros(n + 1, dtype=torch.bool)  # per token, with the end-of-text at n
            for a, b in e.spans:
                response[a:b] = True
            response[n] = True
            row = targets[r, :n]  # targets of positions 0..n-1: tokens 1..n
            row[~response[1:]] = ignore_index
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    return inputs, targets


def counted_batch(batch: Sequence[Example | Sequence[int]], **settings: Any) -> tuple[Any, Any, int]:
    """(inputs, targets, counted): a training batch, `collate(batch, **settings)` and how many of its
    targets count (are not -100), for `loss_fn`."""
    inputs, targets = collate(batch, **settings)
    return inputs, targets, int((targets != settings.get("ignore_index", IGNORE_INDEX)).sum())


def loss_fn(model: Any, batch: tuple[Any, Any, int]) -> Any:
    """The next-token cross-entropy of a `counted_batch`, averaged over its counted targets.

    Several processes each get some rows of the batch (`train.distributed.local_rows`; `counted`
    stays the whole batch's) and their gradients are averaged; rows hold different numbers of
    counted targets, so each process's loss is its summed cross-entropy over its share of the count,
    counted / processes: their mean is the whole batch's mean, what one process computes (a mean of
    each process's own mean would weigh the targets of short rows more)."""
    import torch.nn.functional as F

    from scratchllm.train.distributed import world_size

    inputs, targets, counted = batch
    logits = model(inputs)  # (B, T, vocab)
    total = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total * world_size() / counted


def learnable(example: Example, max_length: int) -> bool:
    """Whether a prompt-masked example keeps a target within max_length: a response token (or the
    end-of-text after the text) at position max_length or before (target i is token i + 1)."""
    return min([a for a, _ in example.spans] + [len(example.ids)]) <= max_length


# --- the plan ---------------------------------------------------------------------------------------------
def end_of_text_id(tokenizer: Any, source_meta: dict[str, Any]) -> int:
    """The id that ends each example (and pads): the tokenizer's `<|endoftext|>`, else the source's
    first end-of-text id (generation.json's eos_token_id)."""
    if tokenizer.eot_id is not None:
        return int(tokenizer.eot_id)
    eos = (source_meta.get("generation") or {}).get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if not isinstance(eos, int):
        raise UserError(f"{source_meta.get('source', 'the model')}: its tokenizer has no <|endoftext|> and no "
                        f"eos_token_id is known; instruction finetuning needs an end-of-text token")
    return eos


def generation_settings(source_meta: dict[str, Any], template: str, eos_id: int) -> dict[str, Any]:
    """generation.json of the finetuned model: the source's settings (end-of-text ids, chat template),
    the end-of-text id if the source named none, and "prompt_template"."""
    generation = {k: v for k, v in (source_meta.get("generation") or {}).items() if k != "prompt_template"}
    generation.setdefault("eos_token_id", eos_id)
    return {**generation, "prompt_template": template}


def plan(config: Any, model: Any, tokenizer: Any, source_meta: dict[str, Any]) -> Plan:
    """The instruction-finetuning plan for `finetune.job.finetune` (see the module doc)."""
    from scratchllm.interop.load import GENERATION_FILE
    from scratchllm.train.loop import batch_eval_fn
    from scratchllm.train.losses import lm_loss

    context = model.config.context_length
    if config.max_length is not None and config.max_length > context:
        raise UserError(f"max_length {config.max_length} is longer than the model's context of {context} tokens; "
                        f"give at most {context} (or none)")
    max_length = config.max_length or context
    template, tc = config.template, config.train
    entries, name = read_entries(config.data, template)
    eos_id = end_of_text_id(tokenizer, source_meta)
    train, val, test = split_entries(entries, config.split, tc.seed, config.shuffle)

    def examples(split: list[dict[str, Any]]) -> list[Example]:
        return [encode_example(tokenizer, *entry_text(e, template)) for e in split]

    train_ex, val_ex = examples(train), examples(val)
    truncated = sum(len(e.ids) > max_length for e in train_ex + val_ex)
    if truncated:
        print(f"{truncated} of {len(train_ex) + len(val_ex)} examples are longer than {max_length} tokens and are "
              f"truncated")
    skipped = 0
    if config.mask_prompt:  # an example whose response starts past max_length has no target left: leave it out
        kept_train, kept_val = [e for e in train_ex if learnable(e, max_length)], \
            [e for e in val_ex if learnable(e, max_length)]
        skipped = len(train_ex) + len(val_ex) - len(kept_train) - len(kept_val)
        if not kept_train:
            raise UserError(f"no training example has a response within max_length {max_length} tokens (the prompt "
                            f"is masked); raise max_length or turn mask_prompt off")
        if skipped:
            print(f"{skipped} examples have no response token within {max_length} tokens and are left out")
        train_ex, val_ex = kept_train, kept_val
    settings = {"pad_id": eos_id, "max_length": max_length, "mask_prompt": config.mask_prompt}
    batch = partial(collate, **settings)
    batches = ExampleBatches(train_ex, tc.batch_size, partial(counted_batch, **settings), seed=tc.seed,
                             lengths=[len(e.ids) for e in train_ex], bucket=True)
    eval_fn = batch_eval_fn({"val": fixed_batches(val_ex, tc.batch_size, batch, limit=tc.eval_batches)}, lm_loss) \
        if val_ex else None
    generation = generation_settings(source_meta, template, eos_id)

    def write_generation(path: Path) -> None:
        path.write_text(json.dumps(generation, indent=1), encoding="utf-8")

    def report(trained: Any, folder: Path) -> dict[str, Any]:
        return write_report(trained, folder, config, tokenizer, test, generation["eos_token_id"], truncated)

    return Plan(model=model, batches=batches, loss_fn=loss_fn, eval_fn=eval_fn,
                meta={"template": template, "mask_prompt": config.mask_prompt, "max_length": max_length},
                files={GENERATION_FILE: write_generation}, report=report,
                data={"name": name, "entries": len(entries), "train": len(train), "validation": len(val),
                      "test": len(test), "template": template, "shuffle": config.shuffle, "truncated": truncated,
                      "skipped": skipped})


# --- the report -----------------------------------------------------------------------------------------
def respond(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, template: str, eos_id: Any,
            batch_size: int = 8) -> list[str]:
    """Greedy responses to `prompts` (stripped of surrounding whitespace), generated `batch_size` at a
    time in order of length (rows of a batch then wait little for each other); each equals its prompt's
    response generated alone."""
    from scratchllm.config.sample import SampleConfig
    from scratchllm.generate.text import complete_batch

    sample = SampleConfig(max_new_tokens=max_new_tokens, temperature=0.0, stop=template_stops(template))
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, c in zip(chunk, complete_batch(model, tokenizer, [prompts[i] for i in chunk], sample, eos_id=eos_id)):
            out[i] = c.text.strip()
    return out


def score(predictions: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """{"rougeL", "exact_match", "n"} (no rougeL when rouge-score is missing)."""
    from scratchllm.evaluate.text import exact_match, rouge_available, rouge_l

    out: dict[str, Any] = {}
    if rouge_available():
        out["rougeL"] = rouge_l(predictions, references)
    out["exact_match"] = exact_match(predictions, references)
    out["n"] = len(predictions)
    return out


def write_responses(path: Path, entries: Sequence[dict[str, Any]], responses: Sequence[str]) -> None:
    """The book's format: each entry with its "model_response" (JSON, indent 4), written atomically."""
    data = [{**e, "model_response": r} for e, r in zip(entries, responses)]
    write_atomic(path, json.dumps(data, indent=4, ensure_ascii=False))


def write_report(model: Any, folder: Path, config: Any, tokenizer: Any, test: list[dict[str, Any]], eos_id: Any,
                 truncated: int, load: Callable[..., Any] | None = None) -> dict[str, Any]:
    """Responses of the finetuned and the base model to the test split, and their scores (module doc, 5)."""
    from scratchllm.evaluate.text import ROUGE_MISSING, rouge_available

    results: dict[str, Any] = {"test": {"n": len(test)}, "truncated": truncated}
    if not test or config.max_new_tokens == 0:
        return results
    if load is None:
        from scratchllm.interop.load import load_any as load
    template, bs = config.template, config.train.batch_size
    prompts, references = zip(*(prompt_and_reference(e, template) for e in test))
    print(f"responding to the {len(test)} test prompts (up to {config.max_new_tokens} tokens each), then the "
          f"base model {config.init_from}")
    tuned = respond(model, tokenizer, prompts, config.max_new_tokens, template, eos_id, bs)
    write_responses(folder / TEST_RESPONSES, test, tuned)
    base_model, _, _ = load(config.init_from)
    base_model.to(next(model.parameters()).device)
    base = respond(base_model, tokenizer, prompts, config.max_new_tokens, template, eos_id, bs)
    del base_model
    write_responses(folder / BASE_RESPONSES, test, base)
    if not rouge_available():
        warnings.warn(ROUGE_MISSING, stacklevel=2)
    results = {"test": score(tuned, references), "base": score(base, references), "truncated": truncated}
    results["examples"] = [{"prompt": p, "reference": r, "response": t, "base_response": b}
                           for p, r, t, b in list(zip(prompts, references, tuned, base))[:REPORT_EXAMPLES]]
    rouge = "  ".join(f"{k} ROUGE-L {v['rougeL']:.3f}" for k, v in (("finetuned", results["test"]),
                                                                    ("base", results["base"])) if "rougeL" in v)
    print(f"test split: {rouge + '  ' if rouge else ''}exact match {results['test']['exact_match']:.3f} "
          f"(base {results['base']['exact_match']:.3f}); responses in {folder / TEST_RESPONSES}")
    return results
