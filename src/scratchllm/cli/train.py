"""`scratchllm train`: pretrain a GPT from a recipe (TOML) or preset, every setting overridable.

    scratchllm train --config configs/shakespeare-bpe.toml          # the main job (make demo)
    scratchllm train --preset shakespeare-char --train.lr 3e-4 --n_layer 6
    scratchllm train --config configs/shakespeare-bpe.toml --resume # continue runs/shakespeare-bpe
    scratchllm train --list-presets                                 # the shipped recipes
    scratchllm train --config my.toml --nproc 2 --train.strategy ddp   # 2 processes on this machine
    torchrun --nproc-per-node 8 -m scratchllm train --config my.toml --train.strategy fsdp  # any torchrun launch

A recipe is required (`--config` or `--preset`; a preset is a shipped recipe, `configs/NAME.toml`).
Settings come from the preset, then the recipe, then `--key value` flags (`--train.lr 3e-4`,
`--model.n_layer 4`, or undotted when the name is unique: `--lr 3e-4`, `--n_layer 4`). `--help`
lists every setting from the config dataclasses. Ctrl-C saves a checkpoint and exits with code 130,
SIGTERM (timeout, Docker, Slurm) the same with 143; `--resume` continues exactly.

`--nproc N` starts N processes on this machine through torchrun's own launcher (standalone
rendezvous; `train.distributed`): a shortcut for `torchrun --standalone --nproc-per-node N -m
scratchllm train ...`. When one process fails, torchrun stops the others and this prints one line
saying which and how to continue.
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
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="run N processes on this machine (torchrun, standalone); needs train.strategy ddp or fsdp")
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
    if args.nproc is not None:
        return launch(args, config)
    import shlex

    from scratchllm.train.pretrain import pretrain

    # how the settings were given, for the "continue with:" line of a stopped run
    source = ["--config", args.config] if args.config is not None else ["--preset", args.preset]
    state = pretrain(config, progress=not args.quiet, source=shlex.join(source + list(args.overrides)))
    # Ctrl-C (SIGINT) and SIGTERM both save a checkpoint and stop; the exit code says which (128 + signal)
    return {"interrupted": 130, "terminated": 143}.get(state.stop_reason, 0)


def launch(args, config) -> int:
    """`--nproc N`: this command again in N processes, through torchrun's launcher (in this process, so
    that a failure becomes one clear line instead of torchrun's report)."""
    import os
    import sys

    from scratchllm.errors import UserError

    n = args.nproc
    if n < 1:
        raise UserError(f"--nproc must be at least 1, got {n}")
    if config.train.strategy == "none" and n > 1:
        raise UserError(f"--nproc {n} needs a strategy for the processes: add --train.strategy ddp (each process "
                        f"holds the model) or --train.strategy fsdp (the model is sharded across them)")
    if config.train.batch_size % n:
        raise UserError(f"train.batch_size {config.train.batch_size} must be a multiple of --nproc {n} (each "
                        f"process takes an equal share of every batch)")
    if "WORLD_SIZE" in os.environ:
        raise UserError("--nproc inside a torchrun job: drop --nproc (torchrun already started the processes)")
    argv = sys.argv[1:] if getattr(args, "argv", None) is None else list(args.argv)
    rest, skip = [], False
    for a in argv:  # the same command without --nproc
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        rest.append(a)
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    targs = get_args_parser().parse_args([f"--nproc-per-node={n}", "--standalone", "-m", "scratchllm", *rest])
    targs.rdzv_backend, targs.rdzv_endpoint, targs.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    targs.master_port = targs.master_port or 29500
    launch_config, cmd, cmd_args = config_from_args(targs)
    try:
        elastic_launch(config=launch_config, entrypoint=cmd)(*cmd_args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        codes = {r: f.exitcode for r, f in e.failures.items()}
        if all(c in (130, 143) for c in codes.values()):  # every rank stopped by a signal after saving
            return max(codes.values())
        how = (f"was killed by {failure.signal_name()}" if failure.exitcode < 0
               else f"exited with code {failure.exitcode}")
        resume = "" if config.train.resume else " --resume"
        raise UserError(f"process {rank} of {n} (pid {failure.pid}) {how}; torchrun stopped the others. "
                        f"Continue from the last checkpoint with: scratchllm {' '.join(rest)}{resume} --nproc {n}"
                        ) from None
    return 0
