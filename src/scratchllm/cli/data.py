"""`scratchllm data list|get|stats|clean|prepare`: corpora, their statistics, cleaning, the text pipeline.

Heavy imports (numpy, the tokenizers) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# DataConfig's fields that the data commands take as flags, by what they are about.
FETCHING = ("data_dir", "offline")
READING = ("text_field", "separator", "errors")
CLEANING = ("nfc", "strip_gutenberg", "collapse_whitespace", "dedup", "near_dedup", "near_threshold", "shingle",
            "shingle_size", "num_perm")
# Older flag spellings that keep working.
ALIASES = {"strip_gutenberg": ["--gutenberg"]}


def register(subparsers) -> None:
    from scratchllm.cli import needs_action
    from scratchllm.cli.settings import add_setting_flags, add_settings_help
    from scratchllm.config.data import DataConfig

    p = subparsers.add_parser("data", help="datasets: list, fetch, statistics, cleaning, token shards",
                              description="Corpora and the text pipeline.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=needs_action(p))

    def common(q: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
        add_setting_flags(q, DataConfig(), names, "settings (DataConfig)", aliases=ALIASES)

    q = sub.add_parser("list", help="the named datasets, their sources and licences")
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("get", help="fetch datasets into the cache (checked by sha256) and print their paths")
    q.add_argument("names", nargs="+", metavar="NAME", help="dataset names (gpt2 = both GPT-2 tokenizer files)")
    common(q, FETCHING)
    q.set_defaults(func=cmd_get)

    q = sub.add_parser("stats", help="bytes, documents, lines, characters and tokens of a corpus")
    q.add_argument("dataset", metavar="NAME|PATH", help="a dataset name or a text file, folder, .jsonl, .json, .csv")
    q.add_argument("--tokenizer", help="count tokens with: gpt2, char, or a saved tokenizer PATH")
    common(q, FETCHING + READING)
    q.set_defaults(func=cmd_stats)

    q = sub.add_parser("clean", help="normalise, strip Gutenberg boilerplate, remove duplicates; report")
    q.add_argument("dataset", metavar="NAME|PATH")
    q.add_argument("--out", help="write the cleaned documents here: FILE.jsonl as JSONL ({\"text\": ...} per line); "
                                 "FILE.txt as plain text (one document, or documents joined by --separator)")
    q.add_argument("--report", help="write the JSON report here (default: OUT.report.json, if --out)")
    common(q, FETCHING + READING + CLEANING)
    q.set_defaults(func=cmd_clean)

    q = sub.add_parser("prepare", help="the text pipeline: fetch, clean, train a tokenizer, write token shards",
                       description="Fetch, clean, train the tokenizer, write train/val token shards. Every "
                                   "setting below can be given as --key value (e.g. --dataset the-verdict, "
                                   "--tokenizer.vocab_size 1024, --data-dir DIR, --offline).")
    q.add_argument("--config", help="TOML file with the settings (its [data] table, or the whole file)")
    q.add_argument("--tokenizer", dest="tokenizer_kind", metavar="KIND",
                   help="the same as --tokenizer.kind KIND")
    q.add_argument("--out", help="output folder (default runs/data/DATASET-KINDVOCAB)")
    q.add_argument("--quiet", action="store_true", help="no progress bars or statistics")
    add_settings_help(q, DataConfig(), "settings (TOML [data] table, or --key value)")
    q.set_defaults(func=cmd_prepare, accepts_overrides=True)


def cmd_list(args) -> int:
    from scratchllm.data.sources import DATASETS, DEFAULT_DATASET, GROUPS

    width = max(len(n) for n in DATASETS)
    for name, s in DATASETS.items():
        mark = " (default)" if name == DEFAULT_DATASET else ""
        print(f"{name:<{width}}  {s.description}{mark}")
        print(f"{'':<{width}}  {s.url}")
        print(f"{'':<{width}}  licence: {s.licence}; sha256 {s.sha256}")
    aliases = ", ".join(f"{k} = {' + '.join(v)}" for k, v in GROUPS.items())
    print(f"\naliases: {aliases}")
    print("any local text file, folder of text files, .jsonl, .json or .csv (--text-field) works too")
    return 0


def cmd_get(args) -> int:
    from scratchllm.data.sources import GROUPS, fetch, source

    config = data_config(args, FETCHING)
    names = [n for name in args.names for n in GROUPS.get(name, (name,))]
    for n in names:
        source(n)  # an unknown name fails before anything is downloaded
    for n in names:
        print(fetch(n, data_dir=config.data_dir, offline=config.offline))
    return 0


def data_config(args, names: tuple[str, ...]):
    """DataConfig from the flags given (validated there: a bad value is the config's one line)."""
    from scratchllm.cli.inputs import unescape
    from scratchllm.cli.settings import given_settings
    from scratchllm.config.data import DataConfig

    given = given_settings(args, names)
    if given.get("separator") is not None:
        given["separator"] = unescape(given["separator"])
    return DataConfig.from_dict(given)


def _documents(args, config):
    from scratchllm.data.sources import load_corpus

    return load_corpus(args.dataset, config.data_dir, config.text_field, separator=config.separator,
                       errors=config.errors, offline=config.offline)


def cmd_stats(args) -> int:
    from scratchllm.data.stats import corpus_stats, format_stats, resolve_tokenizer

    config = data_config(args, FETCHING + READING)
    texts = [d.text for d in _documents(args, config)]
    tokenizer = resolve_tokenizer(args.tokenizer, texts, config.data_dir) if args.tokenizer else None
    print(format_stats(corpus_stats(texts, tokenizer), title=str(args.dataset)))
    return 0


def cmd_clean(args) -> int:
    from scratchllm.data.clean import clean_documents
    from scratchllm.files import write_atomic

    c = data_config(args, FETCHING + READING + CLEANING)
    texts, report = clean_documents(_documents(args, c), nfc=c.nfc, strip_gutenberg=c.strip_gutenberg,
                                    collapse_whitespace=c.collapse_whitespace, dedup=c.dedup,
                                    near_dedup=c.near_dedup, near_threshold=c.near_threshold,
                                    shingle=c.shingle, shingle_size=c.shingle_size, num_perm=c.num_perm)
    print(report.summary())
    report_path = args.report or (f"{args.out}.report.json" if args.out else None)
    if args.out:
        out = Path(args.out)
        text = cleaned_file_text(texts, out, c.separator)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, text)
        print(f"wrote {len(texts):,} documents to {out}")
    if report_path:
        print(f"report: {report.save(report_path)}")
    return 0


def cleaned_file_text(texts: list[str], out: Path, separator: str | None) -> str:
    r"""What `data clean --out` writes, by its extension, so that reading it back gives the same documents.

    .jsonl: one `{"text": ...}` per line. .txt: plain text, as the text reader reads it: one document
    as it is, several joined by `separator` (which then must not occur inside a document).

    >>> cleaned_file_text(["a\nb", "c"], Path("x.txt"), "\n\n")
    'a\nb\n\nc'
    """
    import json

    from scratchllm.errors import UserError

    suffix = Path(out).suffix.lower()
    if suffix == ".jsonl":
        return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    if suffix != ".txt":
        raise UserError(f"--out {out}: name a .jsonl file (JSONL, one document a line) or a .txt file (plain text)")
    if len(texts) == 1:
        return texts[0]
    if not separator:
        raise UserError(f"--out {out}: {len(texts)} documents in one .txt file need --separator (e.g. '\\n\\n', "
                        f"then read it back with the same --separator); or write a .jsonl file")
    if any(separator in t for t in texts):
        raise UserError(f"--out {out}: the separator {separator!r} occurs inside a document, so it could not be "
                        f"split again; choose another --separator or write a .jsonl file")
    return separator.join(texts)


def cmd_prepare(args) -> int:
    from pathlib import Path

    from scratchllm.cli.inputs import unescape
    from scratchllm.config.base import load_toml, parse_overrides
    from scratchllm.config.data import DataConfig
    from scratchllm.data.prepare import prepare

    settings = {}
    if args.config:
        raw = load_toml(args.config)
        settings = raw.get("data", raw) if isinstance(raw.get("data"), dict) else raw
    config = DataConfig.from_dict(settings)
    flags = parse_overrides(args.overrides)
    if args.tokenizer_kind is not None:
        flags["tokenizer.kind"] = args.tokenizer_kind
    if "separator" in flags:
        flags["separator"] = unescape(flags["separator"])
    if flags:
        config = config.override(flags)
    out = args.out
    if out is None:
        slug = Path(config.dataset).stem if "/" in config.dataset or "." in config.dataset else config.dataset
        tok = config.tokenizer
        from scratchllm.tokenizer.factory import DEFAULT_VOCAB

        size = tok.vocab_size or DEFAULT_VOCAB.get(tok.kind, "")
        out = Path("runs") / "data" / f"{slug}-{tok.kind}{size}"
    prepared = prepare(config, Path(out), progress=not args.quiet)
    if args.quiet:
        print(prepared.dir)
    else:
        print(f"prepared data in {prepared.dir}", file=sys.stderr)
    return 0
