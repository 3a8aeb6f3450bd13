"""`scratchllm export FORMAT RUN --out DEST`: a model in another toolkit's format.

    scratchllm export hf runs/shakespeare --out hf/shakespeare   # a transformers folder

RUN is anything `scratchllm.interop.load.load_any` reads: a run or checkpoint folder, a Hugging
Face folder, OpenAI's GPT-2 folder. Each format is one entry of FORMATS: a function adding its
options and one doing the export (`add_FORMAT(parser)`, `export_FORMAT(args)`); a new format is two
small functions and a line. Every export is written atomically: on an error nothing is left.
"""

from __future__ import annotations

import argparse


def add_hf(p) -> None:
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")


def export_hf(args) -> int:
    """GPT-2-shaped models as GPT2LMHeadModel, Llama-style as LlamaForCausalLM, QK-norm as Qwen3ForCausalLM."""
    from scratchllm.interop.hf import write_hf
    from scratchllm.interop.load import load_any

    model, tokenizer, meta = load_any(args.run)
    out = write_hf(model, tokenizer, args.out, meta.get("generation"))
    print(f"wrote {out} (transformers: AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


# format -> (help, add its options, do the export)
FORMATS = {
    "hf": ("a Hugging Face transformers folder (config.json, model.safetensors, tokenizer.json)", add_hf, export_hf),
}


def register(subparsers) -> None:
    from scratchllm.cli import needs_action

    p = subparsers.add_parser("export", help="write a model in another format (hf)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="export_format", metavar="FORMAT")
    p.set_defaults(func=needs_action(p))
    for name, (help, add_options, export) in FORMATS.items():
        f = sub.add_parser(name, help=help, description=help)
        f.add_argument("run", metavar="RUN",
                       help="run or checkpoint folder, Hugging Face folder or OpenAI GPT-2 folder")
        add_options(f)
        f.set_defaults(func=export)
