"""The model card's shared parts: what every card says to be trusted or questioned, and the
"## Evaluations" section `scratchllm eval` appends to.

Every card (a training run's, a finetune's, an import's, a quantized or pruned model's; Mitchell et
al. 2019, "Model Cards for Model Reporting") states:
- data provenance (`data_provenance`, `clean_lines`): each dataset with its source, licence and
  sha256 (the registry's for a named dataset, computed for a local file or folder), and what the
  cleaning and deduplication did (the data pipeline's clean_report.json);
- training compute (`training_compute`, `compute_lines`): tokens seen, FLOPs by the package's one
  formula (`model.info.train_flops_per_token`: 6N + 12·L·d·T per token, PaLM appendix B), wall time,
  CPU core-hours (wall time x torch threads) or GPU hours, and an energy estimate from the
  documented defaults WATTS_PER_CORE and WATTS_PER_GPU, its assumptions written beside it;
- intended use and known limitations (`use_lines`): what the model is for and not fit for, by kind;
- for a model made from another (quantized, pruned, imported from a scratchllm run, finetuned):
  the source's data and compute sections copied from its card (`source_lines`).
`train.logging.model_card` lays out a training run's card with these; `interop.importer` and
`compress` append `derived_lines` to theirs.

`append_evaluation(model_folder, entry)` adds one line (date, command, numbers) to the card of the
model that was scored: MODEL_CARD.md in the folder given (a run, a finetuned run, an imported
checkpoint), else in the run that holds the checkpoint folder given (runs/x/checkpoints/step-N ->
runs/x/MODEL_CARD.md). A model without a card (a Hugging Face folder, a bare checkpoint) gets
none. The card is replaced atomically. An imported checkpoint lists its card in state.json's
manifest; there the entry is dropped from the manifest first, the card written, then the entry
added back with the new size and sha256, so a crash at any point leaves a checkpoint that loads.

`keep_evaluations(old, new)`: a card rewritten by training (a resumed run) keeps the section.

Not here: the layout of a run's card (`train.logging.model_card`), the FLOPs formula (`model.info`).
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


# --- transparency: data, compute, use -------------------------------------------------------------------------
# Energy defaults, stated on every card so a reader can redo the sum with their own machine's figures:
# a busy desktop core draws about 10 W of its package's power (a 65 W six-core desktop CPU; server cores
# 5-8 W, laptop cores less); one datacentre GPU under training load about 300 W (A100: 250-400 W by form);
# an Apple-silicon GPU about 30 W.
WATTS_PER_CORE = 10.0
WATTS_PER_GPU = {"cuda": 300.0, "mps": 30.0}
FLOPS_FORMULA = ("6N + 12·L·d·T per token (PaLM appendix B; N the parameters a token is multiplied by, L layers, "
                 "d attention width, T the sequence length): forward and backward, every parameter trained, "
                 "attention over all T×T pairs, no recomputation counted")
# What a finetune's FLOPs count beyond the work done (its batches are padded and of varying length).
FINETUNE_NOTE = ("an upper bound: padding tokens count, T is the full context, and weights that stay frozen (LoRA, "
                 "frozen layers) are counted as if trained")
DERIVED_KINDS = ("imported", "quantized", "pruned")


def data_provenance(dataset: str) -> dict[str, Any]:
    """{"dataset", "source", "licence", "sha256", "description"} of a named dataset (the registry's)
    or a local file or folder (its sha256 computed here: a file's, or for a folder the sha256 of
    each file's relative path and sha256; its licence is not known to scratchllm)."""
    from scratchllm.data.sources import DATASETS, is_path
    from scratchllm.files import sha256_file

    if not is_path(dataset) and dataset in DATASETS:
        src = DATASETS[dataset]
        return {"dataset": dataset, "source": src.url, "licence": src.licence, "sha256": src.sha256,
                "description": src.description}
    p = Path(dataset).expanduser()
    out: dict[str, Any] = {"dataset": dataset, "source": f"local {'folder' if p.is_dir() else 'file'} {p.resolve()}",
                           "licence": "not recorded (a local file): state its licence when you share the model"}
    try:
        if p.is_file():
            out["sha256"] = sha256_file(p)
        elif p.is_dir():
            import hashlib

            h = hashlib.sha256()
            files = sorted(q for q in p.rglob("*") if q.is_file())
            for q in files:
                h.update(f"{q.relative_to(p).as_posix()}\t{sha256_file(q)}\n".encode())
            out["sha256"] = f"{h.hexdigest()} (of the {len(files)} files' paths and sha256s)"
    except OSError:
        out["sha256"] = "not computed: the data could not be read when the card was written"
    return out


def clean_lines(report: dict[str, Any] | None) -> list[str]:
    """The cleaning and deduplication report (clean_report.json) as Markdown bullets."""
    if not isinstance(report, dict) or not report:
        return []

    def n(key: str) -> int:
        v = report.get(key)
        return len(v) if isinstance(v, list) else int(v or 0)

    def removed(key: str) -> str:
        items = report.get(key) if isinstance(report.get(key), list) else []
        return f"{len(items):,} documents ({sum(int(d.get('bytes', 0)) for d in items):,} bytes)"

    lines = [f"- cleaning: {n('documents_in'):,} documents ({n('bytes_in'):,} bytes) in, {n('documents_out'):,} "
             f"({n('bytes_out'):,} bytes) out"]
    if n("normalized"):
        lines.append(f"- Unicode NFC / newline normalisation changed {n('normalized'):,} documents")
    if n("gutenberg_stripped"):
        lines.append(f"- Project Gutenberg headers and footers stripped from {n('gutenberg_stripped'):,} documents "
                     f"({n('gutenberg_bytes'):,} bytes)")
    if n("whitespace_bytes"):
        lines.append(f"- whitespace collapsed: {n('whitespace_bytes'):,} bytes")
    if n("empty"):
        lines.append(f"- empty documents removed: {n('empty'):,}")
    options = report.get("options") or {}
    lines.append(f"- exact duplicates removed: {removed('exact_duplicates')}" if options.get("dedup", True)
                 else "- exact deduplication: off")
    lines.append(f"- near duplicates removed (MinHash, Jaccard >= {options.get('near_threshold', '?')}): "
                 f"{removed('near_duplicates')}" if options.get("near_dedup", True) else "- near deduplication: off")
    if options:
        lines.append("- options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
    return lines


def training_compute(model_config: Any, tokens: int, seconds: float, threads: int, device: str = "cpu",
                     seq_len: int | None = None, note: str | None = None) -> dict[str, Any]:
    """What a training run cost: tokens, FLOPs (`model.info.train_flops_per_token` x tokens), hours
    and energy (see the module doc and WATTS_PER_CORE / WATTS_PER_GPU); `note` says how the FLOPs
    figure departs from the work done, if it does.

    >>> from scratchllm.config.model import ModelConfig
    >>> c = training_compute(ModelConfig.preset("tiny"), tokens=1000, seconds=3600.0, threads=4)
    >>> c["cpu core-hours"], c["energy (kWh)"]
    (4.0, 0.04)
    """
    from scratchllm.model.info import train_flops_per_token

    per_token = train_flops_per_token(model_config, seq_len)
    kind = str(device).split(":")[0]
    hours = seconds / 3600
    out: dict[str, Any] = {"tokens seen": int(tokens), "sequence length": seq_len or model_config.context_length,
                           "FLOPs per token": int(per_token), "FLOPs": int(per_token) * int(tokens),
                           "FLOPs formula": FLOPS_FORMULA, **({"FLOPs note": note} if note else {}),
                           "wall time (s)": float(seconds), "device": kind}
    if kind in WATTS_PER_GPU:
        watts = WATTS_PER_GPU[kind]
        out["GPU hours"] = hours
        out["energy (kWh)"] = hours * watts / 1000
        out["energy assumptions"] = (f"GPU hours x {watts:g} W per GPU (one GPU; the CPU, memory, cooling and the "
                                     f"rest of the machine not counted)")
    else:
        out["torch threads"] = int(threads)
        out["cpu core-hours"] = hours * threads
        out["energy (kWh)"] = hours * threads * WATTS_PER_CORE / 1000
        out["energy assumptions"] = (f"CPU core-hours (wall time x torch threads) x {WATTS_PER_CORE:g} W per busy "
                                     f"core; memory, disks, cooling and idle power not counted; redo it with your "
                                     f"machine's watts per core")
    return out


def compute_lines(compute: dict[str, Any] | None) -> list[str]:
    """The "Training compute" bullets of `training_compute`'s dict."""
    if not compute:
        return []
    out = []
    for k, v in compute.items():
        if k == "FLOPs":
            out.append(f"- FLOPs: {v:.3e} ({v:,})")
        elif k == "FLOPs per token":
            out.append(f"- FLOPs per token: {v:,}")
        elif isinstance(v, float):
            out.append(f"- {k}: {v:.4g}")
        elif isinstance(v, int):
            out.append(f"- {k}: {v:,}")
        else:
            out.append(f"- {k}: {v}")
    return out


LIMITATIONS = [
    "No safety tuning, filtering or alignment: outputs can be false, offensive or nonsensical; review them before "
    "anyone else reads them.",
    "It makes things up: nothing factual, advisory (medical, legal, financial) or safety-relevant.",
    "A small model trained on little text: not comparable with production LLMs on benchmarks; it is a teaching and "
    "experimentation model.",
]


def use_lines(kind: str, dataset: str | None = None, description: str | None = None, method: str | None = None,
              source: str | None = None) -> list[str]:
    """The "## Intended use" and "## Known limitations" sections for a model of `kind` ("pretrained",
    "finetuned", "imported", "quantized", "pruned")."""
    corpus = f"{dataset}" + (f" ({description})" if description else "") if dataset else "its training text"
    if kind == "pretrained":
        use = [f"- Learning and experimentation: how a GPT trains, generates and fails; text in the style of {corpus}."]
        lim = [f"- It writes like its training text and nothing else: a model trained on Shakespeare writes "
               f"Shakespeare. This one learned from {corpus} only, with that text's language, era and biases.",
               *(f"- {x}" for x in LIMITATIONS)]
    elif kind == "finetuned":
        use = [f"- The task it was finetuned for ({method or 'finetuning'} on {corpus}), for experimentation; "
               f"judge it by the results on this card and by `scratchllm eval` on your own data."]
        lim = [f"- It keeps everything its source model ({source}) learned and lacked; see the source's card.",
               "- Finetuning on a few hundred or thousand examples teaches a format and a task, not knowledge or "
               "judgement; instruction finetuning is not safety tuning.",
               *(f"- {x}" for x in LIMITATIONS)]
    else:
        how = {"imported": "converted to scratchllm's format; the weights are unchanged",
               "quantized": "its weights rounded to fewer bits, which changes its outputs a little",
               "pruned": "weights removed by magnitude, which changes its outputs (more without a recovery "
                         "finetune)"}[kind]
        use = [f"- That of its source ({source}): this is the same model, {how}. The source's licence and intended "
               f"use govern."]
        lim = ["- The source's limitations, all of them (see its card or documentation); scratchllm added no "
               "safety tuning or filtering.",
               *(["- Measure the difference from the source on your own text before relying on it (`scratchllm "
                  "eval compare SOURCE THIS --file ...`)."] if kind != "imported" else [])]
    return ["## Intended use", "", *use, "", "## Known limitations", "", "Not fit for, or to be read with care:",
            "", *lim]


def card_section(text: str, heading: str) -> str | None:
    """The body of the "## heading" section of a card (to the next "## "), or None."""
    lines, out, inside = text.splitlines(), [], False
    for line in lines:
        if line.startswith("## "):
            if inside:
                break
            inside = line[3:].strip() == heading
            continue
        if inside:
            out.append(line)
    return "\n".join(out).strip("\n") if inside or out else None


def source_lines(source: str | os.PathLike | None) -> list[str]:
    """The source model's "Data provenance" and "Training compute" sections, copied from its card (demoted
    to "###"), under "## Source model's data and compute"; a pointer to the source when it has no card."""
    if source is None:
        return []
    card = find_card(source) if Path(source).exists() else None
    head = ["## Source model's data and compute", ""]
    if card is None:
        named = readme_datasets(source)
        return head + [f"Not recorded by scratchllm: {source} has no scratchllm model card; see the source's own "
                       f"documentation for its training data and compute."
                       + (f" Its README names these datasets: {', '.join(named)}." if named else ""), ""]
    text = card.read_text(encoding="utf-8", errors="replace")
    out = head + [f"From {card}:", ""]
    for heading in ("Data provenance", "Data", "Training compute"):
        body = card_section(text, heading)
        if body:
            out += [f"### {heading}", "", *[("#" + x if x.startswith("## ") else x) for x in body.splitlines()], ""]
    return out


def readme_datasets(folder: str | os.PathLike) -> list[str]:
    """The `datasets:` a Hugging Face folder's README.md front matter lists (inline or as a YAML list).

    >>> import tempfile; d = Path(tempfile.mkdtemp())
    >>> _ = (d / "README.md").write_text("---\\nlicense: mit\\ndatasets:\\n- openwebtext\\n- 'c4'\\n---\\n# x\\n")
    >>> readme_datasets(d)
    ['openwebtext', 'c4']
    """
    import re

    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return []
    try:
        text = readme.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    front = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    if not front:
        return []
    found = re.search(r"^datasets:[ \t]*(\[.*?\])?[ \t]*\n((?:[ \t]*-[^\n]*\n?)*)", front.group(1) + "\n", re.M)
    if not found:
        return []
    items = found.group(1).strip("[]").split(",") if found.group(1) else \
        [line.strip()[1:] for line in found.group(2).splitlines() if line.strip().startswith("-")]
    return [x.strip().strip("'\"") for x in items if x.strip().strip("'\"")]


def derived_lines(kind: str, source: str | os.PathLike, source_name: str | None = None,
                  compute: dict[str, Any] | None = None) -> str:
    """The transparency sections of an imported, quantized or pruned model's card: its data and compute
    are its source's (copied from the source's card when it has one), and the intended use and
    limitations of its kind. `compute` (`training_compute`'s dict) is the training done here, if any
    (a pruned model's recovery finetune); without it the card says no training happened here."""
    if kind not in DERIVED_KINDS:
        raise ValueError(f"kind must be one of {DERIVED_KINDS}, got {kind!r}")
    command = {"imported": "import", "quantized": "quantize", "pruned": "prune"}[kind]
    done = "converted" if kind == "imported" else kind
    if compute:
        lines = ["## Training compute", "", f"Here (`scratchllm {command}`, after the source's training):", "",
                 *compute_lines(compute), ""]
    else:
        lines = ["## Training compute", "",
                 f"- none here: `scratchllm {command}` {done} the source's weights without training; the training "
                 f"compute is the source's.", ""]
    lines += source_lines(source)
    lines += use_lines(kind, source=source_name or str(source))
    return "\n".join(lines) + "\n"
