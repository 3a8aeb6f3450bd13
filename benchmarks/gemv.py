"""Matrix-vector speed: how fast each CPU reader streams GPT-2 124M's weights for one input row.

A batch-1 decode step is one matrix-vector product per weight matrix, so its speed is the rate at
which weights come from memory. This runs one decode step's worth of products (the 12 layers'
own matrices, 2304x768, 768x768, 3072x768, 768x3072, and the 50257x768 head: ~500 MB in fp32,
far beyond the caches) through:
- torch `F.linear` (MKL's sgemv on this build): what a plain PyTorch model does;
- HF transformers' layout: GPT-2's Conv1D keeps weights (in, out) and calls `torch.addmm`;
- oneDNN's packed layout (`torch.ops.mkldnn`), what scratchllm used before its kernel;
- scratchllm's C kernel (`scratchllm.model.gemv`), on the weights in place; and with the blocks'
  matrices in HF's (in, out) layout read through transposed views, the head as it is (how scratchllm
  holds an imported GPT-2: Conv1D matrices where the file maps them, the head tied to the embedding);
- numpy's `W @ x` (OpenBLAS), another BLAS for reference;
- a plain `sum` of the same weights: what torch reads when it only reads (a yardstick, not a
  hard ceiling: memory gives more to a few long streams than to 49 short reductions).
and the same in bf16 (F.linear vs the kernel, both layouts). Prints, for each reader, the precision, ms per step,
GB/s and the fraction reached of the memory's read bandwidth (the bound of a one-row product, which
reads every weight once; measured just before and after each row, as benchmarks/generate.py does:
see benchmarks/_common.ReadBandwidth), and ratios to the kernel. Replaces its section of
benchmarks/RESULTS.md.

    python benchmarks/gemv.py [--repeats 10] [--threads N] [--no-record]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ReadBandwidth, add_record_flag, best_time, header, recorded  # noqa: E402

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(50257, 768)]


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    return best_time(fn, repeats)[0] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10, help="best of this many steps")
    ap.add_argument("--threads", type=int, default=None)
    add_record_flag(ap)
    args = ap.parse_args()
    with recorded("gemv", not args.no_record):
        run_all(args)


def run_all(args) -> None:
    from scratchllm.model import gemv
    from scratchllm.runtime import set_threads

    set_threads(args.threads)
    header("matrix-vector products: one decode step's weights of GPT-2 124M, one input row")
    print(f"kernel: {gemv.status()}")
    kernel = gemv.load()
    bandwidth = ReadBandwidth()
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=g) * 0.02 for o, i in SHAPES]
    biases = [torch.randn(o, generator=g) * 0.02 for o, _ in SHAPES]
    xs = {n: torch.randn(1, n, generator=g) for n in (768, 3072)}
    nbytes = sum(w.numel() * 4 for w in weights)
    print(f"{len(SHAPES)} matrices, {nbytes / 1e6:.0f} MB in fp32, {nbytes / 2e6:.0f} MB in bf16")
    print("bound: the memory's read bandwidth measured around the row (a plain sum of 512 MB: a yardstick, "
          "so above 100% is possible)")
    print(f"  {'reader':<48} {'precision':<9} {'ms':>6} {'GB/s':>5}  {'bound GB/s':>10}  reached")

    ms: dict[str, float] = {}

    def run(name, fn, precision="fp32"):
        size = nbytes if precision == "fp32" else nbytes // 2
        ms[name], bw = bandwidth.around(lambda: best_ms(fn, args.repeats))
        speed = size / ms[name] / 1e6
        print(f"  {name:<48} {precision:<9} {ms[name]:6.2f} {speed:5.1f}  {bw:10.1f}  {speed / bw:6.0%}", flush=True)

    def x_for(w):
        return xs[w.shape[1]]

    run("torch F.linear (fp32)", lambda: [F.linear(x_for(w), w, b) for w, b in zip(weights, biases)])
    conv1d = [w.t().contiguous() for w in weights]  # HF GPT-2 Conv1D: weight (in, out)
    run("HF Conv1D layout: torch.addmm, weight (in, out)",
        lambda: [torch.addmm(b, x_for(w), wt) for w, wt, b in zip(weights, conv1d, biases)])
    if hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in weights]
        run("oneDNN packed layout", lambda: [torch.ops.mkldnn._linear_pointwise(x_for(w), p, b, "none", [], "")
                                              for w, p, b in zip(weights, packed, biases)])
    if kernel is not None:
        run("scratchllm C kernel", lambda: [kernel(w, x_for(w), b) for w, b in zip(weights, biases)])
        err = max((kernel(w, x_for(w), b) - F.linear(x_for(w), w, b)).abs().max().item()
                  for w, b in zip(weights[:4], biases[:4]))
        print(f"    (max abs difference from F.linear: {err:.1e})")
        # the blocks' matrices in HF's (in, out) memory, through transposed views, the head (the token embedding)
        # as it is: an imported GPT-2 as interop.hf holds it
        views = [wt.t() for wt in conv1d[:-1]] + weights[-1:]
        run("scratchllm C kernel, weight (in, out)", lambda: [kernel(v, x_for(v), b) for v, b in zip(views, biases)])
    np_w = [w.numpy() for w in weights]
    np_x = {n: x.numpy()[0] for n, x in xs.items()}
    run("numpy W @ x (OpenBLAS)", lambda: [w @ np_x[w.shape[1]] for w in np_w])
    run("torch sum of the weights (a plain read)", lambda: [w.sum() for w in weights])

    w16 = [w.bfloat16() for w in weights]
    b16 = [b.bfloat16() for b in biases]
    x16 = {n: x.bfloat16() for n, x in xs.items()}
    run("torch F.linear (bf16)", lambda: [F.linear(x16[w.shape[1]], w, b) for w, b in zip(w16, b16)], "bf16")
    if kernel is not None:
        run("scratchllm C kernel (bf16)", lambda: [kernel(w, x16[w.shape[1]], b) for w, b in zip(w16, b16)],
            "bf16")
        t16 = [w.t().contiguous().t() for w in w16[:-1]] + w16[-1:]
        run("scratchllm C kernel (bf16), weight (in, out)",
            lambda: [kernel(w, x16[w.shape[1]], b) for w, b in zip(t16, b16)], "bf16")
        del t16
    print("ratios (time of the other / time of scratchllm's kernel):")
    if kernel is not None:
        ours = ms["scratchllm C kernel"]
        for name in ("torch F.linear (fp32)", "HF Conv1D layout: torch.addmm, weight (in, out)",
                     "oneDNN packed layout", "numpy W @ x (OpenBLAS)"):
            if name in ms:
                print(f"  {name:<48} {ms[name] / ours:5.2f}x")
        print(f"  {'kernel speed / plain read speed':<48} "
              f"{ms['torch sum of the weights (a plain read)'] / ours:5.0%}")
        print(f"  {'bf16: torch F.linear / kernel':<48} "
              f"{ms['torch F.linear (bf16)'] / ms['scratchllm C kernel (bf16)']:5.2f}x")
        for dtype, suffix in (("fp32", ""), ("bf16", " (bf16)")):
            print(f"  {f'{dtype}: kernel on (in, out) / on (out, in)':<48} "
                  f"{ms[f'scratchllm C kernel{suffix}, weight (in, out)'] / ms[f'scratchllm C kernel{suffix}']:5.2f}x")


if __name__ == "__main__":
    main()
