"""`scratchllm sweep`: search hyperparameters with many short training runs (Optuna).

    scratchllm sweep --config configs/shakespeare-char.toml --space space.toml --trials 20
    scratchllm sweep --config my.toml --space space.toml --trials 40 --parallel 2 --train.max_steps 300

The recipe (`--config` or `--preset`, with `--key value` settings as `scratchllm train` takes them) is
each trial's starting point; the search space file names the settings to vary (`train.sweep` says
its format). Each trial is a run in `<runs_dir>/<name>-sweep/trial-NNN/`; results.md, results.json,
best.toml (the best trial's recipe), loss.png and importance.png land in the sweep folder. Running the
same command again continues the sweep up to `--trials`.
"""

from __future__ import annotations

from scratchllm.cli.train import RUN_FLAGS


def register(subparsers) -> None:
    from scratchllm.cli.settings import add_setting_flags
    from scratchllm.config.train import RunConfig

    p = subparsers.add_parser(
        "sweep", help="search hyperparameters: many short runs chosen by Optuna",
        description="Search hyperparameters: trials of a recipe with the settings of a search space (TOML) drawn "
                    "by Optuna's TPE sampler, trials stopped early by a pruner on their validation loss. Writes a "
                    "results table (Markdown, JSON), the best config as a recipe and plots into the sweep folder. "
                    "Needs the sweep extra (pip install 'scratchllm[sweep]').",
    )
    p.add_argument("--config", "-c", default=None, help="the recipe each trial starts from (TOML)")
    p.add_argument("--preset", default=None, help="a shipped recipe by name instead")
    p.add_argument("--space", required=True, help="the search space (TOML: [sweep] options, [space] settings)")
    p.add_argument("--trials", type=int, default=20, help="trials the sweep holds when done (default 20)")
    p.add_argument("--parallel", type=int, default=1,
                   help="trials at once, each in its own process (default 1: one after another)")
    p.add_argument("--out", default=None, help="the sweep folder (default: <runs_dir>/<name>-sweep)")
    add_setting_flags(p, RunConfig(), RUN_FLAGS, "where the trials go (RunConfig)")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args) -> int:
    from scratchllm.cli.settings import given_settings
    from scratchllm.config.base import parse_overrides
    from scratchllm.config.train import RunConfig
    from scratchllm.errors import UserError

    if args.config is None and args.preset is None:
        raise UserError("name the recipe the trials start from: --config FILE.toml or --preset NAME")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError("scratchllm sweep needs Optuna: pip install 'scratchllm[sweep]' (or pip install optuna)"
                        ) from None
    overrides = parse_overrides(args.overrides)
    overrides.update(given_settings(args, RUN_FLAGS))
    config = RunConfig.load(args.config, args.preset, overrides)
    if config.train.strategy != "none":
        raise UserError("a sweep's trials run as single processes (use --parallel for several at once); "
                        "set train.strategy none")
    from scratchllm.train.sweep import BEST_TOML, RESULTS_MD, sweep

    results = sweep(config, args.space, args.trials, parallel=args.parallel, folder=args.out)
    folder = args.out or f"{config.runs_dir}/{config.name or 'run'}-sweep"
    states = [r["state"] for r in results["trials"]]
    summary = ", ".join(f"{states.count(s)} {s}" for s in ("complete", "pruned", "fail") if states.count(s))
    best = results["best"]
    if best is None:
        raise UserError(f"no trial of the sweep completed ({summary}); see {folder}/{RESULTS_MD}")
    metric = results["metric"]
    params = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in best["params"].items())
    print(f"{len(states)} trials ({summary}); best: trial {best['trial']}, {metric} {best[metric]:.4f} ({params})\n"
          f"results {folder}/{RESULTS_MD}; best recipe {folder}/{BEST_TOML}")
    return 0
