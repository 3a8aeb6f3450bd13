"""scratchllm sweep (train.sweep): a tiny search space, a few short trials; the results table (Markdown and
JSON), the best config as a recipe that trains, the plots, and trials pruned on their validation loss."""

import json

import pytest
import tomllib

from scratchllm.cli import main
from scratchllm.config.train import RunConfig
from scratchllm.errors import ConfigError

# two learning rates: one that learns, one too small to move the loss. After 2 complete trials the median
# pruner stops a trial whose loss at its second evaluation is worse than theirs at that step.
SPACE = """[sweep]
pruner = "median"
warmup_evals = 1
seed = {seed}
[space]
"train.lr" = {{ choices = [0.01, 1e-7] }}
"model.n_embd" = {{ choices = [16, 32] }}
"""


def sweep_cli(recipe, runs, space, *flags):
    return main(["sweep", "--config", str(recipe), "--space", str(space), "--runs_dir", str(runs),
                 "--train.max_steps", "12", "--train.eval_interval", "3", "--train.warmup_steps", "2",
                 "--train.progress", "false", *flags])


def test_sweep_writes_results_best_recipe_plots_and_prunes(tmp_path, recipe, capsys):
    space = tmp_path / "space.toml"
    space.write_text(SPACE.format(seed=2))
    assert sweep_cli(recipe, tmp_path / "runs", space, "--trials", "6") == 0
    folder = tmp_path / "runs" / "tiny-sweep"
    results = json.loads((folder / "results.json").read_text())
    rows = results["trials"]
    assert len(rows) == 6 and [r["trial"] for r in rows] == list(range(6))
    # each trial is a normal run in its own folder
    for r in rows:
        assert (folder / f"trial-{r['trial']:03d}" / "metrics.jsonl").is_file()
    done = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert done and pruned, [(r["state"], r["params"]) for r in rows]
    # pruned on their intermediate validation loss: stopped early (the lr that does not learn among them)
    assert all(r["steps"] < 12 for r in pruned) and all(r["steps"] == 12 for r in done)
    assert any(r["params"]["train.lr"] == 1e-7 for r in pruned)
    best = results["best"]
    assert best["val_loss"] == min(r["val_loss"] for r in done)
    assert best["params"]["train.lr"] == 0.01
    # the table in Markdown: a row per trial, the best named
    md = (folder / "results.md").read_text()
    assert md.count("\n| ") == 1 + 6 and "| pruned |" in md and f"Best: trial {best['trial']}" in md
    # the best config as a recipe: it loads, holds the best trial's settings, and names its own run
    best_recipe = RunConfig.load(folder / "best.toml")
    assert best_recipe.train.lr == 0.01 and best_recipe.model.n_embd == best["params"]["model.n_embd"]
    assert best_recipe.name == "tiny-best" and best_recipe.runs_dir == str(tmp_path / "runs")
    assert tomllib.loads((folder / "best.toml").read_text())["train"]["max_steps"] == 12
    for png in ("loss.png", "importance.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert f"best: trial {best['trial']}" in out and "6 trials" in out

    # the same command again continues the study up to --trials
    assert sweep_cli(recipe, tmp_path / "runs", space, "--trials", "7") == 0
    assert len(json.loads((folder / "results.json").read_text())["trials"]) == 7


def test_space_errors_name_the_file_and_entry(tmp_path, recipe):
    from scratchllm.train.sweep import load_space

    base = RunConfig.load(recipe)
    bad = {
        '[space]\n"train.lr" = { low = 1e-2, high = 1e-4 }\n': "needs numbers low < high",
        '[space]\n"train.lr" = { low = 0, high = 1e-2, log = true }\n': "log = true needs low > 0",
        '[space]\n"train.nope" = { choices = [1, 2] }\n': "space.train.nope = 1 does not fit the recipe",
        '[space]\n"train.batch_size" = { choices = [4, 0] }\n': "train.batch_size must be a positive integer",
        '[space]\n"train.lr" = { choices = [] }\n': "choices must be a non-empty list",
        '[space]\n"train.lr" = { pick = [1] }\n': "unknown key 'pick'",
        '[sweep]\npruner = "always"\n[space]\n"train.lr" = { choices = [1e-3] }\n': "sweep.pruner 'always'",
        '[sweep]\n[space]\n': "[space] is empty",
    }
    for text, message in bad.items():
        p = tmp_path / "space.toml"
        p.write_text(text)
        with pytest.raises(ConfigError, match="space.toml") as e:
            load_space(p, base)
        assert message in str(e.value), (text, str(e.value))


@pytest.mark.slow
def test_parallel_trials_share_one_study(tmp_path, recipe):
    space = tmp_path / "space.toml"
    space.write_text(SPACE.format(seed=3).replace('pruner = "median"', 'pruner = "none"'))
    assert sweep_cli(recipe, tmp_path / "runs", space, "--trials", "4", "--parallel", "2") == 0
    results = json.loads((tmp_path / "runs" / "tiny-sweep" / "results.json").read_text())
    assert sorted(r["trial"] for r in results["trials"]) == [0, 1, 2, 3]
    assert all(r["state"] == "complete" for r in results["trials"])
