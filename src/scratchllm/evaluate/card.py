"""The "## Evaluations" section of a model card: what `scratchllm eval` measured, appended.

`append_evaluation(model_folder, entry)` adds one line (date, command, numbers) to the card of the
model that was scored: MODEL_CARD.md in the folder given (a run, a finetuned run, an imported
checkpoint), else in the run that holds the checkpoint folder given (runs/x/checkpoints/step-N ->
runs/x/MODEL_CARD.md). A model without a card (a Hugging Face folder, a bare checkpoint) gets
none. The card is replaced atomically. An imported checkpoint lists its card in state.json's
manifest; there the entry is dropped from the manifest first, the card written, then the entry
added back with the new size and sha256, so a crash at any point leaves a checkpoint that loads.

`keep_evaluations(old, new)`: a card rewritten by training (a resumed run) keeps the section.

Not here: writing the rest of the card (`train.logging.model_card`, `interop.importer`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# train.logging.CARD_FILE: evaluate does not import train (tests/test_layering.py); a test holds them equal.
CARD_FILE = "MODEL_CARD.md"
HEADING = "## Evaluations"
INTRO = "Appended by `scratchllm eval`, newest last."


def find_card(folder: str | os.PathLike) -> Path | None:
    """The card of the model in `folder`: its own MODEL_CARD.md, else its run's (for a checkpoint inside
    runs/x/checkpoints/), else None."""
    from scratchllm.checkpoint.pointers import CHECKPOINTS

    p = Path(folder)
    if (p / CARD_FILE).is_file():
        return p / CARD_FILE
    if p.parent.name == CHECKPOINTS and (p.parent.parent / CARD_FILE).is_file():
        return p.parent.parent / CARD_FILE
    return None


def section_span(text: str) -> tuple[int, int] | None:
    """(start, end) character offsets of the Evaluations section (heading to the next "## " heading)."""
    lines = text.splitlines(keepends=True)
    offset, start = 0, None
    for line in lines:
        if start is None and line.rstrip() == HEADING:
            start = offset
        elif start is not None and line.startswith("## "):
            return start, offset
        offset += len(line)
    return (start, len(text)) if start is not None else None


def with_entry(text: str, entry: str) -> str:
    """`text` (a card) with `entry` (one Markdown line) appended to its Evaluations section, which is
    made at the end when there is none."""
    span = section_span(text)
    if span is None:
        return text.rstrip("\n") + f"\n\n{HEADING}\n\n{INTRO}\n\n{entry}\n"
    start, end = span
    section = text[start:end].rstrip("\n") + f"\n{entry}\n"
    rest = text[end:]
    return text[:start] + section + ("\n" + rest if rest else "")


def keep_evaluations(old: str, new: str) -> str:
    """`new` (a card rewritten from scratch) with the Evaluations section of `old`, if it had one."""
    span = section_span(old)
    if span is None or section_span(new) is not None:
        return new
    return new.rstrip("\n") + "\n\n" + old[span[0]:span[1]].rstrip("\n") + "\n"


def format_entry(entry: dict[str, Any]) -> str:
    """One Markdown line: `- date · \\`command\\` · key value, key value` (floats to 4 significant digits)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    head = [entry["date"], f"`{entry['command']}`"] if "command" in entry else [entry["date"]]
    numbers = ", ".join(f"{k} {fmt(v)}" for k, v in entry.get("results", {}).items())
    return "- " + " · ".join(head + ([numbers] if numbers else []))


def append_evaluation(folder: str | os.PathLike, entry: dict[str, Any]) -> Path | None:
    """Append `entry` ({"date", "command", "results": {name: number}}) to the card of the model in
    `folder`; the card's path, or None when the model has no card."""
    from scratchllm.files import write_atomic

    card = find_card(folder)
    if card is None:
        return None
    text = with_entry(card.read_text(encoding="utf-8"), format_entry(entry))
    manifest = listed_in_manifest(card)
    if manifest is None:
        write_atomic(card, text)
        return card
    state_path, state = manifest
    files = dict(state["files"])
    files.pop(card.name)
    write_atomic(state_path, json.dumps({**state, "files": files}, indent=1))  # 1: the card is unchecked
    write_atomic(card, text)  # 2: the new card
    from scratchllm.files import sha256_file

    files[card.name] = {"size": card.stat().st_size, "sha256": sha256_file(card)}
    write_atomic(state_path, json.dumps({**state, "files": files}, indent=1))  # 3: checked again
    return card


def listed_in_manifest(card: Path) -> tuple[Path, dict[str, Any]] | None:
    """(state.json path, its contents) when the checkpoint beside `card` lists it in its manifest."""
    from scratchllm.checkpoint.folder import STATE_FILE, read_state

    if not (card.parent / STATE_FILE).is_file():
        return None
    state = read_state(card.parent)
    return (card.parent / STATE_FILE, state) if card.name in state.get("files", {}) else None
