"""Loading a pretrained model: scratchllm's Hugging Face reader against transformers, same folder.

transformers writes GPT-2 124M's shape at random init (`GPT2LMHeadModel(GPT2Config())`,
`save_pretrained`: config.json + model.safetensors, fp32) into a temporary folder. Each loader then
runs in its own fresh process, so neither inherits the other's memory or file cache warm-up order
unfairly (the file is read once before any timing, so every run finds it in the page cache):
- scratchllm: `scratchllm.interop.hf.read_hf(folder)` -> our GPT in eval mode (weights translated
  by model.weights, shapes checked, built on the meta device: no random init; memory-mapped tensors
  kept, the transposed Conv1D matrices copied into nn.Linear's layout on torch's threads, and the
  file pages of each one copied let go of, so the process does not hold both);
- transformers: `GPT2LMHeadModel.from_pretrained(folder).eval()`;
- scratchllm ckpt: the same weights as scratchllm's own checkpoint folder (`save_checkpoint`), read by
  `scratchllm.checkpoint.load_model` (built on the meta device, the file's tensors memory-mapped as
  they are: our layout needs no transposing).
Imports (torch, the library) happen before the clock starts; the time is folder -> ready model
("load"), and with the first forward pass of 16 tokens ("+1st fwd"): transformers maps the file and
reads a tensor's pages when it is first used, scratchllm copies the Conv1D matrices (out of the
file's pages) while loading, so the second column compares like with like. Torch's default threads.
Peak RSS is the process's high-water mark (VmHWM, after the forward pass; not ru_maxrss, which after
exec still holds this parent's RSS) and its rise over the RSS after the imports.
Each loader runs `--repeats` times (fresh process each); the best time and that run's memory are shown.
Both loaders also produce the same logits (checked here on one batch).

Floor of a loader that gives nn.Linear contiguous (out, in) weights: GPT-2's Conv1D matrices
(in, out) must be copied into new memory, and new memory costs its first touch (the kernel maps and
zeroes every page; in a virtual machine the host may have to back it too). The "new memory" row
times exactly that, in a fresh process: filling as many bytes as those matrices hold (torch's
threads), no reading, no transposing. transformers keeps the file's layout and copies nothing.
Precision: fp32 weights. Target: no slower than transformers.

    python benchmarks/load.py [--repeats 3] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, add_record_flag, header, recorded  # noqa: E402

# Run in a fresh process: import, load, one forward pass; report {"seconds" (load), "first" (the forward
# pass), "peak_mb", "base_mb", "logits"} as JSON.
CHILD = r"""
import json, sys, time
import torch
kind, folder = sys.argv[1], sys.argv[2]
if kind == "new memory":  # the floor: first touch of argv[3] fp32 values of new memory
    n = int(sys.argv[3])
    load = lambda: torch.empty(n).fill_(0.0)
    model = None
elif kind == "scratchllm ckpt":  # our own checkpoint folder of the same weights
    import safetensors.torch
    from scratchllm.checkpoint import load_model
    load = lambda: load_model(folder)[0]
elif kind == "scratchllm":
    import safetensors.torch
    import scratchllm.model.weights
    import scratchllm.tokenizer.hf
    from scratchllm.interop.hf import read_hf
    load = lambda: read_hf(folder)[0]
else:
    from transformers import GPT2LMHeadModel
    load = lambda: GPT2LMHeadModel.from_pretrained(folder).eval()
def rss_mb(key="VmRSS:"):  # VmHWM: the peak. Not ru_maxrss, which keeps the parent's RSS from before exec.
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
base = rss_mb()
t0 = time.perf_counter()
model = load()
seconds = time.perf_counter() - t0
peak = rss_mb("VmHWM:")
first, logits = 0.0, []
if kind != "new memory":
    ids = torch.arange(16)[None] * 97 % 50257
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(ids)
    first = time.perf_counter() - t0
    peak = rss_mb("VmHWM:")
    logits = (out[0] if isinstance(out, tuple) else getattr(out, "logits", out))[0, -1, :8].tolist()
print(json.dumps({"seconds": seconds, "first": first, "peak_mb": peak, "base_mb": base, "logits": logits}))
"""


def run_child(kind: str, folder: Path, *extra: str) -> dict:
    env_path = str(ROOT / "src")
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(folder), *extra], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": env_path}, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per loader (default 3)")
    add_record_flag(ap)
    args = ap.parse_args()
    with recorded("load", not args.no_record):
        header("load: GPT-2 124M shape from a Hugging Face folder into a ready model, scratchllm vs transformers")
        import torch
        import transformers
        from transformers import GPT2Config, GPT2LMHeadModel

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "gpt2-124m"
            torch.manual_seed(0)
            ref = GPT2LMHeadModel(GPT2Config())
            ref.save_pretrained(folder)
            # values in the Conv1D matrices: what a loader into nn.Linear's layout copies
            conv = sum(m.weight.numel() for m in ref.modules() if type(m).__name__ == "Conv1D")
            del ref
            size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            from scratchllm.checkpoint import save_checkpoint
            from scratchllm.interop.hf import read_hf

            ckpt = save_checkpoint(Path(tmp) / "ckpt", read_hf(folder)[0])  # ours: config.json + model.safetensors
            for f in (folder / "model.safetensors", ckpt / "model.safetensors"):
                f.read_bytes()  # in the page cache for every loader
            print(f"folder: config.json + model.safetensors ({size:.0f} MB, fp32), written by transformers "
                  f"{transformers.__version__}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
                  f"best of {args.repeats} fresh processes")
            results = {}
            for _ in range(args.repeats):  # interleaved, so drift on the shared machine hits all alike
                for kind in ("scratchllm", "transformers", "new memory", "scratchllm ckpt"):
                    where = ckpt if kind == "scratchllm ckpt" else folder
                    results.setdefault(kind, []).append(run_child(kind, where, str(conv)))
        print(f"{'loader':<16}{'precision':>10}{'load s':>9}{'median':>9}{'+1st fwd s':>11}{'peak RSS MB':>13}"
              f"{'rise MB':>9}")
        best = {}
        for kind, runs in results.items():
            b = min(runs, key=lambda r: r["seconds"])
            best[kind] = b
            fwd = f"{b['seconds'] + b['first']:>11.3f}" if b["logits"] else f"{'-':>11}"
            print(f"{kind:<16}{'fp32':>10}{b['seconds']:>9.3f}{statistics.median(r['seconds'] for r in runs):>9.3f}"
                  f"{fwd}{b['peak_mb']:>13.0f}{b['peak_mb'] - b['base_mb']:>9.0f}")
        s, t = best["scratchllm"], best["transformers"]
        same = max(abs(a - b) for a, b in zip(s["logits"] + best["scratchllm ckpt"]["logits"], t["logits"] * 2))
        print(f"scratchllm / transformers: load {s['seconds'] / t['seconds']:.2f}x, load + first forward "
              f"{(s['seconds'] + s['first']) / (t['seconds'] + t['first']):.2f}x, peak RSS "
              f"{s['peak_mb'] / t['peak_mb']:.2f}x; logits max abs diff {same:.1e}")
        m = best["new memory"]
        print(f"new memory: first touch of {conv * 4 / 1e6:.0f} MB (the Conv1D matrices) {m['seconds']:.3f} s = "
              f"{m['seconds'] / t['seconds']:.2f}x transformers' load; scratchllm's load beyond it "
              f"{s['seconds'] - m['seconds']:.3f} s")


if __name__ == "__main__":
    main()
