"""Loading a pretrained model: scratchllm's Hugging Face reader against transformers, same folder.

transformers writes GPT-2 124M's shape at random init (`GPT2LMHeadModel(GPT2Config())`,
`save_pretrained`: config.json + model.safetensors, fp32) into a temporary folder. Each loader then
runs in its own fresh process, so neither inherits the other's memory or file cache warm-up order
unfairly (the file is read once before any timing, so every run finds it in the page cache):
- scratchllm: `scratchllm.interop.hf.read_hf(folder)` -> our GPT in eval mode (weights translated
  by model.weights, shapes checked, built on the meta device: no random init; the memory-mapped
  tensors kept as they are, GPT-2's Conv1D (in, out) matrices too, as transposed views that F.linear
  and the decode kernel read in place: nothing is copied);
- transformers: `GPT2LMHeadModel.from_pretrained(folder).eval()`;
- scratchllm ckpt: the same weights as scratchllm's own checkpoint folder (`save_checkpoint`), read by
  `scratchllm.checkpoint.load_model` (built on the meta device, the file's tensors memory-mapped as
  they are). It first checks the file's sha256 against the checkpoint's manifest, so that a damaged
  checkpoint is never used (a run folder then falls back to the previous one); the time of that check
  alone is printed too.
Imports (torch, the library) happen before the clock starts; the time is folder -> ready model
("load"), and with the first forward pass of 16 tokens ("+1st fwd"): both map the file and read a
tensor's pages when it is first used, so the second column counts those reads. Torch's default threads.
The two scratchllm rows then decode 64 tokens (batch 1, greedy, `generate.Decoder`): the HF folder's
model reads its Conv1D matrices through the kernel's (in, out) path, the checkpoint's its (out, in) ones.
Peak RSS is the process's high-water mark (VmHWM, after the forward pass; not ru_maxrss, which after
exec still holds this parent's RSS) and its rise over the RSS after the imports.
Each loader runs `--repeats` times (fresh process each); the best time and that run's memory are shown.
All loaders also produce the same logits (checked here on one batch).
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
if kind == "scratchllm ckpt":  # our own checkpoint folder of the same weights
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
ids = torch.arange(16)[None] * 97 % 50257
t0 = time.perf_counter()
with torch.no_grad():
    out = model(ids)
first = time.perf_counter() - t0
peak = rss_mb("VmHWM:")
logits = (out[0] if isinstance(out, tuple) else getattr(out, "logits", out))[0, -1, :8].tolist()
check, tok_s = 0.0, 0.0
if kind.startswith("scratchllm"):  # then batch-1 greedy decoding, after the prefill and first token
    from scratchllm.config.sample import SampleConfig
    from scratchllm.generate import Decoder
    n = 0
    with Decoder(model, [ids[0].tolist()], SampleConfig(temperature=0.0, max_new_tokens=65), eos_id=None) as dec:
        for _ in dec:
            n += 1
            if n == 1:
                t0 = time.perf_counter()
    tok_s = (n - 1) / (time.perf_counter() - t0)
if kind == "scratchllm ckpt":  # the sha256 check alone, as load_model makes it
    from scratchllm.checkpoint import verify_checkpoint
    t0 = time.perf_counter()
    verify_checkpoint(folder)
    check = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "first": first, "peak_mb": peak, "base_mb": base, "logits": logits,
                  "check": check, "tok_s": tok_s}))
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
                for kind in ("scratchllm", "transformers", "scratchllm ckpt"):
                    where = ckpt if kind == "scratchllm ckpt" else folder
                    results.setdefault(kind, []).append(run_child(kind, where))
        print(f"{'loader':<16}{'precision':>10}{'load s':>9}{'median':>9}{'+1st fwd s':>11}{'peak RSS MB':>13}"
              f"{'rise MB':>9}")
        best = {}
        for kind, runs in results.items():
            b = min(runs, key=lambda r: r["seconds"])
            best[kind] = b
            print(f"{kind:<16}{'fp32':>10}{b['seconds']:>9.3f}{statistics.median(r['seconds'] for r in runs):>9.3f}"
                  f"{b['seconds'] + b['first']:>11.3f}{b['peak_mb']:>13.0f}{b['peak_mb'] - b['base_mb']:>9.0f}")
        s, t = best["scratchllm"], best["transformers"]
        same = max(abs(a - b) for a, b in zip(s["logits"] + best["scratchllm ckpt"]["logits"], t["logits"] * 2))
        print(f"scratchllm / transformers: load {s['seconds'] / t['seconds']:.2f}x, load + first forward "
              f"{(s['seconds'] + s['first']) / (t['seconds'] + t['first']):.2f}x, peak RSS "
              f"{s['peak_mb'] / t['peak_mb']:.2f}x; logits max abs diff {same:.1e}")
        c = best["scratchllm ckpt"]
        print(f"scratchllm ckpt: of its {c['seconds']:.3f} s, the sha256 check of the file against the checkpoint's "
              f"manifest takes {c['check']:.3f} s")
        print(f"then batch-1 greedy decoding (64 tokens after the first): from the HF folder's matrices read in place "
              f"(Conv1D, (in, out)) {s['tok_s']:.1f} tok/s, from our checkpoint's ((out, in)) {c['tok_s']:.1f} tok/s "
              f"= {s['tok_s'] / c['tok_s']:.2f}x")

if __name__ == "__main__":
    main()
