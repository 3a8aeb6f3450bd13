"""The `scratchllm` command: one entry point, a subcommand per concept.

Each subcommand lives in its own module here (`cli/data.py`, `cli/tokenizer.py`, ...) with
`register(subparsers)` that adds its parser and sets `func`, a function taking the parsed
arguments. Modules import torch and the rest of the package inside `func`, never at the top, so
`scratchllm --help` is instant. A `UserError` (or an OSError the machine caused: no permission,
a full disk) becomes one `error: ...` line on stderr and exit code 2; a Python warning one
`warning: ...` line. A command given without its action prints its help and exits 2. Exit codes:
0 done, 2 bad input, 130 Ctrl-C, 143 SIGTERM (train; a second signal there too: 128 + the signal),
141 when the reader of a pipe went away.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import warnings
from collections.abc import Callable

# Subcommand modules, in the order `--help` lists them.
COMMANDS = ["data", "tokenizer", "model", "generate", "train", "finetune", "classify", "eval", "quantize", "prune",
            "importer", "export", "download", "lora", "inspect",
            "serve", "chat", "sweep"]


def build_parser() -> argparse.ArgumentParser:
    from scratchllm import __version__

    parser = argparse.ArgumentParser(
        prog="scratchllm",
        description="A GPT from first principles: data, tokenizers, model, generation, training.",
    )
    parser.add_argument("--version", action="version", version=f"scratchllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"scratchllm.cli.{name}").register(sub)
    return parser


def needs_action(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """The `func` of a command given without its action (`scratchllm data`): help on stderr, exit 2.

    One rule for every level, bare `scratchllm` included: a missing (sub)command is a usage error.
    """

    def func(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return func


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a Python warning as one `warning: ...` line (no source path, no code line)."""
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=file if file is not None else sys.stderr)


def main(argv: list[str] | None = None) -> int:
    from scratchllm.errors import Aborted, UserError, os_error_message

    parser = build_parser()
    parser.set_defaults(func=needs_action(parser))
    shown = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        args, extra = parser.parse_known_args(argv)  # --help prints here
        if extra and not getattr(args, "accepts_overrides", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = extra
        args.argv = argv  # the command line as given (train --nproc starts it again in each process)
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`scratchllm ... | head`): stop quietly, as other Unix tools do
        _silence_stdout()
        return 141
    except OSError as e:
        message = os_error_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or a second stop signal during training (Aborted: its own code)
        terminated = isinstance(e, Aborted) and e.signum == signal.SIGTERM
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return e.exit_code if isinstance(e, Aborted) else 130
    finally:
        warnings.showwarning = shown
    return int(rc or 0)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (tests capture it)
        pass


def run() -> None:  # pragma: no cover - console entry
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
