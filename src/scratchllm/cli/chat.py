"""`scratchllm chat`: talk with a model in the terminal, answers streamed as they are written.

    scratchllm chat                                   # the latest run in ./runs
    scratchllm chat -m runs/instruct-chat --temperature 0.7
    printf 'Hello\\n/set temperature 0\\nAgain\\n' | scratchllm chat -m runs/x   # lines from a pipe

The conversation goes through the model's template (`serve.chat`: a chat or Alpaca checkpoint answers
each message; a base model continues the text, which the first lines say). Commands start with a
slash (`/help` lists them: /reset, /system, /set temperature 0.7, ...). Ctrl-C stops the current
answer and the chat goes on; Ctrl-D (or /quit) leaves. When standard input is not a terminal, each
line read is one message or command, no prompt is shown, and the chat ends at the end of the input.
Models load as `scratchllm generate` loads them (`cli.generate.load`); sampling flags are the same.
"""

from __future__ import annotations

import argparse
import sys

PROMPT = "> "  # shown before each line the user types (terminals only)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chat", help="chat with a model in the terminal",
        description="Chat with a model (a run or checkpoint folder, a Hugging Face folder, or a preset with random "
                    "weights; default: the latest run in ./runs). Answers stream as they are written; /help lists "
                    "the commands; Ctrl-C stops an answer, Ctrl-D leaves.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", "-m", default=None,
                   help="run folder, checkpoint folder, or preset name (random weights); default: latest run")
    p.add_argument("--runs-dir", default="runs", help="where to look for the latest run (default: runs)")
    p.add_argument("--system", default=None, metavar="TEXT", help="the system message to start with")
    from scratchllm.cli.generate import SAMPLE_FLAGS
    from scratchllm.cli.settings import add_setting_flags
    from scratchllm.config.sample import SampleConfig

    flags = tuple(f for f in SAMPLE_FLAGS if f != "prompt_lookup")
    add_setting_flags(p, SampleConfig(), flags, "sampling (SampleConfig; /set changes them during the chat)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--data-dir", default=None,
                   help="folder holding gpt2/encoder.json and gpt2/vocab.bpe, for presets (default: "
                        "SCRATCHLLM_DATA_DIR, then the cache)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights dtype (default fp32)")
    p.set_defaults(func=run, accepts_overrides=True, errors="strict", prompt_lookup=None)


def read_line(interactive: bool) -> str | None:
    """The next line typed (without its newline), or None at the end of the input (Ctrl-D)."""
    if interactive:
        try:
            return input(PROMPT)
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def run(args) -> int:
    from scratchllm.cli.generate import load, sample_config
    from scratchllm.errors import UserError
    from scratchllm.files import check_data_dir
    from scratchllm.runtime import pick_device, torch_dtype
    from scratchllm.serve.chat import TEMPLATE_NOTES, ChatSession, model_template

    config = sample_config(args)  # validate options before loading anything
    if args.data_dir is not None:
        check_data_dir(args.data_dir)
    model, tokenizer, what, eos = load(args)
    model = model.to(device=pick_device(args.device), dtype=torch_dtype(args.dtype))
    template = model_template(getattr(args, "generation", None))
    session = ChatSession(model, tokenizer, template, config, eos_id=eos, out=sys.stdout)
    if args.system:
        session.conversation.system = args.system
    interactive = sys.stdin.isatty()
    print(f"[{what}]", file=sys.stderr)
    session.say(f"[{TEMPLATE_NOTES[template]}]")
    if interactive:
        session.say("[/help lists the commands; Ctrl-C stops an answer; Ctrl-D leaves]")
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:  # pragma: no cover - not on every platform
            pass
    while True:
        try:
            line = read_line(interactive)
            if line is None:
                if interactive:
                    session.out.write("\n")
                break
            if not session.handle(line):
                break
        except KeyboardInterrupt:  # Ctrl-C at the prompt: a fresh line, as a shell does
            session.out.write("\n")
            session.out.flush()
        except UserError as e:  # a bad message is one line, and the chat goes on
            session.say(f"error: {e}")
        except UnicodeDecodeError as e:
            session.say(f"error: the line typed is not UTF-8 text (byte 0x{e.object[e.start]:02x}); type it again")
    return 0
