"""Pretraining quality per second: nanoGPT's CPU Shakespeare recipe, then the tuned recipe in its time.

1. nanoGPT's character-level recipe, configs/shakespeare-char.toml (config/train_shakespeare_char.py
   with its README's CPU overrides: 4 layers, 4 heads, 128 dims, context 64, batch 12, 2,000
   iterations, lr 1e-3 -> 1e-4, warmup 100, beta2 0.99, weight decay 0.1, clip 1.0, no biases,
   dropout 0) run by scratchllm in plain fp32. Its wall time is the budget. nanoGPT itself reaches
   validation loss ~1.88.
2. The tuned recipe, configs/shakespeare-char-tuned.toml (the file a user trains with `scratchllm
   train --config`), with `train.max_seconds` set to the budget; its learning rate decays over those
   seconds (`decay_over = "seconds"`). Targets: validation loss <= 1.65 within the budget, and
   <= 1.88 within half of it.

Validation is the last 10% of tiny Shakespeare, as nanoGPT splits it. The curves print the loop's
own evaluation (an estimate over a few batches, as a user's run sees it), with wall time. The
targets are decided on the whole validation split (every non-overlapping window): the final model,
and for the time to 1.88 the models as they were at each evaluation (copies kept in memory and
measured after the run, outside the budget). Each speed is also given as MFU: model FLOPs per
second over the measured fp32 matmul peak. Replaces its section of benchmarks/RESULTS.md (not when
run with --only or --set: those are experiments, not the benchmark).

    python benchmarks/pretrain_quality.py            # both runs (~5 minutes on an idle 2-core machine)
    python benchmarks/pretrain_quality.py --quick    # 300-step baseline and a budget to match
    python benchmarks/pretrain_quality.py --only tuned --budget 75 --set train.lr=2e-3
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, add_record_flag, char_shakespeare, header, matmul_peaks, recorded  # noqa: E402

RECIPES = ROOT / "src" / "scratchllm" / "recipes"
BASELINE = RECIPES / "shakespeare-char.toml"
TUNED = RECIPES / "shakespeare-char-tuned.toml"
# Whole-split losses are measured for the snapshots from the last one whose estimate is above
# 1.88 + MARGIN on, until one reaches 1.88 (a 10-20 batch estimate is off by a few hundredths).
MARGIN = 0.15


def windows(ids, context_length: int, batch: int = 64):
    """Every non-overlapping window of `ids` as (x, y) batches of `batch` windows."""
    import numpy as np
    import torch

    n = (len(ids) - 1) // context_length
    x = torch.from_numpy(np.asarray(ids[: n * context_length], dtype=np.int64)).view(n, context_length)
    y = torch.from_numpy(np.asarray(ids[1: n * context_length + 1], dtype=np.int64)).view(n, context_length)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def whole_split_loss(model, batches, precision: str) -> float:
    """Mean loss per token over `batches` (the whole split's windows)."""
    import torch

    from scratchllm.runtime import autocast, eval_mode

    total, count = 0.0, 0
    with eval_mode(model), torch.no_grad(), autocast("cpu", precision):
        for x, y in batches:
            _, loss = model(x, y)
            total += float(loss) * x.numel()
            count += x.numel()
    return total / count


def run(label, run_config, train_ids, val_ids, peak):
    """Train `run_config`'s model as its recipe says; return (state, whole-split loss of the final
    model, [(elapsed, step, estimate, weights)] at each evaluation)."""
    import torch

    from scratchllm.data.datasets import EvalBatches, RandomWindowBatches
    from scratchllm.model import GPT
    from scratchllm.model.info import train_flops_per_token
    from scratchllm.train.loop import batch_eval_fn, lm_loss, train

    torch.manual_seed(1337)
    mc, tc = run_config.model, run_config.train.replace(progress=False, log_interval=50)
    model = GPT(mc)
    T, B = mc.context_length, tc.batch_size
    eval_fn = batch_eval_fn({"train": list(EvalBatches(train_ids, B, T, tc.eval_batches)),
                             "val": list(EvalBatches(val_ids, B, T, tc.eval_batches))})
    print(f"\n-- {label}: {model.num_params():,} parameters, precision {tc.precision}", flush=True)
    snapshots = []

    def keep(event, state, info):
        if event == "eval":
            snapshots.append((info["elapsed"], info["step"], info["val_loss"],
                              {k: v.detach().clone() for k, v in model.state_dict().items()}))
            print(f"   t={info['elapsed']:6.1f}s step {info['step']:5d} train {info['train_loss']:.4f} "
                  f"val {info['val_loss']:.4f} (estimates, {tc.eval_batches} batches)", flush=True)

    state = train(model, RandomWindowBatches(train_ids, B, T, seed=1337), lm_loss, tc, eval_fn=eval_fn,
                  hooks=[keep])
    val = windows(val_ids, T)
    full = whole_split_loss(model, val, tc.precision)
    mfu = state.tokens / state.elapsed * train_flops_per_token(mc, T) / peak
    print(f"   {label}: {state.step} steps, {state.tokens:,} tokens in {state.elapsed:.1f} s "
          f"({state.tokens / state.elapsed:,.0f} tok/s, MFU {mfu:.1%} of the fp32 matmul peak); val loss "
          f"{full:.4f} over the whole split ({state.last_eval['val_loss']:.4f} estimated)", flush=True)
    return state, full, snapshots, model, val


def first_below(model, snapshots, val, precision: str, target: float) -> tuple[float, list[str]]:
    """Wall time of the first evaluation whose model's whole-split loss is <= target (inf if none),
    and a line for each snapshot measured."""
    start = max((i for i, s in enumerate(snapshots) if s[2] > target + MARGIN), default=0)
    lines = []
    for elapsed, step, estimate, weights in snapshots[start:]:
        model.load_state_dict(weights)
        loss = whole_split_loss(model, val, precision)
        lines.append(f"   t={elapsed:6.1f}s step {step:5d} val {loss:.4f} whole split ({estimate:.4f} estimated)")
        if loss <= target:
            return elapsed, lines
    return math.inf, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 300-step baseline and a budget to match")
    ap.add_argument("--only", choices=["baseline", "tuned"], default=None)
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the tuned run (default: the baseline's wall time, else the recipe's)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the tuned recipe, e.g. --set model.n_embd=192 --set train.lr=2e-3")
    add_record_flag(ap)
    args = ap.parse_args()
    for item in args.set:
        key, _, value = item.partition("=")
        if key.partition(".")[0] not in ("model", "train") or not key.partition(".")[2] or not value:
            ap.error(f"--set {item!r}: expected model.NAME=VALUE or train.NAME=VALUE")
    with recorded("pretrain_quality", not args.no_record and args.only is None and not args.set):
        run_all(args)


def run_all(args) -> None:
    from scratchllm.config.train import RunConfig
    from scratchllm.runtime import setup_process

    # The process-wide settings the pretrain job makes (train.pretrain.configure_process): the loop
    # sets none. Freed memory is kept, as with the recipes' train.keep_freed_memory (the default).
    setup_process(args.threads, keep_freed=True, device="cpu")
    header("pretraining quality: nanoGPT's CPU Shakespeare recipe, then the tuned recipe in the same time")
    train_ids, val_ids, vocab = char_shakespeare()
    peak = matmul_peaks(precisions=("fp32",))["fp32"]
    print(f"tiny Shakespeare: {len(train_ids):,} train / {len(val_ids):,} val characters, vocabulary {vocab}; "
          f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s (the bound of MFU)")
    budget = args.budget
    if args.only != "tuned":
        quick = {"train.max_steps": "300", "train.decay_steps": "300"} if args.quick else {}
        baseline = RunConfig.load(BASELINE, overrides={"model.vocab_size": str(vocab), **quick})
        state, full, *_ = run(f"nanoGPT recipe ({BASELINE.name})", baseline, train_ids, val_ids, peak)
        budget = budget or state.elapsed
        print(f"baseline: {state.elapsed:.1f} s, final val loss {full:.4f} over the whole split "
              f"(nanoGPT: 1.8857 after 2,000 iterations, estimated over 20 batches)")
    if args.only == "baseline":
        return
    overrides = {"model.vocab_size": str(vocab), **dict(item.partition("=")[::2] for item in args.set)}
    if budget:
        overrides["train.max_seconds"] = str(budget)
    tuned = RunConfig.load(TUNED, overrides=overrides)
    budget = tuned.train.max_seconds
    state, full, snapshots, model, val = run(f"tuned recipe ({TUNED.name})", tuned, train_ids, val_ids, peak)
    t_188, lines = first_below(model, snapshots, val, tuned.train.precision, 1.88)
    print("whole-split validation loss of the models kept at the evaluations near 1.88:")
    print("\n".join(lines))
    print(f"\nbudget {budget:.1f} s; tuned run {state.elapsed:.1f} s")
    print(f"tuned final val loss {full:.4f} over the whole split; target <= 1.65: "
          f"{'met' if full <= 1.65 else 'NOT met'}")
    print(f"val loss <= 1.88 (whole split) first at {t_188:.1f} s = {t_188 / budget:.0%} of the budget; "
          f"target <= 50%: {'met' if t_188 <= budget / 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
