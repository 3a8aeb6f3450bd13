"""`scratchllm train`: pretrain a GPT from a recipe (TOML) or preset, every setting overridable.

    scratchllm train --config configs/shakespeare-bpe.toml          # the main job (make demo)
    scratchllm train --preset shakespeare-char --train.lr 3e-4 --n_layer 6
    scratchllm train --config configs/shakespeare-bpe.toml --resume # continue runs/shakespeare-bpe
    scratchllm train --list-presets                                 # the shipped recipes

A recipe is required (`--config` or `--preset`; a preset is a shipped recipe, `configs/NAME.toml`).
Settings come from the preset, then the recipe, then `--key value` flags (`--train.lr 3e-4`,
`--model.n_layer 4`, or undotted when the name is unique: `--lr 3e-4`, `--n_layer 4`). `--help`
lists every setting from the config dataclasses. Ctrl-C saves a checkpoint and exits with code 130,
SIGTERM (timeout, Docker, Slurm) the same with 143; `--resume` continues exactly.
"""

from __future__ import annotations

# RunConfig's fields that are flags of their own here (the rest are --key value settings).
RUN_FLAGS = ("name", "runs_dir", "init_from")


def register(subparsers) -> None:
    from scratchllm.cli.settings import add_setting_flags, add_settings_help
    from scratchllm.config.train import RunConfig

    p = subparsers.add_parser(
        "train", help="pretrain a model from a recipe (TOML) or preset",
        description="Pretrain a GPT: prepare the data (fetch, clean, train the tokenizer), train with checkpoints, "
                    "sample before and after. Give a recipe (--config FILE) or a shipped one (--preset NAME, "
                    "see --list-presets); any setting below can then be changed as --key value (e.g. "
                    "--train.lr 3e-4, --n_layer 4, --data.dataset the-verdict).",
    )
    p.add_argument("--config", "-c", default=None, help="TOML recipe with [model] [data] [train] [sample] tables")
    p.add_argument("--preset", default=None, help="a shipped recipe by name (see --list-presets)")
    p.add_argument("--list-presets", action="store_true", help="list the shipped recipes and exit")
    p.add_argument("--resume", action="store_true", help="continue the run in runs/<name> from its latest checkpoint")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_setting_flags(p, RunConfig(), RUN_FLAGS, "where the run goes (RunConfig)")
    add_settings_help(p, RunConfig(), "run settings (top level of the TOML)", skip=RUN_FLAGS,
                      note="Settings (TOML table, or --table.key value; undotted --key works when the name is "
                           "unique). Each with its type, default and what it does. Text is taken as typed (\\n "
                           "is not a newline here: write it in the TOML); a list (STR,...) on the command line "
                           "is its items separated by commas, spaces kept (an item with a comma goes in the TOML).")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args) -> int:
    import json

    from scratchllm.cli.settings import given_settings
    from scratchllm.config.base import parse_overrides
    from scratchllm.config.train import RunConfig, recipes
    from scratchllm.errors import UserError

    if args.list_presets:
        listed = recipes()
        width = max(map(len, listed))
        for name, about in listed.items():
            print(f"{name:<{width}}  {about}")
        return 0
    if args.config is None and args.preset is None:
        raise UserError(f"name a recipe: --config FILE.toml or --preset NAME, one of {', '.join(recipes())} "
                        f"(scratchllm train --list-presets says what each does)")
    overrides = parse_overrides(args.overrides)
    if args.resume:
        overrides["train.resume"] = "true"
    overrides.update(given_settings(args, RUN_FLAGS))
    if args.quiet:
        overrides["train.progress"] = "false"
    config = RunConfig.load(args.config, args.preset, overrides)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=1))
        return 0
    import shlex

    from scratchllm.train.pretrain import pretrain

    # how the settings were given, for the "continue with:" line of a stopped run
    source = ["--config", args.config] if args.config is not None else ["--preset", args.preset]
    state = pretrain(config, progress=not args.quiet, source=shlex.join(source + list(args.overrides)))
    # Ctrl-C (SIGINT) and SIGTERM both save a checkpoint and stop; the exit code says which (128 + signal)
    return {"interrupted": 130, "terminated": 143}.get(state.stop_reason, 0)
