"""Cleaning a corpus before tokenising: normalise, strip boilerplate, drop empties and duplicates.

Steps, in order, each optional: Unicode NFC; newlines (\\r\\n and \\r become \\n); Project
Gutenberg's licence header and footer (the `*** START OF ...` / `*** END OF ...` markers and the
older `*END*THE SMALL PRINT!` and `End of the Project Gutenberg EBook` forms); whitespace
collapsing; empty documents; exact duplicates (`dedup.text_key`); near duplicates (`dedup`'s
MinHash + LSH). The result is deterministic, and `CleanReport` says what was removed and why:
counts, bytes, which document duplicated which (with the Jaccard estimate).

Not here: reading files (`readers`), tokenising (`shards`).
"""

from __future__ import annotations

import re
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.data.dedup import near_duplicates, text_key

_START = re.compile(r"^[ \t]*(\*{3}[ \t]*START OF (THIS|THE) PROJECT GUTENBERG[^\n]*"
                    r"|\*END\*THE SMALL PRINT[^\n]*)$", re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^[ \t]*(\*{3}[ \t]*END OF (THIS|THE) PROJECT GUTENBERG[^\n]*"
                  r"|End of (the )?Project Gutenberg[^\n]*)$", re.IGNORECASE | re.MULTILINE)


def normalize_newlines(text: str) -> str:
    """\\r\\n and lone \\r become \\n.

    >>> normalize_newlines("a\\r\\nb\\rc")
    'a\\nb\\nc'
    """
    return text.replace("\r\n", "\n").replace("\r", "\n")


def gutenberg_body(text: str) -> str:
    """The text between Project Gutenberg's start and end markers (unchanged if it has none).

    >>> gutenberg_body("licence\\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\\nHello.\\n"
    ...                 "*** END OF THE PROJECT GUTENBERG EBOOK X ***\\nmore licence")
    'Hello.'
    """
    start = _START.search(text)
    begin = start.end() if start else 0
    end = _END.search(text, begin)
    stop = end.start() if end else len(text)
    if not start and not end:
        return text
    return text[begin:stop].strip("\n")


def collapse_spaces(text: str) -> str:
    """Runs of spaces/tabs become one space, line ends lose trailing spaces, 3+ newlines become 2.

    >>> collapse_spaces("a  \\t b  \\n\\n\\n\\nc ")
    'a b\\n\\nc'
    """
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


@dataclass
class CleanReport:
    """What cleaning did; `to_dict()` is what `clean_report.json` holds."""

    documents_in: int = 0
    documents_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    normalized: int = 0  # documents changed by NFC or newline normalisation
    gutenberg_stripped: list[str] = field(default_factory=list)
    gutenberg_bytes: int = 0
    whitespace_bytes: int = 0
    empty: list[str] = field(default_factory=list)
    exact_duplicates: list[dict[str, Any]] = field(default_factory=list)  # {"doc", "same_as", "bytes"}
    near_duplicates: list[dict[str, Any]] = field(default_factory=list)  # {"doc", "near", "jaccard", "bytes"}
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        from scratchllm.files import write_json_atomic

        p = Path(path)
        write_json_atomic(p, self.to_dict())
        return p

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = [f"cleaned {self.documents_in:,} documents ({self.bytes_in:,} bytes) -> "
                 f"{self.documents_out:,} documents ({self.bytes_out:,} bytes) in {self.seconds:.2f} s"]
        if self.normalized:
            lines.append(f"  normalised (NFC/newlines): {self.normalized:,} documents")
        if self.gutenberg_stripped:
            lines.append(f"  Gutenberg header/footer stripped: {len(self.gutenberg_stripped):,} documents, "
                         f"{self.gutenberg_bytes:,} bytes")
        if self.whitespace_bytes:
            lines.append(f"  whitespace collapsed: {self.whitespace_bytes:,} bytes")
        if self.empty:
            lines.append(f"  empty documents removed: {len(self.empty):,}")
        if self.exact_duplicates:
            lines.append(f"  exact duplicates removed: {len(self.exact_duplicates):,} "
                         f"({sum(d['bytes'] for d in self.exact_duplicates):,} bytes)")
        if self.near_duplicates:
            lines.append(f"  near duplicates removed: {len(self.near_duplicates):,} "
                         f"({sum(d['bytes'] for d in self.near_duplicates):,} bytes)")
            for d in self.near_duplicates[:5]:
                lines.append(f"    {d['doc']} ~ {d['near']} (Jaccard ~{d['jaccard']:.2f})")
            if len(self.near_duplicates) > 5:
                lines.append(f"    ... and {len(self.near_duplicates) - 5} more (see the JSON report)")
        return "\n".join(lines)


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


def clean_documents(docs: Sequence[Any], names: Sequence[str] | None = None, *, nfc: bool = True,
                    newlines: bool = True, strip_gutenberg: bool = True, collapse_whitespace: bool = False,
                    dedup: bool = True, near_dedup: bool = True, near_threshold: float = 0.8, shingle: str = "word",
                    shingle_size: int = 5, num_perm: int = 128) -> tuple[list[str], CleanReport]:
    """Clean `docs` (strings, or objects with .name and .text); returns the kept texts and a report.

    Documents are named in the report by `names`, their `.name`, or their index.
    """
    t0 = time.perf_counter()
    texts = [d if isinstance(d, str) else d.text for d in docs]
    if names is None:
        names = [str(i) if isinstance(d, str) else d.name for i, d in enumerate(docs)]
    names = list(names)
    rep = CleanReport(options=dict(nfc=nfc, newlines=newlines, strip_gutenberg=strip_gutenberg,
                                   collapse_whitespace=collapse_whitespace,
                                   dedup=dedup, near_dedup=near_dedup, near_threshold=near_threshold,
                                   shingle=shingle, shingle_size=shingle_size, num_perm=num_perm))
    rep.documents_in = len(texts)
    rep.bytes_in = sum(_nbytes(t) for t in texts)
    kept: list[tuple[int, str]] = []
    for i, text in enumerate(texts):
        new = unicodedata.normalize("NFC", text) if nfc else text
        new = normalize_newlines(new) if newlines else new
        rep.normalized += new != text
        if strip_gutenberg:
            stripped = gutenberg_body(new)
            if stripped != new:
                rep.gutenberg_stripped.append(names[i])
                rep.gutenberg_bytes += _nbytes(new) - _nbytes(stripped)
                new = stripped
        if collapse_whitespace:
            collapsed = collapse_spaces(new)
            rep.whitespace_bytes += _nbytes(new) - _nbytes(collapsed)
            new = collapsed
        if not new.strip():
            rep.empty.append(names[i])
            continue
        kept.append((i, new))
    if dedup:
        seen: dict[str, int] = {}
        unique = []
        for i, text in kept:
            key = text_key(text)
            if key in seen:
                rep.exact_duplicates.append({"doc": names[i], "same_as": names[seen[key]], "bytes": _nbytes(text)})
                continue
            seen[key] = i
            unique.append((i, text))
        kept = unique
    if near_dedup and len(kept) > 1:
        found = near_duplicates([t for _, t in kept], near_threshold, num_perm=num_perm, shingle=shingle,
                                shingle_size=shingle_size)
        drop = set()
        for nd in found:
            i, j = kept[nd.index][0], kept[nd.of][0]
            rep.near_duplicates.append({"doc": names[i], "near": names[j], "jaccard": nd.jaccard,
                                        "bytes": _nbytes(kept[nd.index][1])})
            drop.add(nd.index)
        kept = [k for n, k in enumerate(kept) if n not in drop]
    out = [t for _, t in kept]
    rep.documents_out = len(out)
    rep.bytes_out = sum(_nbytes(t) for t in out)
    rep.seconds = round(time.perf_counter() - t0, 3)
    return out, rep
