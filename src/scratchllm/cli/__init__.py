"""The `scratchllm` command: one entry point, a subcommand per concept.

Each subcommand lives in its own module here (`cli/data.py`, `cli/tokenizer.py`, ...) with
`register(subparsers)` that adds its parser and sets `func`, a function taking the parsed
arguments. Modules import torch and the rest of the package inside `func`, never at the top, so
`scratchllm --help` is instant. A `UserError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `--help` lists them.
COMMANDS = ["data", "tokenizer", "model", "generate", "train"]


def build_parser() -> argparse.ArgumentParser:
    from scratchllm import __version__

    parser = argparse.ArgumentParser(
        prog="scratchllm",
        description="A GPT from first principles: data, tokenizers, model, generation, training.",
    )
    parser.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"scratchllm.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"scratchllm.cli.{name}":
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from scratchllm.errors import UserError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def run() -> None:  # pragma: no cover - console entry
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
