"""`scratchllm export FORMAT RUN --out ...`: a trained or imported model in another format.

Each format is a small `register_<format>(sub)` + `cmd_<format>(args)` pair below; every one loads
its model through `_load(path)`, so they all accept the same RUN.

- `scratchllm export onnx RUN --out FILE [--kv-cache]`: an ONNX graph of the model (logits for
  `input_ids`; with --kv-cache also past keys/values in and present ones out), for onnxruntime.
  See `scratchllm.interop.onnx_export`.

RUN is a run folder (its latest checkpoint) or a checkpoint folder.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from scratchllm.cli import needs_action

    p = subparsers.add_parser("export", help="write a model in another format (ONNX)",
                              description="Write a trained or imported model in another format.")
    sub = p.add_subparsers(dest="export_command", metavar="FORMAT")
    register_onnx(sub)
    p.set_defaults(func=needs_action(p))


def _load(path: str):
    """(model, tokenizer, meta) of the RUN a user named: the one loader every format uses."""
    from scratchllm.checkpoint import load_model

    return load_model(path)


# --- onnx -------------------------------------------------------------------------------------------------
def register_onnx(sub) -> None:
    o = sub.add_parser("onnx", help="an ONNX graph for onnxruntime (optionally with KV-cache inputs)",
                       description="Export the model to ONNX (opset 18+, fp32): input_ids (batch, sequence) -> "
                                   "logits. With --kv-cache the graph also takes past_keys/past_values "
                                   "(n_layer, batch, kv_heads, past, head_dim) and returns present_keys/"
                                   "present_values, for cached generation. Needs pip install 'scratchllm[export]'.")
    o.add_argument("run", metavar="RUN", help="a run folder (its latest checkpoint) or a checkpoint folder")
    o.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    o.add_argument("--kv-cache", action="store_true",
                   help="add past key/value inputs and present key/value outputs (for cached generation)")
    o.set_defaults(func=cmd_onnx)


def cmd_onnx(args: argparse.Namespace) -> int:
    from scratchllm.interop.onnx_export import export_onnx, require_onnx

    require_onnx()  # before loading a large model
    model, _, _ = _load(args.run)
    print(export_onnx(model, args.out, kv_cache=args.kv_cache))
    return 0
