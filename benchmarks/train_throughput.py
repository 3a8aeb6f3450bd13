"""Training throughput: scratchllm against the book's GPTModel and Hugging Face's GPT2LMHeadModel.

One optimizer step = forward, backward, AdamW step, on the same random batch, same shapes, each
variant in a fresh process; tokens/s is the median after warm-up. Configs: nanoGPT's CPU
Shakespeare model (4 layers, 4 heads, 128 dims, context 64, batch 12, vocabulary 65; no biases and
exact GELU, as nanoGPT's model)
and GPT-2 124M at context 256, batch 4 (GPT-2's tanh GELU and biases for every implementation).
Each row's speed is also given against its physical bound: model FLOPs utilisation (MFU), the
model's training FLOPs per second (`model.info.train_flops_per_token` of the shape, the same count
for every implementation) over the measured matmul peak of the precision the row uses (a 2048-cube
matmul, fp32 or bf16; bf16 is fast only where the CPU has AVX512-BF16 or AMX, which the machine
line says). Also the peak memory (RSS) of a 124M training step at context 1024, batch 8, with and
without activation checkpointing.

Each peer gets its best CPU setting: fp32, and for HF also bf16 autocast, with its default (sdpa)
attention and with eager attention (which, like our "auto" attention, avoids torch's slow bf16 CPU
flash-attention backward). scratchllm's attention is "auto" (see model.layers.Attention).

Each variant runs in its own process: scratchllm's pretrain job keeps freed memory in the process
(`runtime.setup_process` -> `runtime.keep_freed_memory`, a process-wide malloc setting, on by default
in `train.keep_freed_memory`), and a peer must not inherit it unasked. The row "HF ... + kept
memory" gives HF the same setting, so the share of the gain that is the allocator's and the share
that is the model's can be read apart.

    python benchmarks/train_throughput.py            # everything (~10 minutes on 2 cores)
    python benchmarks/train_throughput.py --quick    # fewer steps, no 124M memory runs
    python benchmarks/train_throughput.py --no-record  # do not replace its section of benchmarks/RESULTS.md

Targets (issue): tiny >= 1.5x the fastest peer; 124M >= 1.3x HF under bf16 autocast; checkpointing
cuts peak RSS by >= 40%. Compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_record_flag, header, matmul_peaks, median_step_time, recorded  # noqa: E402

TINY = dict(n_layer=4, n_head=4, n_embd=128, context_length=64, vocab_size=65, batch=12)
# nanoGPT's model options: no biases, exact (erf) GELU. HF's GPT-2 always has biases; it gets exact
# GELU too (activation_function="gelu", its faster GELU on CPU). The book's model is as published.
NANOGPT = dict(bias=False, qkv_bias=False, mlp="gelu_exact")
GPT2 = dict(n_layer=12, n_head=12, n_embd=768, context_length=256, vocab_size=50257, batch=4)


def ours(c, *, precision="fp32", compile=False, checkpointing=False, keep_memory=True, **model_kw):
    import torch

    from scratchllm.config.model import ModelConfig
    from scratchllm.config.train import TrainConfig
    from scratchllm.model import GPT
    from scratchllm.runtime import autocast
    from scratchllm.train.losses import loss_for
    from scratchllm.train.optim import build_optimizer

    cfg = ModelConfig(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], context_length=c["context_length"],
                      vocab_size=c["vocab_size"], dropout=0.0, gradient_checkpointing=checkpointing, **model_kw)
    if keep_memory:  # as the pretrain job does (runtime.setup_process) with train.keep_freed_memory, the default
        from scratchllm.runtime import keep_freed_memory

        keep_freed_memory()
    model = GPT(cfg)
    opt = build_optimizer(model, TrainConfig(), "cpu")
    fwd = torch.compile(model) if compile else model
    amp = autocast("cpu", precision)

    lm = loss_for(cfg)

    def loss_fn(x, y):
        with amp:
            return lm(fwd, (x, y))

    return model, opt, loss_fn


def book(c, precision="fp32"):
    import torch
    import torch.nn.functional as F
    from llms_from_scratch.ch04 import GPTModel

    from scratchllm.runtime import autocast

    model = GPTModel({"vocab_size": c["vocab_size"], "context_length": c["context_length"], "emb_dim": c["n_embd"],
                      "n_heads": c["n_head"], "n_layers": c["n_layer"], "drop_rate": 0.0, "qkv_bias": False})
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4, weight_decay=0.1)  # the book's chapter 5 optimizer
    amp = autocast("cpu", precision)

    def loss_fn(x, y):
        with amp:
            return F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())

    return model, opt, loss_fn


def hf(c, precision="fp32", activation="gelu_new", keep_memory=False, attn="sdpa"):
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    from scratchllm.runtime import autocast, keep_freed_memory

    if keep_memory:
        keep_freed_memory()

    cfg = GPT2Config(vocab_size=c["vocab_size"], n_positions=c["context_length"], n_embd=c["n_embd"],
                     n_layer=c["n_layer"], n_head=c["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0, activation_function=activation, attn_implementation=attn)
    model = GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1)
    amp = autocast("cpu", precision)

    def loss_fn(x, y):
        with amp:
            return F.cross_entropy(model(input_ids=x).logits.flatten(0, 1).float(), y.flatten())

    return model, opt, loss_fn


def tokens_per_second(make, c, warmup, steps):
    import torch

    torch.manual_seed(0)
    model, opt, loss_fn = make()
    model.train()
    x = torch.randint(0, c["vocab_size"], (c["batch"], c["context_length"]))
    y = torch.randint(0, c["vocab_size"], (c["batch"], c["context_length"]))

    def step():
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t = median_step_time(step, warmup, steps)
    return c["batch"] * c["context_length"] / t


def train_flops_per_token(c, name) -> float:
    """Training FLOPs per token of config `c`'s shape (model.info's count: the same for every
    implementation of the shape; biases, which nanoGPT's shape lacks and the peers have, add <0.1%)."""
    from scratchllm.config.model import ModelConfig
    from scratchllm.model.info import train_flops_per_token as count

    extra = NANOGPT if name == "tiny" else {}
    cfg = ModelConfig(n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"], context_length=c["context_length"],
                      vocab_size=c["vocab_size"], **extra)
    return float(count(cfg, c["context_length"]))


def variants(c, name):
    """label -> (factory, precision) for one config; factories run inside the child process."""
    if name == "tiny":
        v = {
            "scratchllm fp32": (lambda: ours(c, **NANOGPT), "fp32"),
            "scratchllm bf16": (lambda: ours(c, precision="bf16", **NANOGPT), "bf16"),
            "scratchllm fp32 compiled": (lambda: ours(c, compile=True, **NANOGPT), "fp32"),
            "book GPTModel fp32": (lambda: book(c), "fp32"),
            "HF GPT2LMHeadModel fp32": (lambda: hf(c, activation="gelu"), "fp32"),
            "HF GPT2LMHeadModel bf16": (lambda: hf(c, "bf16", activation="gelu"), "bf16"),
            "HF GPT2LMHeadModel bf16 eager attention": (lambda: hf(c, "bf16", activation="gelu", attn="eager"), "bf16"),
        }
    else:
        v = {
            "scratchllm fp32": (lambda: ours(c), "fp32"),
            "scratchllm bf16": (lambda: ours(c, precision="bf16"), "bf16"),
            "book GPTModel fp32": (lambda: book(c), "fp32"),
            "HF GPT2LMHeadModel fp32": (lambda: hf(c), "fp32"),
            "HF GPT2LMHeadModel bf16": (lambda: hf(c, "bf16"), "bf16"),
            "HF GPT2LMHeadModel bf16 eager attention": (lambda: hf(c, "bf16", attn="eager"), "bf16"),
            "HF GPT2LMHeadModel bf16 + kept memory": (lambda: hf(c, "bf16", keep_memory=True), "bf16"),
        }
    return v


CONFIGS = {"tiny": TINY, "124m": GPT2}


def variant_child(name: str, label: str, warmup: int, steps: int) -> None:
    """Time one variant in this (fresh) process; print tokens/s as JSON."""
    make, _ = variants(CONFIGS[name], name)[label]
    print(json.dumps({"tps": tokens_per_second(make, CONFIGS[name], warmup, steps)}))


def compare(name, labels, warmup, steps, peaks):
    c = CONFIGS[name]
    fpt = train_flops_per_token(c, name)
    print(f"\n-- {name}: {c}; {fpt / 1e6:.1f} MFLOP per token trained")
    print(f"{'variant':40s} {'precision':>9s} {'tok/s':>10s}  MFU (of the measured matmul peak of its precision)")
    table = variants(c, name)
    results = {}
    for label in labels:
        r = subprocess.run([sys.executable, __file__, "--variant-child", name, label, str(warmup), str(steps)],
                           capture_output=True, text=True)
        if r.returncode != 0:  # a peer that cannot run here is reported, not fatal
            print(f"{label:40s} failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
            continue
        tps, precision = json.loads(r.stdout.strip().splitlines()[-1])["tps"], table[label][1]
        results[label] = tps
        print(f"{label:40s} {precision:>9s} {tps:10,.0f}  {tps * fpt / peaks[precision]:6.1%}", flush=True)
    peers = {k: v for k, v in results.items() if not k.startswith("scratchllm") and "kept memory" not in k}
    if peers and results:
        best_peer = max(peers, key=peers.get)
        for k, v in results.items():
            if k.startswith("scratchllm"):
                print(f"  {k} / fastest peer ({best_peer}): {v / peers[best_peer]:.2f}x")
        ours_best = max((k for k in results if k.startswith("scratchllm")), key=results.get, default=None)
        for ref in ("HF GPT2LMHeadModel bf16", "HF GPT2LMHeadModel bf16 eager attention",
                    "HF GPT2LMHeadModel bf16 + kept memory"):
            if ref in results and ours_best:
                print(f"  {ours_best} / {ref}: {results[ours_best] / results[ref]:.2f}x")
    return results


def memory_child(checkpointing: bool) -> None:
    """One 124M training step at context 1024, batch 8; print peak RSS in MiB as JSON."""
    import resource

    import torch

    c = dict(GPT2, context_length=1024, batch=8)
    # as the pretrain job does: freed memory kept without checkpointing, returned with it (train.keep_freed_memory)
    model, opt, loss_fn = ours(c, checkpointing=checkpointing, keep_memory=not checkpointing)
    x = torch.randint(0, c["vocab_size"], (c["batch"], c["context_length"]))
    loss = loss_fn(x, x)
    loss.backward()
    opt.step()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"checkpointing": checkpointing, "peak_rss_mib": rss}))


def memory(peaks_unused=None) -> None:
    print("\n-- peak RSS of one 124M training step, context 1024, batch 8 (each in its own process)")
    out = {}
    for ckpt in (False, True):
        r = subprocess.run([sys.executable, __file__, "--memory-child", str(int(ckpt))], capture_output=True,
                           text=True)
        if r.returncode != 0:
            print(f"checkpointing={ckpt}: failed: {r.stderr.strip().splitlines()[-1:]}")
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        out[ckpt] = d["peak_rss_mib"]
        print(f"activation checkpointing {'on ' if ckpt else 'off'}: {d['peak_rss_mib']:,.0f} MiB")
    if len(out) == 2:
        print(f"  reduction with checkpointing: {1 - out[True] / out[False]:.0%} (target >= 40%)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps; skip the 124M memory runs")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--variant-child", nargs=4, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--compile", action="store_true", help="also time scratchllm under torch.compile")
    add_record_flag(ap)
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(bool(int(args.memory_child)))
        return
    if args.variant_child is not None:
        name, label, w, s = args.variant_child
        variant_child(name, label, int(w), int(s))
        return
    with recorded("train_throughput", not args.no_record):
        run_all(args)


def run_all(args) -> None:
    header("training throughput: scratchllm vs the book's GPTModel vs HF GPT2LMHeadModel")
    peaks = matmul_peaks()
    print(f"measured matmul peaks (2048^3, the bounds of MFU): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    w, s = (3, 10) if args.quick else (5, 30)
    tiny = [k for k in variants(TINY, "tiny") if args.compile or "compiled" not in k]
    compare("tiny", tiny, w, s, peaks)
    w, s = (1, 3) if args.quick else (2, 8)
    compare("124m", list(variants(GPT2, "124m")), w, s, peaks)
    if not args.quick:
        memory()


if __name__ == "__main__":
    main()
