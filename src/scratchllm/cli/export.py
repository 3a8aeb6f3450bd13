"""`scratchllm export FORMAT RUN --out DEST`: a model in another toolkit's format.

    scratchllm export hf runs/shakespeare --out hf/shakespeare      # a transformers folder
    scratchllm export onnx runs/shakespeare --out model.onnx --kv-cache
    scratchllm export gguf runs/shakespeare --out shakespeare.gguf --type q8_0   # llama.cpp, Ollama

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


# --- gguf -------------------------------------------------------------------------------------------------
GGUF_EPILOG = """\
Run the file with llama.cpp (github.com/ggml-org/llama.cpp):
  llama-cli -m model.gguf -p "Once upon a time" -n 64 --temp 0
  llama-server -m model.gguf            # an OpenAI-style server on port 8080
or from Python (pip install llama-cpp-python):
  from llama_cpp import Llama; Llama("model.gguf")("Once upon a time", max_tokens=64, temperature=0)
or with Ollama: a file named Modelfile holding
  FROM ./model.gguf
  PARAMETER temperature 0
  PARAMETER stop "<|endoftext|>"
then `ollama create mymodel -f Modelfile` and `ollama run mymodel "Once upon a time"`. An instruction-tuned
run carries its chat template in the file (tokenizer.chat_template); for a ChatML ("chat") run add
  PARAMETER stop "<|im_end|>"

Types: f32 (exact), f16 (weights rounded to fp16), q8_0 and q4_0 (llama.cpp's blocks of 32 weights with an
fp16 scale: 8.5 and 4.5 bits a weight). Norms, biases and GPT-2's position table stay f32.
"""


def add_gguf(p) -> None:
    p.add_argument("--out", required=True, metavar="FILE", help="the .gguf file to write")
    # (interop.gguf.TYPES, spelled out: importing it would import torch, and --help stays instant)
    p.add_argument("--type", default="f32", metavar="f32|f16|q8_0|q4_0",
                   help="how the weight matrices are stored (default f32)")
    p.epilog = GGUF_EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def export_gguf(args: argparse.Namespace) -> int:
    """GPT-2-style models as llama.cpp's gpt2, Llama-style as llama, QK-norm ones as qwen3."""
    from pathlib import Path

    from scratchllm.interop.gguf import TYPES, require_gguf, write_gguf

    if args.type not in TYPES:  # before loading a large model
        from scratchllm.errors import UserError

        raise UserError(f"unknown --type {args.type!r}; choose one of {', '.join(TYPES)}")
    require_gguf()
    model, tokenizer, meta = _load(args.run)
    name = Path(args.run).name
    if name == "latest" and meta.get("checkpoint"):  # runs/latest: the run it names (runs/X/checkpoints/step-N)
        name = Path(meta["checkpoint"]).parent.parent.name
    out = write_gguf(model, tokenizer, args.out, args.type, meta.get("generation"), name=name)
    print(f"wrote {out} ({args.type}, {out.stat().st_size / 1e6:.1f} MB; run it: llama-cli -m {out})")
    return 0


# format -> (help, add its options, do the export)
FORMATS = {
    "hf": ("a Hugging Face transformers folder (config.json, model.safetensors, tokenizer.json)", add_hf, export_hf),
    "onnx": ("an ONNX graph for onnxruntime, fp32, optionally with KV-cache inputs (pip install "
             "'scratchllm[export]')", add_onnx, export_onnx),
    "gguf": ("a GGUF file for llama.cpp and Ollama: f32, f16, q8_0 or q4_0 (pip install 'scratchllm[export]')",
             add_gguf, export_gguf),
}


def register(subparsers) -> None:
    from scratchllm.cli import needs_action

    p = subparsers.add_parser("export", help="write a model in another format (hf, onnx, gguf)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="export_format", metavar="FORMAT")
    p.set_defaults(func=needs_action(p))
    for name, (help, add_options, export) in FORMATS.items():
        f = sub.add_parser(name, help=help, description=help)
        f.add_argument("run", metavar="RUN",
                       help="run or checkpoint folder, Hugging Face folder or OpenAI GPT-2 folder")
        add_options(f)
        f.set_defaults(func=export)
