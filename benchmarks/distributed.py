"""Scale-out on this machine: tokens/s of 1 process against 2 (DDP, FSDP), and the bytes each rank
communicates per optimizer step, measured, against the theory.

Each row is the real loop (`train.loop.train`) on random tokens, started the real way (2 processes:
torchrun, gloo on the CPU); the global batch is the same in every row (`train.batch_size` is the
job's), so the rows do the same arithmetic. Shapes: tiny (4 layers, 128 dims, context 64, batch 12,
vocabulary 65: nanoGPT's CPU Shakespeare model) and GPT-2 124M (context 256, batch 4).

What 2 cores allow: one process already uses both cores (2 intra-op threads); two processes get one
core each and add the communication, so on this machine 2 processes can at best match 1. The rows
measure that cost; on a cluster each process brings its own cores or GPU, the compute per process
halves and the communication below is what is added.

Communication is counted, not computed: DDP's gradient buckets through a comm hook that counts each
bucket before the all-reduce; FSDP's all-gathers and reduce-scatters (and the loop's scalar
all-reduces: the job's loss, the stop agreement) by wrapping torch.distributed's functions. The
"payload" is the size of the full buffer a collective works on; "traffic per rank" is what a ring
algorithm sends from each rank: 2(N-1)/N x payload for an all-reduce, (N-1)/N x payload for an
all-gather or a reduce-scatter. Theory with P parameters in fp32 (4P bytes): DDP all-reduces the
gradients once per step (2(N-1)/N x 4P per rank: "2x the parameters" for large N); FSDP all-gathers
the weights for the forward, again for the backward (the blocks, resharded after the forward), and
reduce-scatters the gradients: (N-1)/N x (4P + 4P_blocks + 4P) per rank.

    python benchmarks/distributed.py               # ~5 minutes on 2 cores
    python benchmarks/distributed.py --quick       # fewer steps
    python benchmarks/distributed.py --no-record   # do not replace its section of benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, add_record_flag, header, recorded  # noqa: E402

TINY = dict(n_layer=4, n_head=4, n_embd=128, context_length=64, vocab_size=65, batch=12)
GPT2 = dict(n_layer=12, n_head=12, n_embd=768, context_length=256, vocab_size=50257, batch=4)
SHAPES = {"tiny": TINY, "124m": GPT2}


# --- one row, in its own process(es) ------------------------------------------------------------------------
class Counter:
    """Bytes handed to collectives, by kind, since the last reset."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def add(self, kind: str, nbytes: int) -> None:
        self.bytes[kind] = self.bytes.get(kind, 0) + nbytes
        self.calls[kind] = self.calls.get(kind, 0) + 1

    def reset(self) -> None:
        self.bytes, self.calls = {}, {}


def instrument(counter: Counter) -> None:
    """Count what every collective of this process moves (the functions FSDP2 and the loop call at run
    time through `torch.distributed`; DDP's buckets through a comm hook on every DDP made)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    def size(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    original_reduce = dist.all_reduce

    def wrap(name: str, kind: str, full) -> None:
        original = getattr(dist, name)

        def counted(*args, **kwargs):
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            counter.add(kind, full(tensors))
            return original(*args, **kwargs)

        setattr(dist, name, counted)

    wrap("all_gather_single", "all-gather", lambda ts: max(size(t) for t in ts))
    wrap("reduce_scatter_single", "reduce-scatter", lambda ts: max(size(t) for t in ts))
    wrap("all_gather_into_tensor", "all-gather", lambda ts: max(size(t) for t in ts))
    wrap("reduce_scatter_tensor", "reduce-scatter", lambda ts: max(size(t) for t in ts))
    wrap("all_reduce", "all-reduce (scalars)", lambda ts: sum(size(t) for t in ts))
    init = DistributedDataParallel.__init__
    reduce = dist.all_reduce  # the counting one: the hook's all-reduce goes through it

    def ddp_init(self, *args, **kwargs):
        init(self, *args, **kwargs)

        def hook(state, bucket):
            # counted here as gradients, and not again as scalars by the wrapped all_reduce it calls
            counter.add("all-reduce (gradients)", size(bucket.buffer()))
            dist.all_reduce = original_reduce
            try:
                return default_hooks.allreduce_hook(state, bucket)
            finally:
                dist.all_reduce = reduce

        self.register_comm_hook(None, hook)

    DistributedDataParallel.__init__ = ddp_init


def child(shape: str, strategy: str, warmup: int, steps: int, out: str) -> None:
    """Train `warmup + steps` steps of `shape`; rank 0 writes the step times and bytes per step to `out`."""
    import numpy as np
    import torch

    from scratchllm.config.model import ModelConfig
    from scratchllm.config.train import TrainConfig
    from scratchllm.model import GPT
    from scratchllm.model.info import num_params
    from scratchllm.train import lm_loss, train

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    c = dict(SHAPES[shape])
    batch = c.pop("batch")
    counter = Counter()
    if strategy != "none":
        instrument(counter)
    torch.manual_seed(0)
    model_config = ModelConfig(**c)
    model = GPT(model_config)
    rng = np.random.default_rng(0)
    tokens = torch.as_tensor(rng.integers(0, c["vocab_size"], (batch, c["context_length"] + 1)))
    batches = iter(lambda: (tokens[:, :-1], tokens[:, 1:]), None)
    times: list[float] = []
    per_step: list[dict[str, int]] = []

    def hook(event, state, info):
        if event == "log":
            times.append(time.perf_counter())
            if state.step == warmup:
                counter.reset()

    config = TrainConfig(max_steps=warmup + steps, batch_size=batch, log_interval=1, precision="fp32",
                         progress=False, peak_flops=1e12, warmup_steps=0, strategy=strategy, fused=True)
    train(model, batches, lm_loss, config, hooks=[hook])
    per_step.append({k: v // steps for k, v in counter.bytes.items()})
    if int(os.environ.get("RANK", "0")) == 0:
        step_times = np.diff(times[warmup - 1:]) if warmup else np.diff(times)
        blocks = sum(p.numel() for p in model.blocks.parameters())
        Path(out).write_text(json.dumps({
            "step_s": float(np.median(step_times)), "tokens_per_step": batch * c["context_length"],
            "bytes": per_step[0], "calls": {k: v // steps for k, v in counter.calls.items()},
            "params": num_params(model_config), "block_params": int(blocks), "world": world}))
    if strategy != "none":
        import torch.distributed as dist

        dist.destroy_process_group()


def run_row(shape: str, nproc: int, strategy: str, warmup: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "row.json")
        args = [str(Path(__file__).resolve()), "--child", shape, strategy, str(warmup), str(steps), out]
        if nproc == 1:
            cmd = [sys.executable, *args]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "LOGLEVEL": "ERROR", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"row {shape} {strategy} x{nproc} failed:\n{proc.stderr[-3000:]}")
        return json.loads(Path(out).read_text())


# --- the report ----------------------------------------------------------------------------------------------
def mb(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


def traffic(kind: str, payload: int, n: int) -> float:
    """Bytes a ring algorithm sends from each rank for a collective over a `payload`-byte buffer."""
    return payload * (2 * (n - 1) / n if kind.startswith("all-reduce") else (n - 1) / n)


def report(shape: str, rows: dict[str, dict]) -> None:
    one = rows["1 process"]
    tok1 = one["tokens_per_step"] / one["step_s"]
    print(f"\n{shape}: {one['params']:,} parameters ({mb(4 * one['params'])} fp32), global batch "
          f"{one['tokens_per_step']:,} tokens")
    print(f"  {'row':<22}{'step':>10}{'tokens/s':>12}{'vs 1 process':>14}")
    for name, r in rows.items():
        tok = r["tokens_per_step"] / r["step_s"]
        print(f"  {name:<22}{r['step_s'] * 1e3:>8.1f}ms{tok:>12,.0f}{tok / tok1:>13.2f}x")
    for name, r in rows.items():
        if r["world"] == 1:
            continue
        n, p4, b4 = r["world"], 4 * r["params"], 4 * r["block_params"]
        print(f"  {name}: bytes per optimizer step, each rank (measured payload -> ring traffic per rank)")
        total = 0.0
        for kind, payload in sorted(r["bytes"].items()):
            t = traffic(kind, payload, n)
            total += t
            print(f"    {kind:<24}{r['calls'].get(kind, 0):>5} calls  payload {mb(payload):>12}  traffic {mb(t):>12}")
        if name.startswith("DDP"):
            theory, what = 2 * (n - 1) / n * p4, "all-reduce of the fp32 gradients, 2(N-1)/N x 4P"
        else:
            theory = (n - 1) / n * (p4 + b4 + p4)
            what = "all-gather 4P + blocks' re-gather 4P_blocks + reduce-scatter 4P, x (N-1)/N"
        print(f"    {'total':<24}{'':>11}{'':>21}traffic {mb(total):>12}  theory {mb(theory)} ({what}); "
              f"measured/theory {total / theory:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps")
    ap.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    add_record_flag(ap)
    args = ap.parse_args()
    if args.child is not None:
        shape, strategy, w, s, out = args.child
        child(shape, strategy, int(w), int(s), out)
        return
    with recorded("distributed", not args.no_record):
        header("scale-out: 1 process vs 2 (DDP, FSDP) through torchrun, gloo on the CPU")
        print(f"{os.cpu_count()} cores: 1 process runs {os.cpu_count()} threads, 2 processes 1 thread each")
        plan = {"tiny": (3, 10 if args.quick else 30), "124m": (1, 2 if args.quick else 4)}
        for shape, (w, s) in plan.items():
            rows = {"1 process": run_row(shape, 1, "none", w, s),
                    "DDP, 2 processes": run_row(shape, 2, "ddp", w, s),
                    "FSDP, 2 processes": run_row(shape, 2, "fsdp", w, s)}
            report(shape, rows)


if __name__ == "__main__":
    main()
