"""Loading a pretrained model: scratchllm's Hugging Face reader against transformers, same folder.

transformers writes GPT-2 124M's shape at random init (`GPT2LMHeadModel(GPT2Config())`,
`save_pretrained`: config.json + model.safetensors, fp32) into a temporary folder. Each loader then
runs in its own fresh process, so neither inherits the other's memory or file cache warm-up order
unfairly (the file is read once before any timing, so every run finds it in the page cache):
- scratchllm: `scratchllm.interop.hf.read_hf(folder)` -> our GPT in eval mode (weights translated
  by model.weights, shapes checked, built on the meta device: no random init);
- transformers: `GPT2LMHeadModel.from_pretrained(folder).eval()`.
Imports (torch, the library) happen before the clock starts; the time is folder -> ready model
("load"), and with the first forward pass of 16 tokens ("+1st fwd"): transformers maps the file and
reads a tensor's pages when it is first used, scratchllm's GPT-2 reader transposes the Conv1D
matrices (model.weights) and so reads them while loading, so the second column compares like with
like. Torch's default threads. Peak RSS is the process's high-water mark (ru_maxrss, after the
forward pass) and its rise over the RSS after the imports.
Each loader runs `--repeats` times (fresh process each); the best time and that run's memory are shown.
Both loaders also produce the same logits (checked here on one batch).

No physical bound is given: from the page cache, loading is a few memory copies of 0.5 GB
(the bound would be ~0.5 GB per copy / the read bandwidth); the comparison is with transformers.
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
import json, resource, sys, time
import torch
kind, folder = sys.argv[1], sys.argv[2]
if kind == "scratchllm":
    import safetensors.torch
    import scratchllm.model.weights
    import scratchllm.tokenizer.hf
    from scratchllm.interop.hf import read_hf
    load = lambda: read_hf(folder)[0]
else:
    from transformers import GPT2LMHeadModel
    load = lambda: GPT2LMHeadModel.from_pretrained(folder).eval()
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
base = rss_mb()
t0 = time.perf_counter()
model = load()
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
ids = torch.arange(16)[None] * 97 % 50257
t0 = time.perf_counter()
with torch.no_grad():
    out = model(ids)
first = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
logits = (out[0] if isinstance(out, tuple) else getattr(out, "logits", out))[0, -1, :8].tolist()
print(json.dumps({"seconds": seconds, "first": first, "peak_mb": peak, "base_mb": base, "logits": logits}))
"""


def run_child(kind: str, folder: Path) -> dict:
    env_path = str(ROOT / "src")
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(folder)], capture_output=True, text=True,
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
            GPT2LMHeadModel(GPT2Config()).save_pretrained(folder)
            size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
            (folder / "model.safetensors").read_bytes()  # in the page cache for every loader
            print(f"folder: config.json + model.safetensors ({size:.0f} MB, fp32), written by transformers "
                  f"{transformers.__version__}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
                  f"best of {args.repeats} fresh processes")
            results = {}
            for _ in range(args.repeats):  # interleaved, so drift on the shared machine hits both alike
                for kind in ("scratchllm", "transformers"):
                    results.setdefault(kind, []).append(run_child(kind, folder))
        print(f"{'loader':<14}{'precision':>10}{'load s':>9}{'median':>9}{'+1st fwd s':>11}{'peak RSS MB':>13}"
              f"{'rise MB':>9}")
        best = {}
        for kind, runs in results.items():
            b = min(runs, key=lambda r: r["seconds"])
            best[kind] = b
            print(f"{kind:<14}{'fp32':>10}{b['seconds']:>9.3f}{statistics.median(r['seconds'] for r in runs):>9.3f}"
                  f"{b['seconds'] + b['first']:>11.3f}{b['peak_mb']:>13.0f}{b['peak_mb'] - b['base_mb']:>9.0f}")
        s, t = best["scratchllm"], best["transformers"]
        same = max(abs(a - b) for a, b in zip(s["logits"], t["logits"]))
        print(f"scratchllm / transformers: load {s['seconds'] / t['seconds']:.2f}x, load + first forward "
              f"{(s['seconds'] + s['first']) / (t['seconds'] + t['first']):.2f}x, peak RSS "
              f"{s['peak_mb'] / t['peak_mb']:.2f}x; logits max abs diff {same:.1e}")


if __name__ == "__main__":
    main()
