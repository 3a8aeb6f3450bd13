"""`scratchllm train`: pretrain a GPT from a recipe (TOML) or preset, every setting overridable.

    scratchllm train --config configs/shakespeare-bpe.toml          # the main job (make demo)
    scratchllm train --preset shakespeare-char --train.lr 3e-4 --n_layer 6
    scratchllm train --config configs/shakespeare-bpe.toml --resume # continue runs/shakespeare-bpe

Settings come from the preset, then the recipe, then `--key value` flags (`--train.lr 3e-4`,
`--model.n_layer 4`, or undotted when the name is unique: `--lr 3e-4`, `--n_layer 4`).
Ctrl-C saves a checkpoint and exits with code 130; `--resume` continues exactly.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="pretrain a model from a recipe (TOML) or preset",
        description="Pretrain a GPT: prepare the data (fetch, clean, train the tokenizer), train with checkpoints, "
                    "sample before and after. Any setting can be given as --key value (e.g. --train.lr 3e-4, "
                    "--n_layer 4, --data.dataset the-verdict).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", default=None, help="TOML recipe with [model] [data] [train] [sample] tables")
    p.add_argument("--preset", default=None, help="a built-in recipe (shakespeare-char, ...)")
    p.add_argument("--resume", action="store_true", help="continue the run in runs/<name> from its latest checkpoint")
    p.add_argument("--name", default=None, help="run folder name under runs_dir (default: the recipe's name)")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args) -> int:
    import json

    from scratchllm.config.base import parse_overrides
    from scratchllm.config.train import RunConfig

    overrides = parse_overrides(args.overrides)
    if args.resume:
        overrides["train.resume"] = "true"
    if args.name:
        overrides["name"] = args.name
    if args.quiet:
        overrides["train.progress"] = "false"
    config = RunConfig.load(args.config, args.preset, overrides)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    from scratchllm.train.pretrain import pretrain

    state = pretrain(config, progress=not args.quiet)
    return 130 if state.stop_reason == "interrupted" else 0
