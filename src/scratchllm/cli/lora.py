"""`scratchllm lora extract|merge`: a LoRA run's adapters alone, or merged into a plain checkpoint.

    scratchllm lora extract runs/spam-lora --out adapters/spam            # adapters.safetensors + adapters.json
    scratchllm lora merge adapters/spam --out models/spam                 # base + adapters, merged
    scratchllm lora merge runs/spam-lora --out models/spam                # a LoRA run, merged

`extract` writes the adapters of a run's (or checkpoint's) LoRA layers with the path of the base model
they adapt: the run's `init_from` (state.json), or --base. Such a folder is small, and every command
that takes a model (`generate -m`, `export`) reads it: it loads the base and merges the adapters in.
`merge` writes an ordinary checkpoint folder (model.safetensors with the merged weights, config.json,
tokenizer, generation.json) from a LoRA run or an adapters folder (its recorded base, or --base).
Both write atomically: on an error nothing is left. The LoRA layer is `scratchllm.model.lora`.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from scratchllm.cli import needs_action

    p = subparsers.add_parser("lora", help="LoRA adapters: extract them from a run, merge them into a model",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="lora_action", metavar="ACTION")
    p.set_defaults(func=needs_action(p))
    e = sub.add_parser("extract", help="write a LoRA run's adapters alone (with the path of their base model)")
    e.add_argument("run", metavar="RUN", help="a run or checkpoint folder trained with --lora")
    e.add_argument("--out", required=True, help="the adapters folder to write (must not exist)")
    e.add_argument("--base", help="the base model's path to record (default: the run's init_from)")
    e.set_defaults(func=cmd_extract)
    m = sub.add_parser("merge", help="merge LoRA adapters into their base: a plain checkpoint folder")
    m.add_argument("path", metavar="PATH", help="a run or checkpoint trained with --lora, or an adapters folder")
    m.add_argument("--out", required=True, help="the checkpoint folder to write (must not exist)")
    m.add_argument("--base", help="for an adapters folder: the base model (default: the one it records)")
    m.set_defaults(func=cmd_merge)


def _check_out(out: str):
    from pathlib import Path

    from scratchllm.errors import UserError

    p = Path(out)
    if p.exists():
        raise UserError(f"{p} already exists; choose a new folder (nothing was written)")
    return p


def cmd_extract(args) -> int:
    from scratchllm.checkpoint.folder import save_adapters
    from scratchllm.checkpoint.load import load_model
    from scratchllm.errors import UserError

    out = _check_out(args.out)
    model, _, meta = load_model(args.run, merge=False)
    where = meta["checkpoint"]
    if "lora" not in meta:
        raise UserError(f"{where} has no LoRA adapters (it was trained without --lora); "
                        f"there is nothing to extract")
    if getattr(model.config, "n_classes", None) is not None:
        raise UserError(f"{where} is a LoRA classifier: its new head trained in full and is not an adapter, so "
                        f"adapters alone would lose it; `scratchllm lora merge {args.run} --out DIR` gives a "
                        f"checkpoint that `scratchllm classify` reads")
    base = args.base if args.base is not None else meta.get("init_from")
    if base is None:
        raise UserError(f"{where}/state.json records no base model (init_from); name it with --base")
    if not (isinstance(base, str) and base):
        raise UserError(f"{where}/state.json: init_from is {str(base)[:40]!r}, not a model path; name the base "
                        f"model with --base")
    save_adapters(model, out, base)
    lora = meta["lora"]
    print(f"wrote adapters {out} (r={lora['r']} on {len(lora['modules'])} layers; base {base})")
    return 0


def cmd_merge(args) -> int:
    import json

    from scratchllm.checkpoint.folder import save_checkpoint
    from scratchllm.errors import UserError
    from scratchllm.interop.load import GENERATION_FILE, detect, load_any, read_adapters_folder

    out = _check_out(args.out)
    if detect(args.path) == "adapters":
        model, tokenizer, meta = read_adapters_folder(args.path, base=args.base)
    elif args.base is not None:
        raise UserError(f"--base is for a folder of adapters alone; {args.path} is not one (a LoRA run holds its "
                        f"base weights): leave --base out")
    else:
        model, tokenizer, meta = load_any(args.path)
        if "lora" not in meta:
            raise UserError(f"{meta.get('checkpoint', args.path)} has no LoRA adapters to merge; "
                            f"pass a run trained with --lora or an adapters folder (scratchllm lora extract)")
    lora = meta["lora"]
    generation = meta.get("generation", {})
    state = {"lora_merged": {"source": str(args.path), "r": lora["r"], "alpha": lora["alpha"],
                             "modules": lora["modules"], **({"base": lora["base"]} if "base" in lora else {})}}
    if "task" in meta:  # what the commands that use a finetuned model read (a classifier's labels, pooling)
        state["task"] = meta["task"]
    extra = {GENERATION_FILE: lambda p: p.write_text(json.dumps(generation, indent=1), encoding="utf-8")}
    save_checkpoint(out, model, state=state, tokenizer=tokenizer, extra_files=extra)
    print(f"wrote checkpoint {out} ({args.path} merged: r={lora['r']} on {len(lora['modules'])} layers)")
    return 0
