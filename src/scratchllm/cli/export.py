"""`scratchllm export FORMAT RUN --out DEST`: a model in another toolkit's format.

    scratchllm export hf runs/shakespeare --out hf/shakespeare      # a transformers folder
    scratchllm export onnx runs/shakespeare --out model.onnx --kv-cache

RUN is anything `scratchllm.interop.load.load_any` reads: a run or checkpoint folder, a Hugging
Face folder, OpenAI's GPT-2 folder. Each format is one entry of FORMATS: a function adding its
options and one doing the export (`add_FORMAT(parser)`, `export_FORMAT(args)`); a new format is two
small functions and a line. Every export is written atomically: on an error nothing is left.
"""

from __future__ import annotations

import argparse


def _load(path: str):
    """(model, tokenizer, meta) of the RUN a user named: the one loader every format uses."""
    from scratchllm.errors import UserError
    from scratchllm.interop.load import load_any

    model, tokenizer, meta = load_any(path)
    if "quantization" in meta:
        raise UserError(f"{path} is a quantized model, which export does not write (the formats here take "
                        f"full-precision weights); export the model it was quantized from")
    return model, tokenizer, meta


# --- hf ---------------------------------------------------------------------------------------------------
def add_hf(p) -> None:
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")


def export_hf(args) -> int:
    """GPT-2-shaped models as GPT2LMHeadModel, Llama-style as LlamaForCausalLM, QK-norm as Qwen3ForCausalLM."""
    from scratchllm.interop.hf import write_hf

    model, tokenizer, meta = _load(args.run)
    out = write_hf(model, tokenizer, args.out, meta.get("generation"))
    print(f"wrote {out} (transformers: AutoModelForCausalLM.from_pretrained({str(out)!r}))")
    return 0


# --- onnx -------------------------------------------------------------------------------------------------
def add_onnx(p) -> None:
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--kv-cache", action="store_true",
                   help="add past key/value inputs and present key/value outputs (for cached generation)")


def export_onnx(args: argparse.Namespace) -> int:
    """input_ids (batch, sequence) -> logits; with --kv-cache also past_keys/past_values
    (n_layer, batch, kv_heads, past, head_dim) in and present_keys/present_values out."""
    from scratchllm.interop.onnx_export import export_onnx as write_onnx
    from scratchllm.interop.onnx_export import require_onnx

    require_onnx()  # before loading a large model
    model, _, _ = _load(args.run)
    print(write_onnx(model, args.out, kv_cache=args.kv_cache))
    return 0


# format -> (help, add its options, do the export)
FORMATS = {
    "hf": ("a Hugging Face transformers folder (config.json, model.safetensors, tokenizer.json)", add_hf, export_hf),
    "onnx": ("an ONNX graph for onnxruntime, fp32, optionally with KV-cache inputs (pip install "
             "'scratchllm[export]')", add_onnx, export_onnx),
}


def register(subparsers) -> None:
    from scratchllm.cli import needs_action

    p = subparsers.add_parser("export", help="write a model in another format (hf, onnx)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="export_format", metavar="FORMAT")
    p.set_defaults(func=needs_action(p))
    for name, (help, add_options, export) in FORMATS.items():
        f = sub.add_parser(name, help=help, description=help)
        f.add_argument("run", metavar="RUN",
                       help="run or checkpoint folder, Hugging Face folder or OpenAI GPT-2 folder")
        add_options(f)
        f.set_defaults(func=export)
