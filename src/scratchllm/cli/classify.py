"""`scratchllm classify`: label texts with a finetuned classifier, or pick the ones worth labelling.

    scratchllm classify -m runs/classify-sms-spam "You won a prize! Call now"     # spam 0.9871
    scratchllm classify -m runs/classify-sms-spam --file messages.txt --jsonl    # one text a line
    scratchllm classify -m runs/classify-sms-spam --uncertain 50 unlabelled.txt --out to-label.csv

A classifier is a run or checkpoint folder that `scratchllm finetune classify` wrote (its config.json
has n_classes; its state.json the labels and the pooling). Texts come as arguments, from `--file`
(one text a line, or the text column of a CSV/TSV/JSONL file) or piped on standard input; they are
classified in batches of similar lengths. Each text gets its most probable label and that
probability (`label<TAB>probability`, and the text when there are several), or with `--jsonl` one
object a line: {"text", "label", "probability", "probabilities": {label: p}}.

Active learning (`--uncertain N FILE`): rank the texts by how unsure the classifier is (`--by
margin`: the smallest gap between the two most probable labels; `--by entropy`) and write the N
most uncertain as a CSV (TSV or JSONL by `--out`'s suffix; standard output without `--out`) with the
text column, an EMPTY label column and the classifier's guess beside it. Fill in the label column,
then train on it: `scratchllm finetune classify --init-from ... --data to-label.csv` (rows still
without a label are an error that names the line).
"""

from __future__ import annotations

import argparse
import sys

UNCERTAINTY = ("margin", "entropy")  # evaluate.classification.UNCERTAINTY, without importing numpy for --help


def register(subparsers) -> None:
    from scratchllm.cli.inputs import add_errors_option

    p = subparsers.add_parser(
        "classify", help="label texts with a finetuned classifier; pick uncertain ones to label",
        description=(__doc__ or "").split("\n", 1)[-1].strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="*", metavar="TEXT",
                   help="texts to classify (default: --file, else standard input); with --uncertain: FILE")
    p.add_argument("--model", "-m", default=None,
                   help="run or checkpoint folder of a classifier (default: the latest run in --runs-dir)")
    p.add_argument("--runs-dir", default="runs", help="where to look for the latest run (default: runs)")
    p.add_argument("--file", "-f", default=None,
                   help="texts to classify: one a line, or a CSV/TSV/JSONL file's text column")
    p.add_argument("--text-column", default=None,
                   help="the text column of a CSV/TSV/JSONL input (default: the classifier's, e.g. text)")
    p.add_argument("--jsonl", action="store_true",
                   help='one JSON object a line: {"text", "label", "probability", "probabilities"}')
    p.add_argument("--uncertain", type=int, default=None, metavar="N",
                   help="active learning: write the N texts the classifier is least sure of, to be labelled")
    p.add_argument("--by", choices=UNCERTAINTY, default="margin",
                   help="--uncertain: rank by the margin between the two most probable labels (default) or by "
                        "the entropy of the probabilities")
    p.add_argument("--out", "-o", default=None,
                   help="--uncertain: file to write (.csv, .tsv or .jsonl; default: CSV on standard output); "
                        "fill in its label column, then pass it to `scratchllm finetune classify --data`")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="texts classified together (default 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    add_errors_option(p)
    p.set_defaults(func=run)


def read_texts(args, text_column: str) -> tuple[list[str], str]:
    """(texts, where they came from): --file, the arguments (with --uncertain: a file), or stdin."""
    from pathlib import Path

    from scratchllm.cli.inputs import read_argument, read_stdin
    from scratchllm.errors import UserError
    from scratchllm.finetune.classify_data import read_texts as read_file_texts

    if args.uncertain is not None and args.file is None:
        if len(args.texts) > 1:
            raise UserError("--uncertain N reads one FILE of unlabelled texts; give one file")
        if args.texts:
            args.file = args.texts[0]
            args.texts = []
    if args.file is not None:
        if args.texts:
            raise UserError("give texts as arguments or --file, not both")
        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"file {path} not found" if not path.exists() else f"{path} is a folder, not a file")
        return read_file_texts(path, text_column, args.errors), str(path)
    if args.texts:
        return [read_argument(t, "the text argument", args.errors) for t in args.texts], "the arguments"
    if not sys.stdin.isatty():
        texts = [line for line in read_stdin(args.errors).splitlines() if line.strip()]
        if not texts:
            raise UserError("standard input has no texts: give one text a line")
        return texts, "standard input"
    raise UserError("give texts to classify: as arguments, --file FILE (one a line) or on standard input")


def run(args) -> int:
    import json
    from pathlib import Path

    from scratchllm.errors import UserError

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.uncertain is not None and args.uncertain < 1:
        raise UserError(f"--uncertain must be >= 1, got {args.uncertain}")
    if args.out is not None and args.uncertain is None:
        raise UserError("--out writes the texts --uncertain N picks; without --uncertain the labels go to "
                        "standard output")
    if args.out is not None:
        out = Path(args.out)
        if out.exists():
            raise UserError(f"{out} already exists; choose another --out (it is not overwritten)")
        if out.suffix.lower() not in (".csv", ".tsv", ".jsonl"):
            raise UserError(f"--out {out}: write a .csv, .tsv or .jsonl file (what `finetune classify` reads)")
    from scratchllm.checkpoint import latest_run
    from scratchllm.finetune.classify import load_classifier, predict
    from scratchllm.runtime import pick_device

    folder = args.model if args.model is not None else str(latest_run(args.runs_dir))
    model, tokenizer, task = load_classifier(folder, pick_device(args.device))
    text_column = args.text_column or task.get("text_column") or "text"
    texts, source = read_texts(args, text_column)
    probs, truncated = predict(model, tokenizer, task, texts, args.batch_size, source=folder)
    if truncated:
        import warnings

        warnings.warn(f"{truncated} of {len(texts)} texts from {source} are longer than the classifier's "
                      f"{task.get('max_length')} tokens; each was cut to its first {task.get('max_length')}",
                      stacklevel=1)
    labels = task["labels"]
    best = probs.argmax(axis=1)
    if args.uncertain is not None:
        return write_uncertain(args, task, texts, probs, best)
    for text, p, k in zip(texts, probs, best, strict=True):
        if args.jsonl:
            print(json.dumps({"text": text, "label": labels[k], "probability": round(float(p[k]), 6),
                              "probabilities": {name: round(float(v), 6) for name, v in zip(labels, p, strict=True)}},
                             ensure_ascii=False))
        else:
            print(f"{labels[k]}\t{p[k]:.4f}" + (f"\t{text}" if len(texts) > 1 else ""))
    return 0


def write_uncertain(args, task: dict, texts: list[str], probs, best) -> int:
    """The --uncertain N texts ranked most uncertain first, for a person to label (module doc)."""
    from pathlib import Path

    import numpy as np

    from scratchllm.evaluate.classification import uncertainty
    from scratchllm.finetune.classify_data import format_for_labelling, write_for_labelling

    scores = uncertainty(probs, args.by)
    order = np.argsort(-scores, kind="stable")[:args.uncertain]
    labels = task["labels"]
    rows = [{"text": texts[i], "label": labels[best[i]], "probability": float(probs[i, best[i]]),
             "uncertainty": float(scores[i])} for i in order]
    text_column, label_column = task.get("text_column") or "text", task.get("label_column") or "label"
    if args.out is None:
        sys.stdout.write(format_for_labelling(rows, ".csv", text_column, label_column))
        return 0
    out = Path(args.out)
    write_for_labelling(rows, out, text_column, label_column)
    print(f"wrote the {len(rows)} most uncertain of {len(texts)} texts (by {args.by}) to {out}: fill in its "
          f"{label_column!r} column, then train on it with `scratchllm finetune classify --data {out}`",
          file=sys.stderr)
    return 0
