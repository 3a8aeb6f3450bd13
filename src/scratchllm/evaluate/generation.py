"""Files of generated responses and their references, read for scoring (text metrics, an LLM judge).

The book's format (chapter 7; what `scratchllm finetune instruct` writes as test-responses.json):
a JSON list, or JSON Lines, of entries such as

    {"instruction": "...", "input": "...", "output": "the reference", "model_response": "the answer"}

`read_entries(path)` gives each entry with where it is ("file line N"; for a JSON list, the line
the entry starts on), so that a bad entry is one error naming the file and the line.
`responses_file(path)` takes a run folder for its test-responses.json (what `finetune instruct` left).
`read_pairs(path, response_field, reference_field)` checks that every entry has both fields as text
and returns the entries with their responses and references; the field names are options because
other tools write other names ("response", "prediction", "answer", "reference", "target").

Not here: the metrics (`evaluate.text`), the judge (`evaluate.judge`), generating responses
(`finetune.instruct.respond`, which `scratchllm eval generation --model` calls).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError

# The book's field names (chapter 7): the reference answer and the model's answer.
REFERENCE_FIELD = "output"
RESPONSE_FIELD = "model_response"
# What `scratchllm finetune instruct` writes into its run folder (finetune.instruct.TEST_RESPONSES).
TEST_RESPONSES = "test-responses.json"


@dataclass(frozen=True)
class Entry:
    """One entry of a responses file: where it is ("file line N") and its fields."""

    where: str
    fields: dict[str, Any]


def _json_list(text: str, path: Path) -> list[tuple[int, Any]]:
    """(line number, value) of each element of the JSON list `text`."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(whole, list):
        raise UserError(f"{path} holds a JSON {type(whole).__name__}, expected a list of entries (or JSON Lines)")
    decoder, out = json.JSONDecoder(), []
    i = text.index("[") + 1
    for _ in whole:  # the text is valid JSON: walk it once more to find where each element starts
        while text[i] in " \t\r\n,":
            i += 1
        value, end = decoder.raw_decode(text, i)
        out.append((text.count("\n", 0, i) + 1, value))
        i = end
    return out


def responses_file(path: str | os.PathLike) -> Path:
    """`path` itself, or for a folder (an instruction run) the test-responses.json inside it."""
    p = Path(path)
    if p.is_dir():
        if not (p / TEST_RESPONSES).is_file():
            raise UserError(f"{p} is a folder without {TEST_RESPONSES}; give a responses file (JSON or JSON Lines), "
                            f"or an instruction run's folder")
        return p / TEST_RESPONSES
    return p


def read_entries(path: str | os.PathLike) -> list[Entry]:
    """The entries of a JSON-list or JSON Lines file (by content: a file starting with "[" is a list),
    each a JSON object; anything else is one error naming the file and the line."""
    from scratchllm.data.readers import decode, jsonl_records, read_bytes

    p = Path(path)
    text = decode(read_bytes(p), str(p))
    if not text.strip():
        raise UserError(f"{p} is empty: there are no entries to score")
    rows = _json_list(text, p) if text.lstrip().startswith("[") else jsonl_records(text, p)
    if not rows:
        raise UserError(f"{p} has no entries to score")
    out = []
    for line, value in rows:
        if not isinstance(value, dict):
            raise UserError(f"{p} line {line} is a JSON {type(value).__name__}, expected an object with fields "
                            f"such as {REFERENCE_FIELD!r} and {RESPONSE_FIELD!r}")
        out.append(Entry(f"{p} line {line}", value))
    return out


def text_field(entry: Entry, name: str, option: str) -> str:
    """The text of field `name` of `entry`; a missing or non-text field is an error naming the line and
    the `option` that chooses the field."""
    if name not in entry.fields:
        has = ", ".join(map(repr, entry.fields)) or "no fields"
        raise UserError(f"{entry.where} has no {name!r} field (it has {has}); name the field with {option}")
    value = entry.fields[name]
    if not isinstance(value, str):
        raise UserError(f"{entry.where}: {name!r} is a JSON {type(value).__name__}, expected text")
    return value


def read_pairs(path: str | os.PathLike, response_field: str = RESPONSE_FIELD, reference_field: str = REFERENCE_FIELD
               ) -> tuple[list[Entry], list[str], list[str]]:
    """(entries, responses, references) of a responses file, every entry checked (see the module doc)."""
    entries = read_entries(path)
    responses = [text_field(e, response_field, "--response-field") for e in entries]
    references = [text_field(e, reference_field, "--reference-field") for e in entries]
    return entries, responses, references
