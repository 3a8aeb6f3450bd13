"""`scratchllm import PATH --out DIR`: a pretrained model as an ordinary scratchllm checkpoint folder.

    scratchllm import ~/models/SmolLM2-135M --out models/smollm2     # a Hugging Face folder
    scratchllm import gpt2/124M --out models/gpt2                    # OpenAI's GPT-2 release folder

PATH is a Hugging Face model folder (config.json + model.safetensors, sharded, or pytorch_model.bin
read without running pickled code), OpenAI's GPT-2 folder (hparams.json, model.ckpt.*), or a
scratchllm run or checkpoint. The result has the tokenizer, generation.json (end-of-text, chat
template) and a MODEL_CARD.md naming the source and its licence (scratchllm.interop.importer).
Commands that take a model (`generate -m`, `train --init-from`, `export`) also read PATH directly.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("import", help="convert a Hugging Face or OpenAI GPT-2 model to a checkpoint",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="Hugging Face model folder, OpenAI GPT-2 folder, or a run/checkpoint folder")
    p.add_argument("--out", required=True, help="the checkpoint folder to write (must not exist)")
    p.set_defaults(func=run)


def run(args) -> int:
    from scratchllm.interop.importer import import_model

    out = import_model(args.path, args.out)
    print(f"wrote checkpoint {out} (see {out / 'MODEL_CARD.md'})")
    return 0
