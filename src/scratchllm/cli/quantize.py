"""`scratchllm quantize RUN --bits 8|4 [--group-size G] [--asymmetric] --out DIR`: a smaller, faster model.

    scratchllm quantize runs/shakespeare --bits 8 --out models/shakespeare-int8
    scratchllm quantize runs/shakespeare --bits 4 --group-size 32 --out models/shakespeare-int4

Weight-only quantization (`scratchllm.compress.quantize`): every linear layer, the head and the token
embedding as int8 (one scale per output channel) or int4 (one scale, and with --asymmetric a zero
point, per group of G inputs; G divides every layer's input size, default 32). RUN is anything
`scratchllm.interop.load.load_any` reads (run or checkpoint folder, Hugging Face folder, OpenAI's GPT-2
folder, LoRA adapters); DIR is a checkpoint folder (written atomically) with its tokenizer,
generation.json, quantization.json (the scheme) and MODEL_CARD.md, which `generate -m DIR` reads.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="quantize a model's weights to int8 or int4 (a new checkpoint)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run or checkpoint folder, Hugging Face folder or OpenAI GPT-2 folder")
    p.add_argument("--bits", type=int, required=True, help="8 (int8 per output channel) or 4 (int4 group-wise)")
    p.add_argument("--group-size", type=int, default=None, metavar="G",
                   help="int4: inputs per scale (default 32); must divide every layer's input size")
    p.add_argument("--asymmetric", action="store_true", help="int4: an integer zero point per group")
    p.add_argument("--out", required=True, help="the checkpoint folder to write (must not exist)")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scratchllm.errors import UserError
    from scratchllm.model.quant_linear import DEFAULT_GROUP, QuantScheme

    if Path(args.out).exists():
        raise UserError(f"{args.out} already exists; choose a new folder for the quantized model (nothing was written)")
    group = args.group_size if args.group_size is not None or args.bits != 4 else DEFAULT_GROUP
    scheme = QuantScheme(args.bits, group, not args.asymmetric)  # checks bits and group size before loading

    from scratchllm.compress.quantize import quantize_folder

    out = quantize_folder(args.run, args.out, scheme)
    size = (out / "model.safetensors").stat().st_size
    print(f"wrote {out} ({scheme.name}, model.safetensors {size / 1e6:.1f} MB; generate with: "
          f"scratchllm generate -m {out})")
    return 0
