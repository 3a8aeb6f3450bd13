"""`scratchllm data list|get|stats|clean|prepare`: corpora, their statistics, cleaning, the text pipeline.

Heavy imports (numpy, the tokenizers) happen inside the command functions.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from scratchllm.cli import needs_action
    from scratchllm.cli.settings import add_settings_help
    from scratchllm.config.data import DataConfig

    p = subparsers.add_parser("data", help="datasets: list, fetch, statistics, cleaning, token shards",
                              description="Corpora and the text pipeline.")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=needs_action(p))

    def common(q: argparse.ArgumentParser, reading: bool = True) -> None:
        q.add_argument("--data-dir", help="folder searched before the cache (else $SCRATCHLLM_DATA_DIR)")
        q.add_argument("--offline", action="store_true", help="never download; use local copies only")
        if reading:
            q.add_argument("--text-field", default="text", help="field with the text in JSONL/JSON/CSV (text)")
            q.add_argument("--separator", help="split text files into documents on this string, e.g. '\\n\\n'")
            q.add_argument("--errors", choices=["strict", "replace"], default="strict",
                           help="bytes that are not UTF-8: stop with an error (strict) or use U+FFFD (replace)")

    q = sub.add_parser("list", help="the named datasets, their sources and licences")
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("get", help="fetch datasets into the cache (checked by sha256) and print their paths")
    q.add_argument("names", nargs="+", metavar="NAME", help="dataset names (gpt2 = both GPT-2 tokenizer files)")
    common(q, reading=False)
    q.set_defaults(func=cmd_get)

    q = sub.add_parser("stats", help="bytes, documents, lines, characters and tokens of a corpus")
    q.add_argument("dataset", metavar="NAME|PATH", help="a dataset name or a text file, folder, .jsonl, .json, .csv")
    q.add_argument("--tokenizer", help="count tokens with: gpt2, char, or a saved tokenizer PATH")
    common(q)
    q.set_defaults(func=cmd_stats)

    q = sub.add_parser("clean", help="normalise, strip Gutenberg boilerplate, remove duplicates; report")
    q.add_argument("dataset", metavar="NAME|PATH")
    q.add_argument("--out", help="write the cleaned documents here as JSONL ({\"text\": ...} per line)")
    q.add_argument("--report", help="write the JSON report here (default: OUT.report.json, if --out)")
    q.add_argument("--no-nfc", dest="nfc", action="store_false", help="skip Unicode NFC normalisation")
    q.add_argument("--no-gutenberg", dest="strip_gutenberg", action="store_false",
                   help="keep Project Gutenberg headers and footers")
    q.add_argument("--collapse-whitespace", action="store_true", help="collapse runs of spaces and blank lines")
    q.add_argument("--no-dedup", dest="dedup", action="store_false", help="keep exact duplicates")
    q.add_argument("--no-near-dedup", dest="near_dedup", action="store_false", help="keep near duplicates")
    q.add_argument("--near-threshold", type=float, default=0.8, help="Jaccard similarity of near duplicates (0.8)")
    q.add_argument("--shingle", choices=["word", "char"], default="word", help="shingles of words or characters")
    q.add_argument("--shingle-size", type=int, default=5, help="words or characters per shingle (5)")
    common(q)
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

    names = [n for name in args.names for n in GROUPS.get(name, (name,))]
    for n in names:
        source(n)  # an unknown name fails before anything is downloaded
    for n in names:
        print(fetch(n, data_dir=args.data_dir, offline=args.offline))
    return 0


def unescape(text: str | None) -> str | None:
    r"""Backslash escapes typed on a command line as real characters: `\n\n` -> two newlines.

    >>> unescape(r"\n\n"), unescape(r"a\tb"), unescape(None)
    ('\n\n', 'a\tb', None)
    """
    if text is None:
        return None
    return text.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r")


def _documents(args):
    from scratchllm.data.sources import load_corpus

    return load_corpus(args.dataset, args.data_dir, args.text_field, separator=unescape(args.separator),
                       errors=args.errors, offline=args.offline)


def cmd_stats(args) -> int:
    from scratchllm.data.stats import corpus_stats, format_stats, resolve_tokenizer

    docs = _documents(args)
    texts = [d.text for d in docs]
    tokenizer = resolve_tokenizer(args.tokenizer, texts, args.data_dir) if args.tokenizer else None
    print(format_stats(corpus_stats(texts, tokenizer), title=str(args.dataset)))
    return 0


def cmd_clean(args) -> int:
    import json
    from pathlib import Path

    from scratchllm.data.clean import clean_documents
    from scratchllm.files import write_atomic

    docs = _documents(args)
    texts, report = clean_documents(docs, nfc=args.nfc, strip_gutenberg=args.strip_gutenberg,
                                    collapse_whitespace=args.collapse_whitespace, dedup=args.dedup,
                                    near_dedup=args.near_dedup, near_threshold=args.near_threshold,
                                    shingle=args.shingle, shingle_size=args.shingle_size)
    print(report.summary())
    report_path = args.report or (f"{args.out}.report.json" if args.out else None)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
        print(f"wrote {len(texts):,} documents to {out}")
    if report_path:
        print(f"report: {report.save(report_path)}")
    return 0


def cmd_prepare(args) -> int:
    from pathlib import Path

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
