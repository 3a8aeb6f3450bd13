"""Hyperparameter sweeps: many short pretraining runs chosen by Optuna, and what they found.

`sweep(config, space, trials)` starts from a recipe (`RunConfig`) and a search space (a TOML file):

    [sweep]
    metric = "val_loss"      # what the trials minimise: the validation loss of their evaluations
    pruner = "median"        # "median" (stop a trial whose loss is worse than the median of the
                             # others at the same step), "hyperband", or "none"
    warmup_evals = 1         # evaluations a trial always gets before it may be pruned
    seed = 0                 # the sampler's seed: the same sweep proposes the same trials

    [space]                  # any setting of the recipe, by its dotted name
    "train.lr" = { low = 1e-4, high = 3e-3, log = true }    # a float (log = true: uniform in log)
    "train.warmup_steps" = { low = 0, high = 50, step = 10 } # whole numbers: low, high and step whole
    "model.n_embd" = { choices = [32, 64] }                  # one of a list

Each trial is an ordinary run (`train.pretrain`) in its own folder `<sweep>/trial-NNN/` (its
checkpoints, metrics, loss plot and card), proposed by Optuna's TPE sampler (Bergstra et al. 2011,
"Algorithms for Hyper-Parameter Optimization") and stopped early by the pruner on its intermediate
validation losses. Trials run one after another, or `parallel` at once in separate processes that
share the study through Optuna's journal file. At the end the sweep folder holds:

    results.md, results.json   every trial: number, state, parameters, best validation loss, steps, seconds
    best.toml                  the best trial's whole config as a recipe (`scratchllm train --config best.toml`)
    loss.png                   the validation loss of every trial against steps
    importance.png             how much each parameter mattered (Optuna's fANOVA importance)
    optuna.journal             the study, for Optuna's own tools

Not here: the training itself (`train.pretrain`, `train.loop`), the command (`cli.sweep`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.config.base import load_toml
from scratchllm.config.train import RunConfig
from scratchllm.errors import ConfigError, UserError
from scratchllm.files import write_atomic

PRUNERS = ("median", "hyperband", "none")
RESULTS_JSON, RESULTS_MD, BEST_TOML = "results.json", "results.md", "best.toml"
LOSS_PLOT, IMPORTANCE_PLOT, JOURNAL = "loss.png", "importance.png", "optuna.journal"


# --- the search space -------------------------------------------------------------------------------------
@dataclass
class Param:
    """One setting to search: `choices`, or a range `low`..`high` (`log`: uniform in log; `step`: a grid)."""

    name: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, self.choices)
        assert self.low is not None and self.high is not None
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)) and \
            (self.step is None or isinstance(self.step, int))
        if whole:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass
class Space:
    """A search space file: the sweep's settings and the parameters."""

    params: list[Param]
    metric: str = "val_loss"
    pruner: str = "median"
    warmup_evals: int = 1
    seed: int = 0
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def load_space(path: str | os.PathLike, base: RunConfig) -> Space:
    """Read and check a search space file against the recipe `base` (each name must be one of its settings,
    each value a valid one); one ConfigError naming the file and entry otherwise."""
    where = str(path)
    data = load_toml(path)
    unknown = sorted(set(data) - {"sweep", "space"})
    if unknown:
        raise ConfigError(f"{where}: unknown table [{unknown[0]}]; a search space has [sweep] and [space]")
    opts = dict(data.get("sweep", {}))
    space = Space(params=[], path=where)
    for key, kind in (("metric", str), ("pruner", str), ("warmup_evals", int), ("seed", int)):
        if key in opts:
            value = opts.pop(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ConfigError(f"{where}: sweep.{key} must be a {kind.__name__}, got {value!r}")
            setattr(space, key, value)
    if opts:
        raise ConfigError(f"{where}: unknown setting sweep.{sorted(opts)[0]}; known: metric, pruner, warmup_evals, "
                          f"seed")
    if space.pruner not in PRUNERS:
        raise ConfigError(f"{where}: sweep.pruner {space.pruner!r} is unknown; choose one of {', '.join(PRUNERS)}")
    if not space.metric.endswith("_loss"):
        raise ConfigError(f"{where}: sweep.metric {space.metric!r} must be a loss the evaluations report "
                          f"(val_loss or train_loss)")
    entries = data.get("space", {})
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{where}: [space] is empty; name at least one setting, e.g. "
                          f"\"train.lr\" = {{ low = 1e-4, high = 3e-3, log = true }}")
    for name, spec in entries.items():
        space.params.append(_param(where, name, spec, base))
    return space


def _param(where: str, name: str, spec: Any, base: RunConfig) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: space.{name} must be a table: {{ choices = [...] }} or {{ low = .., high = .. }}")
    bad = sorted(set(spec) - {"choices", "low", "high", "log", "step"})
    if bad:
        raise ConfigError(f"{where}: space.{name} has an unknown key {bad[0]!r}; use choices, or low, high, log, step")
    p = Param(name, **spec)
    if p.choices is not None:
        if not (isinstance(p.choices, list) and p.choices) or p.low is not None or p.high is not None:
            raise ConfigError(f"{where}: space.{name}: choices must be a non-empty list, without low/high")
        values = p.choices
    else:
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (p.low, p.high))
        if not ok or not p.low < p.high:
            raise ConfigError(f"{where}: space.{name} needs numbers low < high (or a list of choices), got "
                              f"low={p.low!r} high={p.high!r}")
        if p.log and p.low <= 0:
            raise ConfigError(f"{where}: space.{name}: log = true needs low > 0, got {p.low}")
        values = [p.low, p.high]
    for v in values:  # each value must make a valid config: the check names the setting
        try:
            base.override({name: v})
        except (ConfigError, UserError) as e:
            raise ConfigError(f"{where}: space.{name} = {v!r} does not fit the recipe: {e}") from None
    return p


# --- the trials ------------------------------------------------------------------------------------------------
def trial_config(base: RunConfig, params: dict[str, Any], sweep_dir: Path, number: int) -> RunConfig:
    """The recipe with a trial's parameters, run in `sweep_dir/trial-NNN`, without text samples."""
    overrides: dict[str, Any] = dict(params)
    overrides.update({"name": f"trial-{number:03d}", "runs_dir": str(sweep_dir), "sample.max_new_tokens": 0,
                      "train.resume": False, "train.progress": False})
    return base.override(overrides)


def objective(base: RunConfig, space: Space, sweep_dir: Path) -> Any:
    """Optuna's objective: one pretraining run, its evaluations reported, stopped when the pruner says so."""
    import optuna

    from scratchllm.train.pretrain import pretrain

    def run_trial(trial: Any) -> float:
        params = {p.name: p.suggest(trial) for p in space.params}
        run = trial_config(base, params, sweep_dir, trial.number)
        pruned = {"at": None}
        evals = {"n": 0}

        def report(event: str, state: Any, info: dict) -> None:
            if event != "eval" or space.metric not in info:
                return
            evals["n"] += 1
            trial.report(float(info[space.metric]), state.step)
            if evals["n"] > space.warmup_evals and trial.should_prune():
                pruned["at"] = state.step
                state.should_stop = True  # the loop finishes this step, saves, and returns

        state = pretrain(run, progress=False, hooks=[report])
        trial.set_user_attr("folder", str(sweep_dir / run.name))
        trial.set_user_attr("steps", state.step)
        trial.set_user_attr("seconds", round(state.elapsed, 2))
        losses = [h[space.metric] for h in state.history if space.metric in h]
        if pruned["at"] is not None:
            raise optuna.TrialPruned(f"pruned at step {pruned['at']}")
        if not losses or not math.isfinite(min(losses)):
            raise UserError(f"trial {trial.number} reported no finite {space.metric}")
        return min(losses)

    return run_trial


def make_study(space: Space, sweep_dir: Path, name: str) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    pruner: Any = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
                   "hyperband": lambda: optuna.pruners.HyperbandPruner(),
                   "none": lambda: optuna.pruners.NopPruner()}[space.pruner]()
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / JOURNAL)))
    return optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=space.seed), pruner=pruner)


def _worker(config: dict[str, Any], space_path: str, sweep_dir: str, name: str, trials: int) -> None:
    """One process of a parallel sweep: trials from the shared study until it holds `trials`."""
    import optuna
    from optuna.study import MaxTrialsCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = RunConfig.from_dict(config)
    space = load_space(space_path, base)
    study = make_study(space, Path(sweep_dir), name)
    # every trial counts toward the total, pruned and failed ones too (states=None)
    study.optimize(objective(base, space, Path(sweep_dir)), callbacks=[MaxTrialsCallback(trials, states=None)],
                   catch=(UserError,))


def sweep(base: RunConfig, space_path: str | os.PathLike, trials: int, *, parallel: int = 1,
          folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Run `trials` trials of the search space file on the recipe `base`; write the results, the best
    recipe and the plots into `folder` (default: runs_dir/<name>-sweep). Returns the results."""
    import optuna

    if trials < 1 or parallel < 1:
        raise UserError(f"--trials and --parallel must be at least 1, got {trials} and {parallel}")
    space = load_space(space_path, base)
    sweep_dir = Path(folder) if folder is not None else Path(base.runs_dir) / f"{base.name or 'run'}-sweep"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    name = sweep_dir.name
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = make_study(space, sweep_dir, name)
    todo = trials  # the study's total: a sweep run again in its folder continues up to `trials`
    if parallel == 1:
        study.optimize(objective(base, space, sweep_dir), n_trials=max(0, todo - len(study.trials)),
                       catch=(UserError,))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a fresh interpreter each: no torch state shared with this one
        procs = [ctx.Process(target=_worker, args=(base.to_dict(), str(space_path), str(sweep_dir), name, todo))
                 for _ in range(parallel)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            raise UserError(f"{len(bad)} of the {parallel} sweep processes failed (exit code {bad[0]}); see above")
        study = make_study(space, sweep_dir, name)
    return write_results(study, base, space, sweep_dir)


# --- what the sweep found ------------------------------------------------------------------------------------
def write_results(study: Any, base: RunConfig, space: Space, sweep_dir: Path) -> dict[str, Any]:
    """results.json and results.md (every trial), best.toml, loss.png and importance.png."""
    import optuna

    rows = []
    for t in study.trials:
        rows.append({"trial": t.number, "state": t.state.name.lower(), "params": t.params,
                     space.metric: t.value if t.value is not None else _last_report(t),
                     "steps": t.user_attrs.get("steps"), "seconds": t.user_attrs.get("seconds"),
                     "folder": t.user_attrs.get("folder")})
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(done, key=lambda t: t.value) if done else None
    results = {"metric": space.metric, "space": space.path, "trials": rows,
               "best": {"trial": best.number, "params": best.params, space.metric: best.value} if best else None}
    write_atomic(sweep_dir / RESULTS_JSON, json.dumps(results, indent=1))
    write_atomic(sweep_dir / RESULTS_MD, results_markdown(results, [p.name for p in space.params]))
    if best is not None:
        run = trial_config(base, best.params, sweep_dir, best.number).override(
            {"name": f"{base.name or 'run'}-best", "runs_dir": base.runs_dir,
             "sample.max_new_tokens": base.sample.max_new_tokens, "train.progress": base.train.progress})
        header = (f"# the best of {len(study.trials)} trials of {sweep_dir} (trial {best.number}, "
                  f"{space.metric} {best.value:.4f}); train it: scratchllm train --config {sweep_dir / BEST_TOML}\n")
        write_atomic(sweep_dir / BEST_TOML, header + to_toml(run.to_dict()))
    plot_trials(rows, sweep_dir, space.metric)
    plot_importance(study, sweep_dir)
    return results


def _last_report(t: Any) -> float | None:
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None


def results_markdown(results: dict[str, Any], names: list[str]) -> str:
    metric = results["metric"]
    head = ["trial", "state", *names, metric, "steps", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results["trials"]:
        loss = r[metric]
        cells = [str(r["trial"]), r["state"], *(_fmt(r["params"].get(n)) for n in names),
                 f"{loss:.4f}" if isinstance(loss, (int, float)) else "", str(r["steps"] or ""),
                 str(r["seconds"] or "")]
        lines.append("| " + " | ".join(cells) + " |")
    best = results["best"]
    tail = (f"\nBest: trial {best['trial']}, {metric} {best[metric]:.4f} "
            f"({', '.join(f'{k} = {_fmt(v)}' for k, v in best['params'].items())}); its recipe: {BEST_TOML}\n"
            if best else "\nNo trial completed.\n")
    return f"# Sweep results ({metric}, lower is better; pruned trials show their last report)\n\n" + \
        "\n".join(lines) + "\n" + tail


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def to_toml(d: dict[str, Any]) -> str:
    """A config dict as TOML: top-level values first, then one table per nested dict (None values left out:
    TOML has no null, and they are the defaults)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v) if math.isfinite(v) else ("inf" if v > 0 else "-inf") if not math.isnan(v) else "nan"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items() if x is not None) + " }"
        raise TypeError(f"cannot write {type(v).__name__} as TOML")

    top = [f"{k} = {value(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {value(vv)}" for kk, vv in v.items() if vv is not None)
              for k, v in d.items() if isinstance(v, dict)]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def plot_trials(rows: list[dict[str, Any]], sweep_dir: Path, metric: str) -> Path | None:
    """The evaluated `metric` of every trial against steps (from its metrics.jsonl); pruned trials dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scratchllm.files import save_figure
    from scratchllm.train.logging import METRICS_FILE, read_metrics

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for r in rows:
        if not r["folder"]:
            continue
        pts = [(m["step"], m[metric]) for m in read_metrics(Path(r["folder"]) / METRICS_FILE) if metric in m]
        if not pts:
            continue
        ax.plot(*zip(*pts), linestyle="--" if r["state"] == "pruned" else "-", marker=".",
                label=f"trial {r['trial']} ({r['state']})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title("sweep: each trial's evaluations")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, sweep_dir / LOSS_PLOT)


def plot_importance(study: Any, sweep_dir: Path) -> Path | None:
    """Optuna's parameter importances (fANOVA over the completed trials) as a bar chart; None when fewer than
    two trials completed (nothing to compare)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    from scratchllm.files import save_figure

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) < 2:
        return None
    try:
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # e.g. every completed trial drew the same values
        return None
    fig, ax = plt.subplots(figsize=(6, 1 + 0.5 * len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance (fANOVA, share of the variance of the loss)")
    ax.set_title("which settings mattered")
    fig.tight_layout()
    return save_figure(fig, sweep_dir / IMPORTANCE_PLOT)
