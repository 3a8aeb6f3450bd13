"""llama.cpp, the CPU speed peer: batch-1 greedy decode of the same model in llama.cpp and in scratchllm.

The model: GPT-2 124M's shape with random weights (seed 0) and GPT-2's tokenizer, in four formats, each
a pair of rows:
    llama.cpp (llama-cpp-python)                       scratchllm (its engine, `generate.Decoder`)
    f32    `scratchllm export gguf --type f32`          fp32   the checkpoint
    f16    `... --type f16`                             bf16   the checkpoint cast to bf16
    q8_0   `... --type q8_0` (blocks of 32, fp16 d)     int8   `scratchllm quantize --bits 8` (per channel)
    q4_0   `... --type q4_0` (blocks of 32, fp16 d)     int4   `scratchllm quantize --bits 4 --group-size 32`
Every GGUF is written from the same fp32 model by `scratchllm export gguf`, every quantized scratchllm
checkpoint from the same fp32 checkpoint by `compress.quantize`.

What is timed, the same on both sides: the same 32-token prompt (random ids, seed 1) is prefilled, the first
token taken (argmax), and then --new-tokens - 1 decode steps, each one token through the model with its KV
cache and an argmax over the logits; the decode steps are timed (llama-bench's tg figure; the prefill is not
counted). llama.cpp through llama-cpp-python's `Llama.eval` in a Python loop (its per-token Python cost
included, as scratchllm's is), n_threads = n_threads_batch = --threads, its defaults otherwise (an f16 KV
cache); scratchllm with torch.set_num_threads(--threads). Both engines of a format live in one fresh process
and run interleaved (ours, llama.cpp, llama.cpp, ours, ...): this shared machine's memory speed drifts
within minutes, and batch-1 decode follows it, so both see the same conditions. One warm-up run each, then
--repeats runs each; the median is reported (and the spread: min-max).

The bound: batch-1 decode reads every weight once per token (a tied embedding once, as the head; one row of
the position table) and the KV cache so far, so the memory's read bandwidth B (measured in the same process
between the runs, the highest reading: `_common.ReadBandwidth`) caps it at B / bytes read per token. The
bytes are each engine's own: llama.cpp's tensors as stored in the file, its f16 KV cache; scratchllm's
tensors as loaded (int4's fp32 scale per group of 32 makes it read 0.625 bytes a weight, q4_0's fp16 one
0.5625), its KV cache in the model's dtype; KV cache on average over the run (prompt + half the new tokens).
Target (issue 18): scratchllm at least as fast as llama.cpp at every format.

    python benchmarks/llamacpp.py [--new-tokens 128] [--repeats 5] [--threads 2] [--no-record]
Needs llama-cpp-python (`make dev` installs it from its wheel cache) and gguf (the export extra).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, add_record_flag, header, recorded, shared_data_dir  # noqa: E402

PROMPT = 32
# format pairs: (llama.cpp's GGUF type, scratchllm's row)
PAIRS = (("f32", "fp32"), ("f16", "bf16"), ("q8_0", "int8"), ("q4_0", "int4-g32"))


# --- one format, in a fresh process ------------------------------------------------------------------------
def llama_decode(llm, prompt: list[int], n: int) -> tuple[float, list[int]]:
    """llama.cpp: prefill, first token, then n - 1 timed decode steps; (seconds of those steps, tokens).
    The logits are read where llama.cpp left them (the last position's, as `llama_get_logits_ith(ctx, -1)`
    gives them: `Llama.eval` keeps no copy unless every position's logits are asked for)."""
    import llama_cpp
    import numpy as np

    vocab = llm.n_vocab()

    def next_token() -> int:
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))

    llm.reset()
    llm.eval(prompt)
    out = [next_token()]
    t0 = time.perf_counter()
    for _ in range(n - 1):
        llm.eval(out[-1:])
        out.append(next_token())
    return time.perf_counter() - t0, out


def ours_decode(model, prompt: list[int], n: int) -> tuple[float, list[int]]:
    """scratchllm's engine: the same steps, through `generate.Decoder` (what `generate` runs)."""
    from scratchllm.config.sample import SampleConfig
    from scratchllm.generate import Decoder

    out: list[int] = []
    t0 = 0.0
    with Decoder(model, [prompt], SampleConfig(temperature=0.0, max_new_tokens=n), eos_id=None) as dec:
        for step in dec:
            out.append(step[0])
            if len(out) == 1:
                t0 = time.perf_counter()  # after the prefill and the first token
    return time.perf_counter() - t0, out


def ours_bytes(model, kv_positions: float) -> float:
    """Bytes one scratchllm decode step reads: every tensor once (a tied table once), one row of the
    position table, the KV cache of `kv_positions` positions in the model's dtype."""
    seen, total = set(), 0
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        size = t.numel() * t.element_size()
        total += size // t.shape[0] if name == "pos_emb.weight" else size
    c = model.config
    kv_elem = model.new_kv_cache(1, 1).k.element_size()  # the engine's cache: the model's dtype
    return total + 2 * c.n_layer * c.kv_heads * c.head_dim * kv_elem * kv_positions


def llama_bytes(path: str, config, kv_positions: float) -> float:
    """Bytes one llama.cpp decode step reads: every tensor of the file once, one row of the position table,
    its f16 KV cache of `kv_positions` positions."""
    import gguf

    total = 0
    for t in gguf.GGUFReader(path).tensors:
        total += t.n_bytes // int(t.shape[-1]) if t.name == "position_embd.weight" else t.n_bytes
    return total + 2 * config.n_layer * config.kv_heads * config.head_dim * 2 * kv_positions


def child(args) -> None:
    """Load one format's pair, run them interleaved, print JSON."""
    import torch
    from llama_cpp import Llama

    from _common import ReadBandwidth
    from scratchllm.checkpoint import load_model

    torch.set_num_threads(args.threads)
    gguf_type, ours_row = args.child.split(",")
    work = Path(args.work)
    folder = work / {"fp32": "fp32", "bf16": "fp32", "int8": "int8", "int4-g32": "int4"}[ours_row]
    model = load_model(folder)[0].eval()
    if ours_row == "bf16":
        model = model.to(torch.bfloat16)
    path = str(work / f"model-{gguf_type}.gguf")
    n_ctx = 256  # >= prompt + new tokens
    llm = Llama(path, n_ctx=n_ctx, n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    prompt = torch.randint(0, model.config.vocab_size, (PROMPT,), generator=torch.Generator().manual_seed(1)).tolist()
    n = args.new_tokens
    bandwidth = ReadBandwidth()
    runs = {"ours": lambda: ours_decode(model, prompt, n), "llama": lambda: llama_decode(llm, prompt, n)}
    times: dict[str, list[float]] = {"ours": [], "llama": []}
    tokens = {}
    gbs = [bandwidth.measure()]
    for r in range(args.repeats + 1):  # round 0 is the warm-up, not counted
        for who in (("ours", "llama") if r % 2 else ("llama", "ours")):
            t, tokens[who] = runs[who]()
            if r:
                times[who].append(t)
        gbs.append(bandwidth.measure())
    kv = PROMPT + n / 2
    print(json.dumps({"times": times, "tokens": tokens, "gbs": max(gbs), "n": n - 1,
                      "bytes": {"ours": ours_bytes(model, kv), "llama": llama_bytes(path, model.config, kv)},
                      "llama_info": _llama_info()}))


def _llama_info() -> str:
    import llama_cpp

    features = llama_cpp.llama_print_system_info().decode().strip().rstrip("|").strip()
    return f"llama-cpp-python {llama_cpp.__version__}; {features}"


def run_child(pair: tuple[str, str], work: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", ",".join(pair), "--work", str(work), "--new-tokens",
           str(args.new_tokens), "--repeats", str(args.repeats), "--threads", str(args.threads), "--no-record"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{pair} failed: {out.stderr.strip()[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the parent: files, then one child per format ------------------------------------------------------------
def prepare(work: Path) -> None:
    """The fp32 checkpoint (GPT-2 124M shape, random, GPT-2's tokenizer), its int8/int4 checkpoints and the four
    GGUF files."""
    import torch

    from scratchllm.checkpoint import save_checkpoint
    from scratchllm.compress.quantize import QuantScheme, quantize_folder
    from scratchllm.config.model import ModelConfig
    from scratchllm.interop.gguf import write_gguf
    from scratchllm.model import GPT
    from scratchllm.tokenizer.factory import gpt2

    torch.manual_seed(0)
    model = GPT(ModelConfig.preset("gpt2-small")).eval()
    tok = gpt2(shared_data_dir())
    save_checkpoint(work / "fp32", model, tokenizer=tok)
    quantize_folder(work / "fp32", work / "int8", QuantScheme(8))
    quantize_folder(work / "fp32", work / "int4", QuantScheme(4, 32))
    for kind, _ in PAIRS:
        write_gguf(model, tok, work / f"model-{kind}.gguf", kind)


def run_all(args) -> None:
    import torch

    from scratchllm.model import gemv

    header("llama.cpp vs scratchllm: batch-1 greedy decode, GPT-2 124M shape (random weights), same prompt and "
           "tokens")
    n = args.new_tokens
    print(f"threads: {args.threads} for both (torch.set_num_threads, llama.cpp n_threads); {PROMPT}-token prompt, "
          f"{n} new tokens ({n - 1} decode steps timed); median of {args.repeats} interleaved runs after a warm-up")
    print(f"scratchllm: torch {torch.__version__}; matrix-vector kernel: {gemv.status()}")
    with tempfile.TemporaryDirectory(prefix="bench-llamacpp-") as tmp:
        work = Path(tmp)
        prepare(work)
        results = {}
        for pair in PAIRS:
            results[pair] = r = run_child(pair, work, args)
            if pair == PAIRS[0]:
                print(f"llama.cpp: {r['llama_info']}")
                print(f"  {'format':<19} {'tok/s':>7} {'(min-max)':>15} {'MB/token':>8} {'GB/s':>5} {'bound':>6} "
                      f"{'reached':>7}")
            for who, label in (("llama", f"llama.cpp {pair[0]}"), ("ours", f"scratchllm {pair[1]}")):
                speeds = sorted(r["n"] / t for t in r["times"][who])
                med = r["n"] / statistics.median(r["times"][who])
                bound = r["gbs"] * 1e9 / r["bytes"][who]
                print(f"  {label:<19} {med:7.1f} ({speeds[0]:6.1f}-{speeds[-1]:6.1f}) {r['bytes'][who] / 1e6:8.1f} "
                      f"{r['gbs']:5.1f} {bound:6.0f} {med / bound:7.0%}", flush=True)
        print("ratios (scratchllm / llama.cpp, median tok/s) and greedy tokens (of "
              f"{n}) equal to llama.cpp's at the same format:")
        met = True
        for pair in PAIRS:
            r = results[pair]
            ratio = statistics.median(r["times"]["llama"]) / statistics.median(r["times"]["ours"])
            same = sum(a == b for a, b in zip(r["tokens"]["ours"], r["tokens"]["llama"]))
            met &= ratio >= 1.0
            print(f"  {pair[1]:>8} vs {pair[0]:<5} {ratio:5.2f}x  {'met' if ratio >= 1.0 else 'NOT met'}   "
                  f"tokens equal: {same}")
        print(f"target (scratchllm at least as fast as llama.cpp at every format): {'met' if met else 'NOT met'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=128, help="tokens generated per run (llama-bench's tg128)")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per engine and format (the median is shown)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both engines")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--work", default=None, help=argparse.SUPPRESS)
    add_record_flag(ap)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    with recorded("llamacpp", not args.no_record):
        run_all(args)


if __name__ == "__main__":
    main()
