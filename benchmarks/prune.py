"""Magnitude pruning: perplexity at 10/30/50% sparsity before and after a short recovery finetune, and the decode
speed of structurally pruned models.

The model: a trained scratchllm run given with --run (its prepared data beside it, from its state.json), else
one pretrained here for --pretrain-seconds with the shakespeare-bpe recipe (so the benchmark runs from a
clean clone). Every row is `compress.prune` on that model, then `compress.recover` (the one training loop,
AdamW, --recover-steps steps of --batch-size windows at --lr, masks kept) on the run's train split.
Perplexity: exp of the mean next-token loss over --windows non-overlapping context-length windows of
the run's validation split (held out from pretraining and from recovery).
The control row "dense + the same finetune" tells how much of a recovery is the extra training itself.
Decode: batch-1 greedy with a KV cache and the generation engine's fp32 kernel (a 32-token prompt, then up
to the context), tokens/s, best of --repeats, the original model and the head- and neuron-pruned ones in
the same process, interleaved.
Unstructured zeros are dense tensors here: they save no time (no sparse kernel) and are not timed.

    python benchmarks/prune.py [--run RUN] [--recover-steps 200] [--windows 64] [--no-record]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_record_flag, header, recorded, shared_data_dir  # noqa: E402

PROMPT = 32
SPARSITIES = (0.1, 0.3, 0.5)
STRUCTURED = (("heads", 0.25), ("heads", 0.5), ("neurons", 0.25), ("neurons", 0.5))


def perplexity(model, val, windows: int) -> float:
    """exp(mean next-token cross-entropy) over up to `windows` non-overlapping windows of the context."""
    import numpy as np
    import torch

    t = model.config.context_length
    n = min(windows, (len(val) - 1) // t)
    ids = torch.from_numpy(np.asarray(val[: n * t + 1], dtype=np.int64))
    losses = []
    with torch.inference_mode():
        for i in range(0, n * t, 8 * t):  # 8 windows a batch
            k = min(8, (n * t - i) // t)
            x = ids[i:i + k * t].view(k, t)
            y = ids[i + 1:i + k * t + 1].view(k, t)
            _, loss = model(x, targets=y)
            losses.append(loss.item() * k)
    return math.exp(sum(losses) / n)


def decode_seconds(model, prompt: list[int], n: int) -> float:
    """Seconds for batch-1 greedy decoding of `n` tokens after `prompt` (the model's forward with the generation
    engine's fp32 matrix-vector kernel, `model.fast_linear`, a KV cache, argmax)."""
    import torch

    from scratchllm.model.fast_linear import fast_linears

    with torch.inference_mode(), fast_linears(model, rows=1):
        cache = model.new_kv_cache(1, len(prompt) + n)
        t0 = time.perf_counter()
        logits = model(torch.tensor([prompt]), kv_cache=cache, last_only=True)
        for _ in range(n):
            nxt = logits[0, -1].argmax().item()
            logits = model(torch.tensor([[nxt]]), kv_cache=cache, last_only=True)
        return time.perf_counter() - t0


def pretrain_here(seconds: float, work: Path) -> Path:
    """A shakespeare-bpe run pretrained for `seconds` in `work` (the clean-clone path)."""
    from scratchllm.config.train import RunConfig
    from scratchllm.train.pretrain import pretrain

    run = RunConfig.load(preset="shakespeare-bpe", overrides={
        "runs_dir": str(work / "runs"), "train.max_seconds": seconds, "train.progress": False,
        "sample.max_new_tokens": 0, "data.data_dir": str(shared_data_dir())})
    pretrain(run, progress=False)
    return work / "runs" / run.name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="a trained scratchllm run (default: pretrain one here)")
    ap.add_argument("--pretrain-seconds", type=float, default=300, help="without --run: seconds of pretraining")
    ap.add_argument("--recover-steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-4, help="recovery's peak learning rate")
    ap.add_argument("--batch-size", type=int, default=8, help="recovery's windows per step")
    ap.add_argument("--windows", type=int, default=64, help="validation windows for perplexity")
    ap.add_argument("--repeats", type=int, default=5, help="decode: best of this many")
    add_record_flag(ap)
    args = ap.parse_args()
    with recorded("prune", not args.no_record):
        run_all(args)


def run_all(args) -> None:
    import torch

    from scratchllm.compress.prune import prune_model, recover, recovery_data
    from scratchllm.interop.load import load_any

    header("magnitude pruning: perplexity before/after a recovery finetune, decode speed of the smaller models")
    with tempfile.TemporaryDirectory(prefix="bench-prune-") as tmp:
        source = args.run or str(pretrain_here(args.pretrain_seconds, Path(tmp)))
        dense, _, meta = load_any(source)
        dense = dense.float().eval()
        prepared = recovery_data(None, meta)
        c = dense.config
        print(f"model: {source} ({c.n_layer} layers, {c.n_head} heads, {c.n_embd} dims, MLP {c.hidden_dim}, "
              f"context {c.context_length}, {dense.num_params():,} parameters); data {prepared.dir}")
        print(f"perplexity: {args.windows} windows of {c.context_length} tokens of the validation split; recovery: "
              f"{args.recover_steps} AdamW steps of {args.batch_size} x {c.context_length} tokens at lr {args.lr:g} "
              f"on the train split; torch threads {torch.get_num_threads()}")

        def recovered(model):
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the loop's "step N: val_loss" lines
                recover(model, prepared, args.recover_steps, lr=args.lr, batch_size=args.batch_size, progress=False)
            return perplexity(model, prepared.val, args.windows), time.perf_counter() - t0

        base = perplexity(dense, prepared.val, args.windows)
        control, secs = recovered(copy.deepcopy(dense))
        print(f"\n{'pruning':<34} {'params':>10} {'ppl pruned':>11} {'ppl recovered':>14} {'recovery s':>10}")
        print(f"{'dense (none)':<34} {dense.num_params():>10,} {base:>11.3f} {'-':>14} {'-':>10}")
        print(f"{'dense + the same finetune':<34} {dense.num_params():>10,} {base:>11.3f} {control:>14.3f} "
              f"{secs:>10.1f}")
        smaller = {}
        for scope in ("layer", "global"):
            for s in SPARSITIES:
                model, report = prune_model(copy.deepcopy(dense), s, None, scope)
                ppl = perplexity(model, prepared.val, args.windows)
                rec, secs = recovered(model)
                zeros = sum(int((m.weight == 0).sum()) for n, m in model.named_modules() if n in report["layers"])
                assert zeros == report["pruned_weights"], "recovery moved a pruned weight"
                print(f"{f'unstructured {s:.0%}, {scope} scope':<34} {dense.num_params():>10,} {ppl:>11.3f} "
                      f"{rec:>14.3f} {secs:>10.1f}")
        for structure, s in STRUCTURED:
            model, report = prune_model(copy.deepcopy(dense), s, structure)
            ppl = perplexity(model, prepared.val, args.windows)
            smaller[f"{structure} -{s:.0%}"] = copy.deepcopy(model).eval()
            rec, secs = recovered(model)
            mc = model.config
            what = f"{mc.n_head} heads" if structure == "heads" else f"MLP {mc.hidden_dim}"
            print(f"{f'{structure} {s:.0%} ({what})':<34} {model.num_params():>10,} {ppl:>11.3f} {rec:>14.3f} "
                  f"{secs:>10.1f}")

        n = c.context_length - PROMPT
        g = torch.Generator().manual_seed(1)
        prompt = torch.randint(0, c.vocab_size, (PROMPT,), generator=g).tolist()
        models = {"original": dense, **smaller}
        best = {k: math.inf for k in models}
        for m in models.values():
            decode_seconds(m, prompt, 4)  # warm-up
        for _ in range(args.repeats):
            for k, m in models.items():
                best[k] = min(best[k], decode_seconds(m, prompt, n))
        print(f"\ndecode, batch 1, greedy, {PROMPT}-token prompt + {n} tokens, fp32, best of {args.repeats}:")
        for k, m in models.items():
            print(f"  {k:<14} {m.num_params():>10,} params  {n / best[k]:>8.1f} tok/s  "
                  f"{best['original'] / best[k]:.2f}x the original")


if __name__ == "__main__":
    main()
