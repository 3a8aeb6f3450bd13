"""`scratchllm prune RUN --sparsity S [--structured heads|neurons] [--scope layer|global] --out DIR`: a sparser
or smaller model, optionally finetuned to recover.

    scratchllm prune runs/shakespeare --sparsity 0.3 --out models/shakespeare-s30
    scratchllm prune runs/shakespeare --sparsity 0.5 --scope global --recover-steps 200 --out models/s50
    scratchllm prune runs/shakespeare --sparsity 0.25 --structured heads --out models/shakespeare-h75

Magnitude pruning of the linear layers inside the blocks (`scratchllm.compress.prune`): without
--structured, the fraction S of their weights with the smallest |w| becomes zero (each layer's, or with
--scope global the smallest across all of them) and masks keep them zero; with --structured heads or
neurons, that fraction of each block's attention heads or MLP neurons is removed and the model shrinks.
--recover-steps N then finetunes N steps through the training loop on the run's own prepared data (or
--data DIR, a prepared data folder), masks kept. RUN is anything `scratchllm.interop.load.load_any` reads
but a quantized model (prune first, then quantize); DIR is a checkpoint folder (written atomically) with
its tokenizer, generation.json, masks.safetensors (unstructured) and MODEL_CARD.md.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser("prune", help="prune a model's weights, heads or neurons by magnitude (a new checkpoint)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run or checkpoint folder, Hugging Face folder or OpenAI GPT-2 folder")
    p.add_argument("--sparsity", type=float, required=True, metavar="S",
                   help="the fraction to remove, in [0, 1): of the weights, or with --structured of heads/neurons")
    p.add_argument("--structured", default=None, metavar="heads|neurons",
                   help="remove whole attention heads or MLP neurons (the tensors shrink); default: single weights")
    p.add_argument("--scope", default="layer", metavar="layer|global",
                   help="unstructured: S of each layer (default), or the smallest S of all the layers together")
    p.add_argument("--recover-steps", type=int, default=0, metavar="N",
                   help="finetune N steps after pruning (default 0: none)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="recovery: a prepared data folder (default: the run's own, from its state.json)")
    p.add_argument("--lr", type=float, default=None, help="recovery: peak learning rate (default 3e-4)")
    p.add_argument("--batch-size", type=int, default=None, help="recovery: windows per step (default 8)")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="recovery: auto (bf16 autocast where the CPU has bf16 matmuls, default), fp32 or bf16")
    p.add_argument("--quiet", action="store_true", help="recovery: no progress bar")
    p.add_argument("--out", required=True, help="the checkpoint folder to write (must not exist)")
    p.set_defaults(func=cmd_prune)


def cmd_prune(args: argparse.Namespace) -> int:
    from pathlib import Path

    from scratchllm.errors import UserError

    if Path(args.out).exists():
        raise UserError(f"{args.out} already exists; choose a new folder for the pruned model (nothing was written)")
    if args.recover_steps < 0:
        raise UserError(f"--recover-steps must be 0 or more, got {args.recover_steps}")
    if args.recover_steps == 0 and (args.data, args.lr, args.batch_size, args.precision) != (None,) * 4:
        raise UserError("--data, --lr, --batch-size and --precision are for the recovery finetune; add "
                        "--recover-steps N")
    if args.lr is not None and not 0 < args.lr < 1:
        raise UserError(f"--lr must be a positive number below 1, got {args.lr}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")

    from scratchllm.compress.prune import RECOVER_BATCH, RECOVER_LR, check_request, prune_folder

    check_request(args.sparsity, args.structured, args.scope)  # before the model is loaded
    out = prune_folder(args.run, args.out, args.sparsity, args.structured, args.scope,
                       recover_steps=args.recover_steps, data=args.data,
                       lr=args.lr if args.lr is not None else RECOVER_LR,
                       batch_size=args.batch_size if args.batch_size is not None else RECOVER_BATCH,
                       precision=args.precision or "auto", progress=not args.quiet)
    from scratchllm.checkpoint.folder import read_state

    state = read_state(out)
    r = state["pruning"]
    if r["structured"] is None:
        what = f"{r['sparsity_of_masked']:.1%} of the blocks' linear weights zero"
    elif r["structured"] == "heads":
        what = f"{r['heads_before']} -> {r['heads_after']} heads per block, {r['params_after']:,} parameters"
    else:
        what = f"MLP {r['mlp_hidden_before']} -> {r['mlp_hidden_after']} neurons, {r['params_after']:,} parameters"
    rec = state.get("recovery")
    after = f"; recovered {rec['steps']} steps, val loss {rec['val_loss']:.4f}" if rec and "val_loss" in rec else ""
    print(f"wrote {out} ({what}{after}; generate with: scratchllm generate -m {out})")
    return 0
