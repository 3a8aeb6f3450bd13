"""One rank of a small training job, for the distributed tests (started by torchrun, or in-process).

usage: torchrun --standalone --nproc-per-node 2 dist_worker.py OUT --strategy ddp|fsdp [--steps N]
       [--folder RUN_DIR] [--resume] [--kill-rank R --kill-step S] [--compile]
       [--cpu-offload]
Writes OUT/losses.json (the logged loss per step, rank 0) and OUT/weights.safetensors (the whole final
weights; under FSDP gathered from the shards) and OUT/logits.safetensors (the final model's logits on a
fixed batch, computed inside the job).
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import tiny_model, tiny_tokens  # noqa: E402

from scratchllm.config.train import TrainConfig  # noqa: E402
from scratchllm.data.datasets import EvalBatches, RandomWindowBatches  # noqa: E402
from scratchllm.train import Run, lm_loss, train  # noqa: E402
from scratchllm.train.loop import batch_eval_fn  # noqa: E402

GLOBAL_BATCH, CONTEXT = 4, 16


def config(strategy: str, steps: int, resume: bool = False, compile: bool = False,
           cpu_offload: bool = False) -> TrainConfig:
    # decay_steps fixed: the learning rate at a step does not depend on where this run stops
    return TrainConfig(lr=3e-3, warmup_steps=3, decay_steps=40, max_steps=steps, batch_size=GLOBAL_BATCH,
                       grad_accum=2, grad_clip=0.5, eval_interval=5, eval_batches=2, checkpoint_interval=4,
                       log_interval=1, precision="fp32",
                       progress=False, resume=resume, peak_flops=1e9, seed=7, strategy=strategy, dist_timeout=60,
                       compile=compile, fsdp_cpu_offload=cpu_offload)


def fixed_input() -> torch.Tensor:
    return torch.as_tensor(tiny_tokens(64, seed=5)[:2 * CONTEXT].astype(np.int64)).reshape(2, CONTEXT)


def job(out: Path, strategy: str, steps: int, run_dir: str | None = None, resume: bool = False,
        kill: tuple[int, int] | None = None, compile: bool = False, cpu_offload: bool = False) -> dict:
    """Train the tiny model; returns {"losses": [...], "weights": {...}} (whole weights on rank 0)."""
    torch.set_num_threads(1)
    tokens = tiny_tokens(8000)
    model = tiny_model(0, dropout=0.0)
    batches = RandomWindowBatches(tokens[:7000], GLOBAL_BATCH, CONTEXT, seed=3)
    val = batch_eval_fn({"val": list(EvalBatches(tokens[7000:], GLOBAL_BATCH, CONTEXT, 2))})
    seen: dict[str, torch.Tensor] = {}

    def eval_fn(m):  # under FSDP the loop calls this inside the wrapper's forward, on every rank
        seen["logits"] = m(fixed_input())  # the logits after the last evaluation: the final model's
        return val(m)

    losses: dict[int, float] = {}
    rank = int(os.environ.get("RANK", "0"))

    def hook(event, state, info):
        if event == "log":
            losses[state.step] = info["loss"]
            if kill is not None and rank == kill[0] and state.step == kill[1]:
                os.kill(os.getpid(), signal.SIGKILL)

    run = Run(run_dir, main=rank == 0) if run_dir else None
    try:
        train(model, batches, lm_loss, config(strategy, steps, resume, compile, cpu_offload), eval_fn=eval_fn,
              hooks=[hook], run=run)
    finally:
        if run is not None:
            run.close()
    from scratchllm.train.checkpoint import consolidated, is_sharded

    if is_sharded(model):
        whole = consolidated(model).state_dict()  # every rank takes part; rank 0 gets the tensors
    else:
        whole = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if rank == 0 and out is not None:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        (out / "losses.json").write_text(json.dumps(losses))
        whole.pop("lm_head.weight", None)  # tied to tok_emb.weight
        save_file({k: v.contiguous() for k, v in whole.items()}, str(out / "weights.safetensors"))
        save_file({"logits": seen["logits"].contiguous()}, str(out / "logits.safetensors"))
    return {"losses": losses, "weights": whole, "logits": seen["logits"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--strategy", default="ddp")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--folder", default=None)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--kill-rank", type=int, default=None)
    ap.add_argument("--kill-step", type=int, default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--cpu-offload", action="store_true")
    args = ap.parse_args()
    kill = (args.kill_rank, args.kill_step) if args.kill_rank is not None else None
    job(Path(args.out), args.strategy, args.steps, args.folder, args.resume, kill, args.compile, args.cpu_offload)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # every rank done (rank 0 writes the outputs) before any leaves the group
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
