"""`scratchllm tokenizer train|encode|decode|inspect`: tokenizers from the command line.

train    learn a tokenizer from text files (or folders of .txt files; each file is one document)
encode   text (argument, --file or stdin) -> space-separated ids
decode   ids (arguments, --file or stdin) -> text
inspect  train char, words, BPE and WordPiece on the same text (or load given ones) and compare them

`--tokenizer` takes a saved tokenizer file/folder or `gpt2` (GPT-2's encoder.json and vocab.bpe from
--data-dir/gpt2 or $SCRATCHLLM_DATA_DIR/gpt2). Heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scratchllm.cli.inputs import add_errors_option, decode_utf8, read_argument, read_file, read_stdin

KINDS = ("char", "words", "bpe", "wordpiece")

# TokenizerConfig's fields that `tokenizer train` takes as flags (path, a file to load, is not training).
TRAIN_FLAGS = ("kind", "vocab_size", "pattern", "special_tokens", "min_frequency", "lowercase")


def register(subparsers) -> None:
    from scratchllm.cli import needs_action
    from scratchllm.cli.settings import add_setting_flags
    from scratchllm.config.tokenizer import TokenizerConfig
    p = subparsers.add_parser("tokenizer", help="train, run and compare tokenizers",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    p.set_defaults(func=needs_action(p))

    t = sub.add_parser("train", help="learn a tokenizer from text files")
    t.add_argument("inputs", nargs="+", help="text files or folders of .txt files (each file is one document)")
    add_setting_flags(t, TokenizerConfig(), TRAIN_FLAGS, "settings (TokenizerConfig)",
                      aliases={"special_tokens": ["--special-token"]})
    t.add_argument("--out", default="tokenizer.scratchllm.json", help="where to save (file or folder)")
    t.add_argument("--hf-out", default=None, help="bpe: also write a Hugging Face tokenizer.json here")
    add_errors_option(t)
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("encode", help="text -> ids")
    _add_tokenizer(e)
    e.add_argument("text", nargs="?", default=None, help="text to encode (else --file, else stdin)")
    e.add_argument("--file", default=None, help="read the text from this file")
    e.add_argument("--allow-special", action="store_true", help="encode special tokens in the text as themselves")
    e.add_argument("--engine", choices=("auto", "tiktoken", "python"), default="auto",
                   help="bpe: tiktoken (fast) or python (reference); same ids")
    add_errors_option(e)
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="ids -> text")
    _add_tokenizer(d)
    d.add_argument("ids", nargs="*", help="token ids (else --file, else stdin), separated by spaces")
    d.add_argument("--file", default=None, help="read the ids from this file")
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("inspect", help="compare tokenizers on one text")
    i.add_argument("inputs", nargs="*", help="text files or folders to train on and measure")
    i.add_argument("--tokenizer", action="append", dest="tokenizers", default=None,
                   help="compare these saved tokenizers (or gpt2) instead of training (repeatable)")
    i.add_argument("--data-dir", default=None, help="folder with gpt2/encoder.json and gpt2/vocab.bpe")
    i.add_argument("--vocab-size", type=int, default=1024, help="vocab size for BPE and WordPiece (default 1024)")
    i.add_argument("--sample", default=None, help="text whose token boundaries to show (default: first line)")
    add_errors_option(i)
    i.set_defaults(func=cmd_inspect)


def _add_tokenizer(p) -> None:
    p.add_argument("--tokenizer", required=True, help="saved tokenizer file/folder, or gpt2")
    p.add_argument("--data-dir", default=None, help="folder with gpt2/encoder.json and gpt2/vocab.bpe")


# --- reading input -----------------------------------------------------------------------------
def text_files(inputs: list[str]) -> list[Path]:
    """Files named, plus the .txt files inside named folders (sorted, recursive)."""
    from scratchllm.errors import UserError

    files: list[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.txt") if f.is_file())
            if not found:
                raise UserError(f"folder {p} has no .txt files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"input {p} not found")
    return files


def read_documents(inputs: list[str], errors: str = "strict") -> list[str]:
    from scratchllm.errors import UserError

    docs = []
    for f in text_files(inputs):
        data = f.read_bytes()
        if not data.strip():
            raise UserError(f"{f} is empty; give text files with content")
        docs.append(decode_utf8(data, str(f), errors))
    return docs


def _read_input(arg: str | None, file: str | None, errors: str = "strict") -> str:
    """The input text: the argument, else --file, else standard input (the one UTF-8 rule, cli.inputs)."""
    from scratchllm.errors import UserError

    if arg is not None and file is not None:
        raise UserError("give the input either as an argument or with --file, not both")
    if arg is not None:
        return read_argument(arg, "the text argument", errors)
    if file is not None:
        return read_file(file, errors)
    return read_stdin(errors)


def _load_tokenizer(spec: str, data_dir: str | None):
    from scratchllm.files import check_data_dir
    from scratchllm.tokenizer import gpt2, load

    if data_dir is not None:
        check_data_dir(data_dir)
    if spec == "gpt2":
        return gpt2(data_dir)
    return load(spec)


# --- commands ------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from scratchllm.cli.settings import given_settings
    from scratchllm.config.tokenizer import TokenizerConfig
    from scratchllm.errors import UserError
    from scratchllm.tokenizer import build

    config = TokenizerConfig.from_dict(given_settings(args, TRAIN_FLAGS), prefix="tokenizer.")
    if config.kind not in KINDS:  # gpt2: a released vocabulary
        raise UserError(f"{config.kind} is GPT-2's released vocabulary, not trained here; use --tokenizer gpt2 "
                        f"with encode/decode, or --kind bpe to train the same algorithm")
    if args.hf_out and config.kind != "bpe":
        raise UserError("--hf-out exports byte-level BPE only; use --kind bpe")
    docs = read_documents(args.inputs, args.errors)
    tok = build(config, docs, progress=not args.no_progress)
    if args.out.endswith(("/", "\\")):  # a folder that may not exist yet
        Path(args.out).mkdir(parents=True, exist_ok=True)
    path = tok.save(args.out)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    print(f"trained {config.kind} tokenizer: {tok.vocab_size} ids from {len(docs)} file(s), {n_bytes:,} bytes -> "
          f"{path}")
    if args.hf_out:
        from scratchllm.tokenizer.hf import export_hf

        print(f"Hugging Face tokenizer.json -> {export_hf(tok, args.hf_out)}")
    return 0


def cmd_encode(args) -> int:
    tok = _load_tokenizer(args.tokenizer, args.data_dir)
    if args.engine != "auto" and getattr(tok, "kind", "") == "bpe":
        tok.engine = args.engine
    text = _read_input(args.text, args.file, args.errors)
    ids = tok.encode(text, allowed_special="all" if args.allow_special else "none")
    print(" ".join(map(str, ids)))
    return 0


def cmd_decode(args) -> int:
    from scratchllm.errors import UserError

    tok = _load_tokenizer(args.tokenizer, args.data_dir)
    raw = " ".join(args.ids) if args.ids else _read_input(None, args.file)
    try:
        ids = [int(x) for x in raw.replace(",", " ").split()]
    except ValueError:
        bad = next(x for x in raw.replace(",", " ").split() if not x.lstrip("-").isdigit())
        raise UserError(f"{bad!r} is not a token id; give integers separated by spaces") from None
    tok.check_ids(ids)
    sys.stdout.write(tok.decode(ids))
    sys.stdout.write("\n")
    return 0


def boundaries(tok, text: str) -> str:
    """The text with a `|` between tokens; a token holding part of a UTF-8 character shows its bytes.

    >>> from scratchllm.tokenizer.char import CharTokenizer
    >>> boundaries(CharTokenizer.train("ab"), "abba")
    'a|b|b|a'
    """
    ids = tok.encode(text, allowed_special="all")
    return "|".join(tok.decode_bytes([i]).decode("utf-8", errors="backslashreplace") for i in ids)


def cmd_inspect(args) -> int:
    from scratchllm.errors import UserError
    from scratchllm.tokenizer import train

    docs = read_documents(args.inputs, args.errors) if args.inputs else []
    if args.sample is not None:
        args.sample = read_argument(args.sample, "--sample", args.errors)
    if args.tokenizers:
        toks = [(spec, _load_tokenizer(spec, args.data_dir)) for spec in args.tokenizers]
    else:
        if not docs:
            raise UserError("give text files to train on, or --tokenizer to compare saved ones")
        toks = [
            ("char", train("char", docs)),
            ("words", train("words", docs)),
            (f"bpe-{args.vocab_size}", train("bpe", docs, args.vocab_size)),
            (f"wordpiece-{args.vocab_size}", train("wordpiece", docs, args.vocab_size)),
        ]
    text = "\n".join(docs) if docs else (args.sample or "")
    if not text:
        raise UserError("give text files (or --sample) to measure the tokenizers on")
    n_bytes = len(text.encode("utf-8"))
    sample = args.sample or next((ln for ln in text.splitlines() if ln.strip()), text)[:200]
    print(f"{'tokenizer':<22} {'kind':<10} {'vocab':>7} {'tokens':>10} {'bytes/token':>12} {'tokens/byte':>12}")
    for name, tok in toks:
        try:
            n = len(tok.encode(text, allowed_special="all"))
        except UserError as e:
            print(f"{name:<22} {tok.kind:<10} {tok.vocab_size:>7} cannot encode this text: {e}")
            continue
        print(f"{name:<22} {tok.kind:<10} {tok.vocab_size:>7} {n:>10,} {n_bytes / max(n, 1):>12.2f} "
              f"{n / n_bytes:>12.3f}")
    print(f"\nsample: {sample!r}")
    for name, tok in toks:
        try:
            print(f"{name:<22} {boundaries(tok, sample)}")
        except UserError as e:
            print(f"{name:<22} cannot encode the sample: {e}")
    return 0
