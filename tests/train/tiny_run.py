"""A tiny training run in its own process, for the SIGKILL/SIGINT resume tests.

usage: python tiny_run.py RUN_DIR [--resume] [--steps N] [--sleep S]
Exits 0 when done, 130 when stopped by Ctrl-C (SIGINT), 143 by SIGTERM (after saving).
"""

import argparse
import sys
import time

import numpy as np
import torch

from scratchllm.config.model import ModelConfig
from scratchllm.config.train import TrainConfig
from scratchllm.data.datasets import EvalBatches, RandomWindowBatches
from scratchllm.model import GPT
from scratchllm.train import Run, lm_loss, train
from scratchllm.train.loop import batch_eval_fn


def run_tiny(run_dir: str, steps: int = 40, resume: bool = False, sleep: float = 0.0) -> str:
    """Train the tiny model into `run_dir`; returns why it stopped."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    # a learnable stream: a repeating pattern with noise
    tokens = ((np.arange(20000) * 7 + rng.integers(0, 3, 20000)) % 61).astype(np.uint16)
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("tiny", vocab_size=64, n_embd=32, dropout=0.1))
    config = TrainConfig(lr=3e-3, warmup_steps=5, max_steps=steps, batch_size=4, eval_interval=10,
                         eval_batches=2, checkpoint_interval=3, log_interval=1, keep_last=2, precision="fp32",
                         progress=False, resume=resume, peak_flops=1e9, seed=7)
    batches = RandomWindowBatches(tokens[:18000], 4, 32, seed=3)
    eval_fn = batch_eval_fn({"val": list(EvalBatches(tokens[18000:], 4, 32, 2))})

    def slow(event, state, info):
        if event == "log" and sleep:
            time.sleep(sleep)

    run = Run(run_dir, keep_last=2)
    state = train(model, batches, lm_loss, config, eval_fn=eval_fn, hooks=[slow], run=run)
    run.close()
    print("stopped:", state.stop_reason, state.step, flush=True)
    return state.stop_reason


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--sleep", type=float, default=0.0)
    args = ap.parse_args()
    reason = run_tiny(args.run_dir, args.steps, args.resume, args.sleep)
    return {"interrupted": 130, "terminated": 143}.get(reason, 0)


if __name__ == "__main__":
    sys.exit(main())
