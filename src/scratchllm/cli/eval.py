"""`scratchllm eval perplexity|choice|generation|judge|compare`: how good a model is, measured.

    scratchllm eval perplexity -m runs/shakespeare --dataset shakespeare --split val
    scratchllm eval perplexity -m gpt2-folder --file essay.txt --stride 512 --json
    scratchllm eval choice -m runs/shakespeare hellaswag_100.jsonl
    scratchllm eval generation runs/instruct            (its test-responses.json)
    scratchllm eval generation -m runs/instruct questions.json --max-new-tokens 128
    scratchllm eval judge runs/instruct/test-responses.json --judge-model llama3
    scratchllm eval compare runs/base runs/tuned runs/tuned-int8 --file test.txt --choices arc.jsonl --out cmp/

`perplexity` scores a text (the argument, --file, --dataset NAME or a path `data` reads, or standard
input) with a sliding window (`evaluate.perplexity`): perplexity, bits per byte (comparable across
tokenizers) and the loss. `--split train|val` scores the split of a run's prepared data: the
model's own run's when it was trained on that dataset, or a prepared data folder given as --dataset
(runs/data/<name>-...). `choice` scores a JSONL file of multiple-choice items as lm-evaluation-harness
does (`evaluate.multiple_choice`). `generation` scores responses against references with BLEU, chrF,
ROUGE-1/2/L and exact match (`evaluate.text`): a file of responses (the book's test-responses.json:
"model_response" and "output"), or, with --model, the responses the model generates to the file's
prompts. `judge` has a larger model score each response 0-100 over an OpenAI-compatible endpoint
(`evaluate.judge`). `compare` runs the same evaluations on several models and writes
report.md, report.json and report.png (`evaluate.compare`).

Every model folder `interop.load.load_any` reads is accepted. The results of each model are appended
to its MODEL_CARD.md ("## Evaluations") when it is a scratchllm run or checkpoint with a card
(`evaluate.card`); the scores of a responses file go on the card of the run folder that holds it;
--no-card leaves the card alone.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers) -> None:
    from scratchllm.cli import needs_action

    p = subparsers.add_parser("eval", help="measure a model: perplexity, multiple choice, generation metrics, judge",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="eval_action", metavar="ACTION")
    p.set_defaults(func=needs_action(p))

    ppl = sub.add_parser("perplexity", help="perplexity and bits per byte on a text, file or dataset",
                         description="Perplexity and bits per byte of a model on a text, with a sliding window.")
    ppl.add_argument("text", nargs="?", default=None, help="the text (default: --file, --dataset, else stdin)")
    _model_flag(ppl)
    _text_flags(ppl)
    _common_flags(ppl)
    ppl.set_defaults(func=cmd_perplexity)

    ch = sub.add_parser("choice", help="multiple-choice accuracy on a JSONL file (lm-evaluation-harness style)",
                        description="Multiple-choice accuracy (acc, acc_norm) on a JSONL file of "
                                    "{\"context\" or \"query\", \"choices\": [...], \"label\" (or \"gold\", "
                                    "\"answer\"): index} items, scored as lm-evaluation-harness does.")
    ch.add_argument("file", metavar="FILE.jsonl", help="the items, one JSON object a line")
    _model_flag(ch)
    _choice_flags(ch)
    _common_flags(ch)
    ch.set_defaults(func=cmd_choice)

    gen = sub.add_parser("generation", help="BLEU, chrF, ROUGE and exact match of responses against references",
                         description="BLEU and chrF (sacrebleu), ROUGE-1/2/L (rouge-score) and exact match of "
                                     "responses against references: the responses in FILE (JSON list or JSON "
                                     "Lines, the book's test-responses.json), or with --model those the model "
                                     "generates (greedy) to FILE's prompts: Alpaca entries (instruction, input) "
                                     "in the model's prompt template, else the --prompt-field text as it is.")
    gen.add_argument("file", metavar="FILE", help="the entries: JSON list or JSON Lines; without --model also an "
                                                  "instruction run's folder (its test-responses.json)")
    gen.add_argument("--model", "-m", default=None, help="generate the responses with this model (run, checkpoint, "
                                                         "Hugging Face or OpenAI folder) instead of reading them")
    _field_flags(gen)
    gen.add_argument("--prompt-field", default="prompt",
                     help="with --model, for entries without \"instruction\": the field holding the prompt "
                          "(default prompt)")
    gen.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                     help="with --model: tokens generated per response at most (default 256)")
    gen.add_argument("--out", default=None, metavar="FILE.json",
                     help="with --model: where the responses go, in the book's format (default: FILE's name with "
                          "-responses.json, beside it)")
    _common_flags(gen)
    gen.set_defaults(func=cmd_generation)

    jd = sub.add_parser("judge", help="a larger model scores each response 0-100 (OpenAI-compatible endpoint)",
                        description="LLM-as-judge (the book's chapter 7): each response of FILE scored 0-100 by a "
                                    "model behind an OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp's server, "
                                    "OpenAI). Writes answers.jsonl (every raw answer), judge.json (mean, outcomes, "
                                    "histogram) and scores.png into --out.")
    jd.add_argument("file", metavar="FILE", help="the responses: JSON list or JSON Lines (test-responses.json), or "
                                                 "an instruction run's folder")
    from scratchllm.evaluate import judge as j

    jd.add_argument("--judge-url", default=None, metavar="URL",
                    help=f"the endpoint's base URL (default: {j.ENV_URL}, else Ollama's {j.DEFAULT_URL})")
    jd.add_argument("--judge-model", default=None, metavar="NAME",
                    help=f"the judge model (default: {j.ENV_MODEL}, else {j.DEFAULT_MODEL})")
    jd.add_argument("--judge-key", default=None, metavar="KEY",
                    help=f"API key sent as a bearer token (default: {j.ENV_KEY}, else OPENAI_API_KEY; prefer the "
                         f"environment: a flag shows in the process list)")
    jd.add_argument("--prompt", default=None, metavar="FILE",
                    help="a prompt template file with {input}, {output}, {response} or any {field} (default: the "
                         "book's)")
    _field_flags(jd)
    jd.add_argument("--timeout", type=float, default=j.DEFAULT_TIMEOUT, metavar="S",
                    help=f"seconds one request may take (default {j.DEFAULT_TIMEOUT:g})")
    jd.add_argument("--retries", type=int, default=j.DEFAULT_RETRIES, metavar="N",
                    help=f"retries of a failed request, with exponential backoff (default {j.DEFAULT_RETRIES})")
    jd.add_argument("--backoff", type=float, default=j.DEFAULT_BACKOFF, metavar="S",
                    help=f"seconds before the first retry, doubled each time (default {j.DEFAULT_BACKOFF:g})")
    jd.add_argument("--max-wait", type=float, default=j.DEFAULT_MAX_WAIT, metavar="S",
                    help=f"longest wait for one answer, retries included (default {j.DEFAULT_MAX_WAIT:g})")
    jd.add_argument("--out", default=None, metavar="DIR",
                    help="where answers.jsonl, judge.json and scores.png go (default: FILE's name with -judge, "
                         "beside it)")
    jd.add_argument("--json", action="store_true", help="print the results as one JSON object")
    jd.add_argument("--no-card", action="store_true", help="do not append the results to the run's MODEL_CARD.md")
    jd.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    jd.set_defaults(func=cmd_judge)

    cmp = sub.add_parser("compare", help="several models on the same evaluations: Markdown, JSON, bar chart",
                         description="Run the same evaluations on several models; write report.md, report.json "
                                     "and report.png into --out.")
    cmp.add_argument("models", nargs="+", metavar="MODEL", help="run, checkpoint, Hugging Face or OpenAI folders")
    cmp.add_argument("--text", default=None, help="a text to score (perplexity)")
    _text_flags(cmp)
    cmp.add_argument("--choices", default=None, metavar="FILE.jsonl", help="multiple-choice items to score")
    _choice_flags(cmp)
    cmp.add_argument("--out", required=True, metavar="DIR", help="where report.md, report.json and report.png go")
    cmp.add_argument("--title", default="", help="the report's title")
    _common_flags(cmp)
    cmp.set_defaults(func=cmd_compare)


def _model_flag(p) -> None:
    p.add_argument("--model", "-m", required=True,
                   help="run folder, checkpoint folder, Hugging Face or OpenAI GPT-2 folder, or adapters folder")


def _text_flags(p) -> None:
    from scratchllm.cli.inputs import add_errors_option

    p.add_argument("--file", "-f", default=None, help="score this text file")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="score a named dataset or a path `data` reads (folder, .jsonl, .json, .csv), or a prepared "
                        "data folder with --split")
    p.add_argument("--split", choices=["all", "train", "val"], default="all",
                   help="with --dataset: all its documents (default), or the train/val split of a run's prepared "
                        "data (the model's run's, or the prepared folder given as --dataset)")
    p.add_argument("--data-dir", default=None, help="folder holding the datasets (default: SCRATCHLLM_DATA_DIR, "
                                                    "then the cache)")
    p.add_argument("--stride", type=int, default=None, metavar="N",
                   help="tokens between window starts (default: half the model's context; the context itself "
                        "gives non-overlapping windows)")
    add_errors_option(p)


def _field_flags(p) -> None:
    from scratchllm.evaluate.generation import REFERENCE_FIELD, RESPONSE_FIELD

    p.add_argument("--response-field", default=RESPONSE_FIELD,
                   help=f"the field holding each response (default {RESPONSE_FIELD}, the book's)")
    p.add_argument("--reference-field", default=REFERENCE_FIELD,
                   help=f"the field holding each reference (default {REFERENCE_FIELD}, the book's)")


def _choice_flags(p) -> None:
    p.add_argument("--delimiter", default=" ",
                   help="put between the context and each choice (default: a space, the harness's target_delimiter)")


def _common_flags(p) -> None:
    p.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="windows (perplexity, default 4) or choices (default 16) scored together")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--no-card", action="store_true", help="do not append the results to the model's MODEL_CARD.md")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")


# --- inputs ---------------------------------------------------------------------------------------------
def load(path: str, device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, meta) of a model folder; one without a tokenizer is an error."""
    from pathlib import Path

    from scratchllm.errors import UserError
    from scratchllm.interop.load import load_any
    from scratchllm.runtime import pick_device

    if not Path(path).exists():
        raise UserError(f"model {path} does not exist; pass a run or checkpoint folder (runs/<name>), a Hugging "
                        f"Face or OpenAI GPT-2 folder")
    model, tokenizer, meta = load_any(path, pick_device(device))
    if tokenizer is None:
        where = meta.get("checkpoint", path)
        raise UserError(f"{where} has no tokenizer; cannot turn text into tokens")
    return model, tokenizer, meta


def check_text_source(args) -> None:
    """At most one text source, and the options that need one (before any model is loaded)."""
    from scratchllm.errors import UserError

    given = [name for name, v in (("a text argument", getattr(args, "text", None)), ("--file", args.file),
                                  ("--dataset", args.dataset)) if v is not None]
    if len(given) > 1:
        raise UserError(f"give one text to score, not {' and '.join(given)}")
    if args.split != "all" and args.dataset is None:
        raise UserError("--split needs --dataset (the dataset whose prepared split to score)")
    if args.stride is not None and args.stride < 1:
        raise UserError(f"--stride must be >= 1, got {args.stride}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.data_dir is not None:
        from scratchllm.files import check_data_dir

        check_data_dir(args.data_dir)


def read_documents(args, metas: list[dict[str, Any]], stdin: bool = True) -> tuple[list[str], str] | None:
    """(documents, how they were named on the command line) of the text source, or None when none was given."""
    import shlex

    from scratchllm.cli.inputs import read_argument, read_file, read_stdin
    from scratchllm.errors import UserError

    if getattr(args, "text", None) is not None:
        docs, source = [read_argument(args.text, "the text argument", args.errors)], "TEXT"
    elif args.file is not None:
        docs, source = [read_file(args.file, args.errors, what="text file")], f"--file {shlex.quote(args.file)}"
    elif args.dataset is not None:
        source = f"--dataset {shlex.quote(args.dataset)}"
        if args.split == "all":
            from scratchllm.data.sources import load_documents

            docs = load_documents(args.dataset, args.data_dir, errors=args.errors, progress=not args.quiet)
        else:
            docs = split_documents(args.dataset, args.split, metas)
            source += f" --split {args.split}"
    elif stdin and not sys.stdin.isatty():
        docs, source = [read_stdin(args.errors)], "standard input"
    else:
        return None
    if not any(docs):
        raise UserError(f"the text to score ({source}) is empty")
    return docs, source


def split_documents(dataset: str, split: str, metas: list[dict[str, Any]]) -> list[str]:
    """The documents of a split of prepared data: `dataset` itself when it is a prepared folder, else the
    prepared data of the first model in `metas` that was trained on `dataset`."""
    from pathlib import Path

    import numpy as np

    from scratchllm.data.prepare import load_prepared
    from scratchllm.data.shards import META_FILE
    from scratchllm.errors import UserError

    folder = Path(dataset)
    if not (folder / META_FILE).is_file():
        found = [m.get("data_dir") for m in metas
                 if (m.get("run_config") or {}).get("data", {}).get("dataset") == dataset and m.get("data_dir")]
        found = [f for f in found if (Path(f) / META_FILE).is_file()]
        if not found:
            raise UserError(f"--split {split}: no model here was trained on {dataset} with its prepared data at "
                            f"hand; give the prepared data folder as --dataset (runs/data/<name>-...), or drop "
                            f"--split to score all of {dataset}")
        folder = Path(found[0])
    prepared = load_prepared(folder)
    ids = np.asarray(prepared.val if split == "val" else prepared.train)
    eot = prepared.tokenizer.eot_id
    pieces = np.split(ids, np.flatnonzero(ids == eot)) if eot is not None else [ids]
    docs = [prepared.tokenizer.decode([int(t) for t in p if t != eot]) for p in pieces]
    docs = [d for d in docs if d]
    if not docs:
        raise UserError(f"the {split} split of {folder} is empty")
    return docs


# --- results ----------------------------------------------------------------------------------------------
def now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def note_on_card(args, model_path: str, meta: dict[str, Any], command: str, results: dict[str, Any]) -> None:
    """Append `results` to the card of the model at `model_path` (a scratchllm folder with a card)."""
    if args.no_card or meta.get("format") != "scratchllm":
        return
    from scratchllm.evaluate.card import append_evaluation

    checkpoint = meta.get("checkpoint")
    entry = {"date": now(), "command": command,
             "results": {**({"checkpoint": checkpoint} if checkpoint else {}), **results}}
    try:
        card = append_evaluation(checkpoint or model_path, entry)
    except OSError as e:  # the results are printed already: a card that cannot be written is no reason to fail
        import warnings

        from scratchllm.errors import os_error_message

        warnings.warn(f"the results were not added to the model card: {os_error_message(e) or e}", stacklevel=2)
        return
    if card is not None:
        print(f"appended to {card}", file=sys.stderr)


def note_on_run_card(args, responses_file: str, command: str, results: dict[str, Any]) -> None:
    """Append `results` to the card of the run folder holding `responses_file` (runs/x/test-responses.json),
    if it has one."""
    from pathlib import Path

    from scratchllm.evaluate.card import append_evaluation, find_card

    folder = Path(responses_file).resolve().parent
    if args.no_card or find_card(folder) is None:
        return
    try:
        card = append_evaluation(folder, {"date": now(), "command": command, "results": results})
    except OSError as e:
        import warnings

        from scratchllm.errors import os_error_message

        warnings.warn(f"the results were not added to the model card: {os_error_message(e) or e}", stacklevel=2)
        return
    if card is not None:
        print(f"appended to {card}", file=sys.stderr)


def card_numbers(ppl: Any = None, choice: Any = None) -> dict[str, Any]:
    """The numbers a card entry shows."""
    out: dict[str, Any] = {}
    if ppl is not None:
        out.update({"perplexity": ppl.perplexity, "bits per byte": ppl.bits_per_byte, "loss": ppl.loss,
                    "tokens": ppl.tokens, "bytes": ppl.bytes, "stride": ppl.stride})
    if choice is not None:
        out.update({"acc": choice.acc, "acc_norm": choice.acc_norm, "items": choice.items})
    return out


def print_json(obj: Any) -> None:
    import json

    sys.stdout.write(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def describe_ppl(ppl: Any) -> str:
    return (f"perplexity {ppl.perplexity:.4f}  bits per byte {ppl.bits_per_byte:.4f}  loss {ppl.loss:.4f} nats/token"
            f"\n({ppl.tokens:,} tokens, {ppl.bytes:,} bytes, {ppl.windows:,} windows of {ppl.context} tokens, "
            f"stride {ppl.stride})")


def describe_choice(r: Any) -> str:
    return (f"acc {r.acc:.4f} ± {r.acc_stderr:.4f}  acc_norm {r.acc_norm:.4f} ± {r.acc_norm_stderr:.4f}  "
            f"({r.items:,} items)")


def ppl_options(args) -> dict[str, Any]:
    from scratchllm.evaluate.perplexity import DEFAULT_BATCH_SIZE

    return {"stride": args.stride, "batch_size": args.batch_size or DEFAULT_BATCH_SIZE, "progress": not args.quiet}


def choice_options(args) -> dict[str, Any]:
    from scratchllm.evaluate.multiple_choice import DEFAULT_BATCH_SIZE

    return {"delimiter": args.delimiter, "batch_size": args.batch_size or DEFAULT_BATCH_SIZE,
            "progress": not args.quiet}


def check_stride(args, model) -> None:
    from scratchllm.errors import UserError

    ctx = model.config.context_length
    if args.stride is not None and args.stride > ctx:
        raise UserError(f"--stride must be between 1 and the model's context ({ctx}), got {args.stride}")


# --- commands -----------------------------------------------------------------------------------------------
def cmd_perplexity(args) -> int:
    import shlex

    from scratchllm.errors import UserError
    from scratchllm.evaluate.perplexity import perplexity

    check_text_source(args)
    needs_meta = args.dataset is not None and args.split != "all"
    docs = None if needs_meta else read_documents(args, [])
    if docs is None and not needs_meta:
        raise UserError("give a text to score: an argument, --file FILE, --dataset NAME, or pipe it in")
    model, tokenizer, meta = load(args.model, args.device)
    check_stride(args, model)
    if docs is None:
        docs = read_documents(args, [meta])
    documents, source = docs
    ppl = perplexity(model, tokenizer, documents, **ppl_options(args))
    stride = f" --stride {args.stride}" if args.stride is not None else ""
    command = f"scratchllm eval perplexity -m {shlex.quote(args.model)} {source}{stride}"
    if args.json:
        print_json({"model": args.model, "text": source, **ppl.to_dict()})
    else:
        print(describe_ppl(ppl))
    note_on_card(args, args.model, meta, command, card_numbers(ppl=ppl))
    return 0


def cmd_choice(args) -> int:
    import shlex

    from scratchllm.evaluate.multiple_choice import read_items, score_items

    if args.batch_size is not None and args.batch_size < 1:
        from scratchllm.errors import UserError

        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    items = read_items(args.file)  # a bad file is an error before the model is loaded
    model, tokenizer, meta = load(args.model, args.device)
    result = score_items(model, tokenizer, items, **choice_options(args))
    command = f"scratchllm eval choice -m {shlex.quote(args.model)} {shlex.quote(args.file)}"
    if args.json:
        print_json({"model": args.model, "file": args.file, **result.to_dict(per_item=True)})
    else:
        print(describe_choice(result))
    note_on_card(args, args.model, meta, command, card_numbers(choice=result))
    return 0


def cmd_compare(args) -> int:
    import gc
    import shlex
    from pathlib import Path

    from scratchllm.errors import UserError
    from scratchllm.evaluate.compare import write_report
    from scratchllm.evaluate.multiple_choice import read_items, score_items
    from scratchllm.evaluate.perplexity import perplexity

    check_text_source(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the report")
    import os
    import tempfile

    out.mkdir(parents=True, exist_ok=True)  # proved writable before any model is scored
    fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=out)
    os.close(fd)
    os.unlink(probe)
    items = read_items(args.choices) if args.choices is not None else None
    needs_meta = args.dataset is not None and args.split != "all"
    docs = None if needs_meta else read_documents(args, [], stdin=False)
    if docs is None and items is None and not needs_meta:
        raise UserError("give the evaluations to compare on: a text (--text, --file or --dataset) and/or "
                        "--choices FILE.jsonl")
    rows, metas = [], []
    if needs_meta:  # the split of the first model trained on the dataset: every model scores the same text
        from scratchllm.checkpoint.folder import read_state
        from scratchllm.checkpoint.load import resolve_checkpoint

        for path in args.models:
            try:
                metas.append(read_state(resolve_checkpoint(path)))  # state.json: run_config and data_dir
            except UserError:
                continue  # not a scratchllm run or checkpoint: it has no prepared data
        docs = read_documents(args, metas, stdin=False)
    setup: dict[str, Any] = {}
    if docs is not None:
        setup["text"] = docs[1]
    if items is not None:
        setup["choices"] = f"{args.choices} ({len(items)} items)"
    parts = ["scratchllm eval compare", *map(shlex.quote, args.models)]
    if docs is not None:
        parts.append(docs[1] + (f" --stride {args.stride}" if args.stride is not None else ""))
    if items is not None:
        parts.append(f"--choices {shlex.quote(args.choices)}")
    command = " ".join(parts + [f"--out {shlex.quote(args.out)}"])
    for path in args.models:
        print(f"[{path}]", file=sys.stderr)
        model, tokenizer, meta = load(path, args.device)
        row: dict[str, Any] = {"model": path}
        ppl = choice = None
        if docs is not None:
            check_stride(args, model)
            ppl = perplexity(model, tokenizer, docs[0], **ppl_options(args))
            row.update({k: v for k, v in ppl.to_dict().items() if k not in ("context", "stride", "windows")})
        if items is not None:
            choice = score_items(model, tokenizer, items, **choice_options(args))
            row.update(choice.to_dict())
        rows.append(row)
        note_on_card(args, path, meta, command, card_numbers(ppl, choice))
        del model
        gc.collect()
    paths = write_report(rows, out, title=args.title, setup=setup)
    if args.json:
        print_json({"setup": setup, "models": rows, "report": {k: str(v) for k, v in paths.items()}})
    else:
        from scratchllm.evaluate.compare import markdown

        print(markdown(rows, args.title, setup))
        print(f"wrote {paths['markdown']}, {paths['json']}, {paths['chart']}")
    return 0


# --- generated text ------------------------------------------------------------------------------------------
TEXT_METRICS = (("bleu", "BLEU"), ("chrf", "chrF"), ("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"),
                ("rougeL", "ROUGE-L"), ("exact_match", "exact match"))


def check_output(path: Any) -> None:
    """`path` can be written: not a folder, in a folder that is (made here if missing) writable."""
    from scratchllm.errors import UserError
    from scratchllm.train.run import ensure_writable

    if path.is_dir():
        raise UserError(f"--out {path} is a folder; give a file name for the responses")
    ensure_writable(path.parent)


def generate_responses(args, entries: list[Any], out: Any) -> tuple[list[str], list[str], Any]:
    """(responses, references, meta): greedy responses of --model to the entries' prompts (module doc)."""
    from scratchllm.errors import UserError
    from scratchllm.evaluate.generation import text_field
    from scratchllm.finetune.instruct import check_entry, end_of_text_id, prompt_and_reference, respond

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    references = [text_field(e, args.reference_field, "--reference-field") for e in entries]
    model, tokenizer, meta = load(args.model, args.device)
    check_output(out)  # before the generating, which may take long
    template = (meta.get("generation") or {}).get("prompt_template") or "alpaca"
    prompts = []
    for e in entries:
        if "instruction" in e.fields or "messages" in e.fields:
            fields = {**e.fields, "output": e.fields.get("output", "")}
            prompts.append(prompt_and_reference(check_entry(fields, template, e.where), template)[0])
        else:
            prompts.append(text_field(e, args.prompt_field, "--prompt-field"))
    eos = tokenizer.eot_id if tokenizer.eot_id is not None else end_of_text_id(tokenizer, meta)
    responses = respond(model, tokenizer, prompts, args.max_new_tokens, template, eos, args.batch_size or 8)
    return responses, references, meta


def cmd_generation(args) -> int:
    import json
    import shlex
    from pathlib import Path

    from scratchllm.evaluate.generation import read_entries, read_pairs
    from scratchllm.evaluate.text import text_metrics
    from scratchllm.files import write_atomic

    if args.model is None:
        from scratchllm.evaluate.generation import responses_file

        args.file = str(responses_file(args.file))
    command = f"scratchllm eval generation {shlex.quote(args.file)}"
    if args.model is None:
        _, responses, references = read_pairs(args.file, args.response_field, args.reference_field)
        metrics = text_metrics(responses, references)
        out = None
    else:
        entries = read_entries(args.file)  # a bad file is an error before the model is loaded
        source = Path(args.file)
        out = Path(args.out) if args.out else source.with_name(source.stem + "-responses.json")
        responses, references, meta = generate_responses(args, entries, out)
        data = [{**e.fields, args.response_field: r} for e, r in zip(entries, responses)]
        write_atomic(out, json.dumps(data, indent=4, ensure_ascii=False))
        metrics = text_metrics(responses, references)
        command += f" -m {shlex.quote(args.model)} --max-new-tokens {args.max_new_tokens}"
    numbers = {k: metrics[k] for k, _ in TEXT_METRICS} | {"pairs": metrics["n"]}
    if args.json:
        print_json({"file": args.file, **({"model": args.model, "responses": str(out)} if out else {}), **metrics})
    else:
        print("  ".join(f"{label} {metrics[k]:.2f}" if k in ("bleu", "chrf") else f"{label} {metrics[k]:.4f}"
                        for k, label in TEXT_METRICS) + f"  ({metrics['n']:,} pairs)")
        print(f"BLEU {metrics['signatures']['bleu']}; chrF {metrics['signatures']['chrf']}", file=sys.stderr)
        if out is not None:
            print(f"responses in {out}", file=sys.stderr)
    if args.model is None:
        note_on_run_card(args, args.file, command, numbers)
    else:
        note_on_card(args, args.model, meta, command, numbers)
    return 0


def cmd_judge(args) -> int:
    import json
    import shlex
    from pathlib import Path

    from scratchllm.errors import UserError
    from scratchllm.evaluate.generation import read_pairs, responses_file
    from scratchllm.evaluate.judge import PROMPT, Endpoint, fill_prompt, judge, plot_histogram, read_prompt
    from scratchllm.files import write_atomic

    endpoint = Endpoint.from_env(args.judge_url, args.judge_model, args.judge_key, timeout=args.timeout,
                                 retries=args.retries, backoff=args.backoff, max_wait=args.max_wait)
    template = read_prompt(args.prompt) if args.prompt else PROMPT
    args.file = str(responses_file(args.file))
    entries, responses, references = read_pairs(args.file, args.response_field, args.reference_field)
    items = [(e.where, fill_prompt(template, e.fields, r, ref, e.where))
             for e, r, ref in zip(entries, responses, references)]  # every prompt checked before the first request
    source = Path(args.file)
    out = Path(args.out) if args.out else source.with_name(source.stem + "-judge")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the judge's answers")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    print(f"judging {len(items):,} responses with {endpoint.model} at {endpoint.url}", file=sys.stderr)
    try:
        result = judge(items, endpoint, out / "answers.jsonl", progress=not args.quiet)
    except UserError:
        if created and not any(out.iterdir()):  # the judge never answered: leave nothing behind
            out.rmdir()
        raise
    summary = {"file": args.file, "prompt": args.prompt or "the book's (chapter 7)", **result.to_dict()}
    write_atomic(out / "judge.json", json.dumps(summary, indent=1, ensure_ascii=False))
    plot_histogram(result, out / "scores.png")
    counts = result.counts()
    if args.json:
        print_json({**summary, "out": str(out)})
    else:
        mean = f"{result.mean:.2f}" if result.mean is not None else "none"
        print(f"mean score {mean} ({len(result.scores):,} of {len(result.records):,} scored by {endpoint.model})")
        unscored = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items() if v and k != "ok")
        if unscored:
            print(f"not scored: {unscored} (the answers are in {out / 'answers.jsonl'})")
        print("histogram: " + "  ".join(f"{k}: {v}" for k, v in result.histogram().items()))
        print(f"wrote {out / 'answers.jsonl'}, {out / 'judge.json'}, {out / 'scores.png'}", file=sys.stderr)
    command = f"scratchllm eval judge {shlex.quote(args.file)} --judge-model {shlex.quote(endpoint.model)}"
    numbers: dict[str, Any] = {"mean score": result.mean if result.mean is not None else "none",
                               "scored": len(result.scores), "entries": len(result.records)}
    numbers.update({k.replace("_", " "): v for k, v in counts.items() if v and k != "ok"})
    note_on_run_card(args, args.file, command, numbers)
    return 0
