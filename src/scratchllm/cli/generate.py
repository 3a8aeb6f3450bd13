"""`scratchllm generate`: text from a trained checkpoint (or a random-weight preset).

    scratchllm generate "To be, or not"                      # latest run in ./runs
    scratchllm generate --model runs/shakespeare "ROMEO:" --temperature 0.8 --top-k 50 --stream
    scratchllm generate --model gpt2-small "Hello" --max-new-tokens 20   # random weights
    echo "Once upon" | scratchllm generate --stop "\\n\\n" --seed 1
    scratchllm generate --file prompts.txt --batch --temperature 0 > out.jsonl   # one prompt a line
    scratchllm generate -m runs/instruct-alpaca-book --instruction "Name a colour." --temperature 0

`--instruction` (and `--input`) is formatted with the checkpoint's prompt template (generation.json's
"prompt_template", written by `scratchllm finetune instruct`; Alpaca's for a model without one) and
only the response is printed.

Sampling options are SampleConfig's fields (flags here, or `--key value` overrides). This command
wires two layer-2 packages together: `scratchllm.checkpoint` reads the model and its tokenizer
(`load_model`), `scratchllm.generate` samples from it; neither needs the other, and neither needs
training.
"""

from __future__ import annotations

import argparse
import sys

# SampleConfig's fields that are flags of their own (the rest are `--key value` overrides).
SAMPLE_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "stop", "seed",
                "prompt_lookup")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help="generate text from a checkpoint or preset",
        description="Generate text with a trained model (a run or checkpoint folder; default: the latest run in "
                    "./runs) or a model preset with random weights. Extra --key value flags override sampling "
                    "settings (SampleConfig).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", default=None, help="prompt text (default: --file, else stdin if piped)")
    p.add_argument("--model", "-m", default=None,
                   help="run folder, checkpoint folder, or preset name (random weights); default: latest run")
    p.add_argument("--runs-dir", default="runs", help="where to look for the latest run (default: runs)")
    p.add_argument("--file", "-f", default=None, help="read the prompt from this file")
    p.add_argument("--instruction", default=None, metavar="TEXT",
                   help="an instruction for a finetuned model: formatted with the checkpoint's prompt template "
                        "(alpaca or chat; alpaca if it names none); only the response is printed")
    p.add_argument("--input", default=None, metavar="TEXT", help="the instruction's input (with --instruction)")
    from scratchllm.cli.settings import add_setting_flags
    from scratchllm.config.sample import SampleConfig

    add_setting_flags(p, SampleConfig(), SAMPLE_FLAGS, "sampling (SampleConfig; --stop is repeatable, \\n and "
                      "\\t in it are newline and tab)", metavars={"prompt_lookup": "N"})
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--no-echo", action="store_true", help="print only the generated text, not the prompt")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--data-dir", default=None,
                   help="folder holding gpt2/encoder.json and gpt2/vocab.bpe, for presets (default: "
                        "SCRATCHLLM_DATA_DIR, then the cache)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights dtype (default fp32)")
    p.add_argument("--batch", action="store_true",
                   help="each line of --file (or stdin) is a prompt (empty lines are skipped); generate them "
                        "in batches and print one JSON object a line: {line, prompt, completion, finish_reason "
                        "(eos, stop or length), prompt_tokens, completion_tokens}. With temperature 0 each "
                        "completion equals that prompt generated alone")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="--batch: prompts generated together (default 8); a batch shares each read of the "
                        "weights and runs until its longest completion ends")
    from scratchllm.cli.inputs import add_errors_option

    add_errors_option(p)
    # `train` spells it runs_dir (a config field); accept that spelling here too, documented as --runs-dir
    p.add_argument("--runs_dir", dest="runs_dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=run, accepts_overrides=True)


def sample_config(args):
    """SampleConfig from the flags that were given, then `--key value` overrides (validated)."""
    from scratchllm.cli.inputs import unescape
    from scratchllm.cli.settings import given_settings
    from scratchllm.config.base import parse_overrides
    from scratchllm.config.sample import SampleConfig

    given = given_settings(args, SAMPLE_FLAGS)
    if "stop" in given:
        given["stop"] = tuple(unescape(s) for s in given["stop"])
    config = SampleConfig.from_dict(given)
    if args.overrides:
        config = config.override(parse_overrides(args.overrides))
    return config


def read_prompt(args) -> str:
    """The prompt: the argument, else --file, else stdin when it is piped, else "" (UTF-8, see cli.inputs)."""
    from scratchllm.cli.inputs import read_argument, read_file, read_stdin

    if args.prompt is not None:
        return read_argument(args.prompt, "the prompt argument", args.errors)
    if args.file is not None:
        return read_file(args.file, args.errors, what="prompt file")
    if not sys.stdin.isatty():
        return read_stdin(args.errors)
    return ""


def read_batch(args) -> list[tuple[int, str]]:
    """--batch: (line number, prompt) for each non-empty line of --file or stdin; a "\\r" before
    the newline (Windows line ends) is not part of the prompt."""
    from scratchllm.cli.inputs import read_file, read_stdin
    from scratchllm.errors import UserError

    if args.prompt is not None:
        raise UserError("--batch reads one prompt a line from --file or standard input, not from an argument")
    if args.stream:
        raise UserError("--batch prints one JSON object a line when each batch is done; drop --stream")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.file is not None:
        text = read_file(args.file, args.errors, what="prompt file")
        source = args.file
    elif not sys.stdin.isatty():
        text, source = read_stdin(args.errors), "standard input"
    else:
        raise UserError("--batch needs prompts: give --file PROMPTS.txt (one prompt a line) or pipe them in")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    prompts = [(n, line) for n, line in enumerate(lines, start=1) if line]
    if not prompts:
        raise UserError(f"{source} has no prompts: give one prompt a line")
    return prompts


def load(args):
    """(model, tokenizer, description, end-of-text) for --model (a folder `interop.load.load_any` reads: run,
    checkpoint, Hugging Face or OpenAI GPT-2; or a preset) or the latest run."""
    from pathlib import Path

    from scratchllm.checkpoint import latest_run
    from scratchllm.config.model import PRESET_ALIASES, PRESETS
    from scratchllm.errors import UserError
    from scratchllm.generate.engine import TOKENIZER_EOS
    from scratchllm.interop.load import load_any

    name = args.model
    if name is not None and not Path(name).exists() and (name in PRESETS or name in PRESET_ALIASES):
        return (*preset_model(name, args.data_dir), TOKENIZER_EOS)
    if name is None:
        folder = latest_run(args.runs_dir)
    else:
        folder = Path(name)
        if not folder.exists():
            raise UserError(f"model {name} is neither a folder nor a preset; pass a run or checkpoint folder "
                            f"(runs/<name>), a Hugging Face or OpenAI GPT-2 folder, or one of the presets: "
                            f"{', '.join(PRESETS)}")
    model, tokenizer, meta = load_any(folder)
    where = meta.get("checkpoint", folder)
    if tokenizer is None:
        files = "tokenizer.scratchllm.json" if meta["format"] == "scratchllm" else "tokenizer files"
        raise UserError(f"{where} has no {files}; cannot turn text into tokens")
    what = "checkpoint" if meta["format"] == "scratchllm" else f"{meta['format']} model"
    args.prompt_template = (meta.get("generation") or {}).get("prompt_template")  # for --instruction
    args.generation = meta.get("generation") or {}  # for chat: the template (serve.chat.model_template)
    # an imported model's own end-of-text ids (generation_config.json: Llama 3 has several), else the tokenizer's
    eos = (meta.get("generation") or {}).get("eos_token_id")
    return model, tokenizer, f"{what} {where}", TOKENIZER_EOS if eos is None else eos


def preset_model(name: str, data_dir=None):
    """A preset with random weights and GPT-2's tokenizer (if its files are at hand) or raw bytes."""
    import torch

    from scratchllm.config.model import ModelConfig
    from scratchllm.errors import UserError
    from scratchllm.model import GPT
    from scratchllm.tokenizer.bpe import BPETokenizer

    try:
        from scratchllm.data.sources import gpt2_tokenizer

        tokenizer, kind = gpt2_tokenizer(data_dir, offline=True), "GPT-2's tokenizer"
    except (UserError, OSError):
        # 256 single-byte tokens and <|endoftext|>: every text encodes, every id decodes
        tokenizer = BPETokenizer([bytes([i]) for i in range(256)], [], special_tokens={"<|endoftext|>": 256})
        kind = "a byte-level tokenizer (GPT-2's files were not found)"
    torch.manual_seed(0)
    config = ModelConfig.preset(name, vocab_size=tokenizer.vocab_size)
    return GPT(config).eval(), tokenizer, f"preset {name} with RANDOM weights and {kind}"


def run(args) -> int:
    from scratchllm.errors import UserError
    from scratchllm.files import check_data_dir
    from scratchllm.runtime import pick_device, torch_dtype

    config = sample_config(args)  # validate options before loading anything
    if args.data_dir is not None:
        check_data_dir(args.data_dir)  # a mistyped folder is an error, never a silent fallback to byte tokens
    batch = read_batch(args) if args.batch else None
    if args.instruction is not None and (batch is not None or args.prompt is not None or args.file is not None):
        raise UserError("--instruction is the prompt: give it without a prompt argument, --file or --batch")
    if args.input is not None and args.instruction is None:
        raise UserError("--input goes with --instruction (the instruction's input)")
    prompt = read_prompt(args) if batch is None and args.instruction is None else ""
    model, tokenizer, what, eos = load(args)
    model = model.to(device=pick_device(args.device), dtype=torch_dtype(args.dtype))
    print(f"[{what}]", file=sys.stderr)
    if batch is not None:
        return run_batch(model, tokenizer, batch, config, args.batch_size, eos)

    from scratchllm.generate.text import stream

    if args.instruction is not None:
        prompt, config = instruction_prompt(args, config)
    out = sys.stdout
    if not args.no_echo and args.instruction is None:
        out.write(prompt)
        out.flush()
    pieces = stream(model, tokenizer, prompt, config, eos_id=eos)
    if args.stream:
        for piece in pieces:
            out.write(piece)
            out.flush()
    else:
        out.write("".join(pieces))
    out.write("\n")
    out.flush()
    return 0


def instruction_prompt(args, config):
    """(prompt, config) for --instruction: the instruction and --input in the checkpoint's template (Alpaca's
    when it names none, which any model can read), and that template's stop strings added."""
    from scratchllm.cli.inputs import read_argument
    from scratchllm.generate.templates import instruction_prompt as format_instruction
    from scratchllm.generate.templates import template_stops

    template = getattr(args, "prompt_template", None) or "alpaca"
    instruction = read_argument(args.instruction, "--instruction", args.errors)
    given = read_argument(args.input, "--input", args.errors) if args.input is not None else ""
    stops = tuple(s for s in template_stops(template) if s not in config.stop)
    return format_instruction(template, instruction, given), config.replace(stop=config.stop + stops)


def run_batch(model, tokenizer, prompts: list[tuple[int, str]], config, batch_size: int, eos) -> int:
    """Generate `prompts` (line number, text) `batch_size` at a time; one JSON line per prompt, in order."""
    import json

    from scratchllm.generate.sampling import make_generator
    from scratchllm.generate.text import complete_batch, prompt_ids

    generator = make_generator(config.seed, model.lm_head.weight.device)  # one stream of draws for the whole file
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        done = complete_batch(model, tokenizer, [p for _, p in chunk], config, eos_id=eos, generator=generator)
        for (line, prompt), c in zip(chunk, done):
            record = {"line": line, "prompt": prompt, "completion": c.text, "finish_reason": c.finish_reason,
                      "prompt_tokens": len(prompt_ids(tokenizer, prompt)), "completion_tokens": len(c.ids)}
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    return 0
