"""Data for classification finetuning: labelled texts read, balanced, split, tokenised and batched.

The book's chapter 6 steps, each a function here, on a list of {"text", "label"} records:
- `read_labelled`: the `sms-spam` dataset (`data.sources.load_records`) or a CSV/TSV/JSONL file
  with a text and a label column; a missing column, an empty label ("labels missing: fill in ...")
  or a malformed line is one error naming the file and line.
- `balance`: undersampling, the book's `create_balanced_dataset`: each class larger than the
  smallest is sampled down to its size, classes concatenated in class-id order (ham then spam).
- `split`: the book's `random_split`: shuffle, then cut train/validation/test at int(n * fraction).
- `encode`: token ids, truncated to a maximum length (the first tokens kept, as the book's
  `SpamDataset`), the truncated ones counted.
- `collate`: a batch padded on the right to its longest with the end-of-text id (the book pads
  every example to the longest of the training split; the classifier reads the last real token,
  which causal attention keeps blind to padding after it, so the result is the same).

Shuffling is pandas' `DataFrame.sample(n or frac=1, random_state=seed)` without pandas: pandas calls
`np.random.RandomState(seed).choice(len, size, replace=False)` (a permutation cut to size), and so
does `sample` here; the parity test checks rows and ids against `llms_from_scratch.ch06`. (The book
reads SMSSpamCollection with pandas' default CSV quoting, which joins a few messages that start with
a quote into their neighbours, 5,572 rows; `load_records` reads the file's 5,574 lines as they are.)

Not here: the model and its loss (`finetune.classify`), metrics (`evaluate.classification`).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scratchllm.errors import UserError

FORMATS = (".csv", ".tsv", ".jsonl")


# --- reading ---------------------------------------------------------------------------------------------
def _missing_labels(path: Path, column: str, lines: list[int]) -> UserError:
    more = f" and {len(lines) - 1} more rows" if len(lines) > 1 else ""
    return UserError(f"labels missing: fill in the {column!r} column of {path} (line {lines[0]}{more} have none), "
                     f"or delete those rows")


def _read_text(path: Path, errors: str = "strict") -> str:
    from scratchllm.data.readers import decode, read_bytes

    text = decode(read_bytes(path), str(path), errors)
    if not text.strip():
        raise UserError(f"{path} is empty: there are no labelled texts to read")
    return text


def _csv_rows(path: Path, columns: Sequence[str], errors: str) -> list[tuple[int, dict[str, str]]]:
    """(line, row) of a CSV/TSV with a header line; every name in `columns` must be a column."""
    text = _read_text(path, errors)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    names = reader.fieldnames or []
    for column in columns:
        if column not in names:
            raise UserError(f"{path} has no column {column!r} (columns: {', '.join(names) or 'none'}); name the "
                            f"columns with --text_column and --label_column")
    rows = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num} is not valid CSV: {e}") from None
    return rows


def _jsonl_rows(path: Path, columns: Sequence[str], errors: str) -> list[tuple[int, dict[str, Any]]]:
    from scratchllm.data.readers import jsonl_records

    rows = []
    for i, rec in jsonl_records(_read_text(path, errors), path):
        if not isinstance(rec, dict):
            raise UserError(f"{path} line {i} holds a JSON {type(rec).__name__}, expected an object with "
                            f"{' and '.join(map(repr, columns))}")
        rows.append((i, rec))
    for column in columns:
        if not any(column in rec for _, rec in rows):
            keys = ", ".join(dict.fromkeys(k for _, rec in rows for k in rec)) or "none"
            raise UserError(f"{path} has no field {column!r} (fields: {keys}); name the columns with "
                            f"--text_column and --label_column")
    return rows


def read_table(path: Path, columns: Sequence[str], errors: str = "strict") -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV, TSV (header line) or JSONL file that has `columns`; `errors`: what a
    byte that is not UTF-8 is ("strict": an error naming the file and offset; "replace": U+FFFD)."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: read {', '.join(FORMATS)} files (by suffix), or a dataset name such as sms-spam")
    return _jsonl_rows(path, columns, errors) if suffix == ".jsonl" else _csv_rows(path, columns, errors)


def _cell(value: Any) -> str:
    """A CSV cell or JSON value as text (None: empty; a JSON number or boolean label: its text)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def read_labelled(data: str, text_column: str = "text", label_column: str = "label") -> list[dict[str, str]]:
    """[{"text", "label"}] from a dataset name (sms-spam) or a CSV/TSV/JSONL file (module doc)."""
    from scratchllm.data.sources import is_path, load_records

    if not is_path(data):
        records = load_records(data)
        if records and not {"text", "label"} <= set(records[0]):
            raise UserError(f"{data} is not a labelled dataset (fields: {', '.join(records[0])}); classify needs "
                            f"texts with labels, such as sms-spam or a CSV/TSV/JSONL file")
        return [{"text": r["text"], "label": r["label"]} for r in records]
    path = Path(data).expanduser()
    if not path.is_file():
        raise UserError(f"{path} not found (and it is not a dataset name)" if not path.exists()
                        else f"{path} is a folder; pass a CSV, TSV or JSONL file")
    out, unlabelled = [], []
    for line, row in read_table(path, (text_column, label_column)):
        text, label = _cell(row.get(text_column)), _cell(row.get(label_column)).strip()
        if not label:
            unlabelled.append(line)
            continue
        if not text.strip():
            raise UserError(f"{path} line {line}: the {text_column!r} column is empty; give the text or delete the row")
        out.append({"text": text, "label": label})
    if unlabelled:
        raise _missing_labels(path, label_column, unlabelled)
    if not out:
        raise UserError(f"{path} has a header but no rows: there are no labelled texts to read")
    return out


def label_names(records: Sequence[dict[str, str]], given: Sequence[str] = (), source: str = "the data") -> list[str]:
    """The class names in id order: `given`, else the data's sorted. Each label of the data must be in
    `given` and each name in `given` in the data; the data must have two classes at least."""
    counts = Counter(r["label"] for r in records)
    if given:
        unknown = [name for name in given if name not in counts]
        if unknown:
            raise UserError(f"unknown label {unknown[0]!r} in labels {','.join(given)}: {source} has the labels "
                            f"{', '.join(sorted(counts))}")
        missing = sorted(set(counts) - set(given))
        if missing:
            raise UserError(f"{source} has the label {missing[0]!r}, which labels {','.join(given)} does not name; "
                            f"add it to labels (or leave labels empty: the sorted names)")
        names = list(given)
    else:
        names = sorted(counts)
    if len(names) < 2:
        raise UserError(f"{source} has one class only ({names[0]!r}, {counts[names[0]]} texts); a classifier "
                        f"needs texts of two classes at least")
    return names


# --- the book's steps ----------------------------------------------------------------------------------------
def sample(n: int, size: int, seed: int) -> np.ndarray:
    """Indices of pandas' `DataFrame.sample(size, random_state=seed)` on n rows: the same call pandas makes."""
    return np.random.RandomState(seed).choice(n, size=size, replace=False)


def balance(records: Sequence[dict[str, Any]], labels: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """Undersampling: each class cut to the smallest's size by `sample`, classes in `labels` order."""
    by_class = {name: [r for r in records if r["label"] == name] for name in labels}
    smallest = min(len(rows) for rows in by_class.values())
    out: list[dict[str, Any]] = []
    for rows in by_class.values():
        if len(rows) > smallest:
            rows = [rows[i] for i in sample(len(rows), smallest, seed)]
        out += rows
    return out


def split(records: Sequence[Any], fractions: Sequence[float], seed: int) -> tuple[list, list, list]:
    """The book's random_split: shuffled (`sample` of every row), then train, validation and test cut
    at int(n * train) and that plus int(n * validation); the test split takes the rest."""
    n = len(records)
    shuffled = [records[i] for i in sample(n, n, seed)]
    train_end = int(n * fractions[0])
    val_end = train_end + int(n * fractions[1])
    return shuffled[:train_end], shuffled[train_end:val_end], shuffled[val_end:]


def encode(texts: Sequence[str], tokenizer: Any, max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of each text, each cut to its first `max_length` tokens; and how many were cut.
    An empty text becomes the end-of-text token alone (the classifier reads at least one token)."""
    ids = tokenizer.encode_batch(list(texts)) if hasattr(tokenizer, "encode_batch") else [tokenizer.encode(t)
                                                                                          for t in texts]
    pad = pad_id(tokenizer)
    truncated = sum(len(x) > max_length for x in ids)
    return [list(x[:max_length]) or [pad] for x in ids], truncated


def pad_id(tokenizer: Any) -> int:
    """The padding id: the end-of-text token (the book's 50256 for GPT-2), else 0. Padding is never read."""
    eot = getattr(tokenizer, "eot_id", None)
    return int(eot) if eot is not None else 0


# Batches are padded to a multiple of this many tokens: few distinct shapes, so the CPU's bf16 kernels
# (oneDNN, which keeps compiled kernels per shape) do not grow the process by ~10 MB per new length.
PAD_MULTIPLE = 16


def collate(examples: Sequence[tuple[list[int], int]], pad: int, multiple: int = PAD_MULTIPLE
            ) -> tuple[Any, Any, Any]:
    """(ids (B, T) right-padded with `pad` to the batch's longest rounded up to `multiple`, lengths (B,),
    labels (B,)). The head reads the last real token (`lengths`), so padding changes no result."""
    import torch

    longest = -(-max(len(ids) for ids, _ in examples) // multiple) * multiple
    x = torch.full((len(examples), longest), pad, dtype=torch.long)
    for i, (ids, _) in enumerate(examples):
        x[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    lengths = torch.tensor([len(ids) for ids, _ in examples], dtype=torch.long)
    labels = torch.tensor([label for _, label in examples], dtype=torch.long)
    return x, lengths, labels


# --- unlabelled texts (classify, active learning) ------------------------------------------------------------
def read_texts(path: Path, text_column: str = "text", errors: str = "strict") -> list[str]:
    """Texts to classify: a CSV/TSV/JSONL file's `text_column`, or any other file's non-empty lines."""
    if path.suffix.lower() in FORMATS:
        texts = [_cell(row.get(text_column)) for _, row in read_table(path, (text_column,), errors)]
        texts = [t for t in texts if t.strip()]
    else:
        from scratchllm.data.readers import decode, read_bytes

        texts = [line for line in decode(read_bytes(path), str(path), errors).splitlines() if line.strip()]
    if not texts:
        raise UserError(f"{path} is empty: there are no texts to classify")
    return texts


def write_for_labelling(rows: Sequence[dict[str, Any]], path: Path, text_column: str, label_column: str) -> None:
    """Rows (text, predicted label and probability) for a person to label, in the format `read_labelled`
    reads back: CSV/TSV (by suffix; default CSV) or JSONL, the label column EMPTY, to be filled in."""
    from scratchllm.files import write_atomic

    write_atomic(path, format_for_labelling(rows, path.suffix.lower(), text_column, label_column))


def format_for_labelling(rows: Sequence[dict[str, Any]], suffix: str, text_column: str, label_column: str) -> str:
    """The text `write_for_labelling` writes (".jsonl", ".tsv", else CSV)."""
    if suffix == ".jsonl":
        return "".join(json.dumps({text_column: r["text"], label_column: "", "predicted": r["label"],
                                   "probability": round(r["probability"], 4),
                                   "uncertainty": round(r["uncertainty"], 4)}, ensure_ascii=False) + "\n"
                       for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t" if suffix == ".tsv" else ",", lineterminator="\n")
    w.writerow([text_column, label_column, "predicted", "probability", "uncertainty"])
    for r in rows:
        w.writerow([r["text"], "", r["label"], f"{r['probability']:.4f}", f"{r['uncertainty']:.4f}"])
    return buf.getvalue()
