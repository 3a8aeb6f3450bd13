"""Generation speed: scratchllm's KV-cached engine against Hugging Face transformers and the book.

GPT-2 124M shape with random weights (the same weights in every implementation), a 32-token
prompt, 200 new tokens, greedy. Rows: scratchllm fp32 and bf16 at batch 1, scratchllm and HF with
speculative decoding by prompt lookup (exact for greedy; the speedup depends on how often the text
repeats itself, and a random-weight model's greedy text does repeat), batch-8 throughput,
HF `GPT2LMHeadModel.generate(use_cache=True, do_sample=False)`, the book's KV-cache GPTModel
(llms_from_scratch.kv_cache.gpt2) and the book's uncached loop (llms_from_scratch.ch04, fewer
tokens: it is slow). Also checks that greedy tokens are identical to HF's and the book's.

    python benchmarks/generate.py                   # everything (a few minutes on 2 cores)
    python benchmarks/generate.py --quick           # 50 tokens, fewer repeats, no uncached loop
    python benchmarks/generate.py --no-record       # do not replace its section of benchmarks/RESULTS.md

Decode at batch 1 reads every weight once per token (the tied embedding once, as the head; of the
position embedding one row) and the KV cache so far, so the memory's read bandwidth B caps its
speed at B / (bytes read per token). The script measures B as benchmarks/gemv.py does (just before
and after each row: this shared machine's memory speed drifts within minutes; see
benchmarks/_common.ReadBandwidth) and prints for each row its precision, tokens/s, that bound and
the fraction reached: at batch b a step reads the weights once for b tokens, and with
prompt lookup once for each forward pass (the tokens per pass are counted for scratchllm; HF's are
not known here, so its row has no bound). Times include the prompt's forward pass, which the bound
leaves out. Also whether scratchllm's matrix-vector kernel is in use
(benchmarks/gemv.py compares the kernels alone).
Run it alone: with another process on one of the two cores, two torch threads slow down
several-fold (use --threads 1 then).
torch.compile of the decode step was tried (see generate.engine) and is not used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ReadBandwidth, add_record_flag, best_time, header, recorded  # noqa: E402


def book_attention_fixed(self, x, use_cache=False, start_pos=0, cache=None):
    """llms_from_scratch.kv_cache.gpt2.MultiHeadAttention.forward with one fix: the installed
    release takes `causal_mask[:, -num_tokens:]` (columns), which crashes for one new query after
    cached keys; the queries are the mask's last rows, `causal_mask[-num_tokens:, :]`."""
    b, num_tokens, _ = x.shape
    keys = self.W_key(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, T, d)
    values = self.W_value(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, T, d)
    queries = self.W_query(x).view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)  # (b, h, T, d)
    next_cache = None
    if use_cache:
        if cache is not None:
            keys = torch.cat([cache[0], keys], dim=2)
            values = torch.cat([cache[1], values], dim=2)
        next_cache = (keys, values)
    seq_len = keys.size(2)
    causal_mask = torch.triu(torch.ones(seq_len, seq_len, dtype=torch.bool, device=x.device), diagonal=1)
    causal_mask = causal_mask[-num_tokens:, :][None, None, :, :]  # (1, 1, T, S)
    attn_scores = queries @ keys.transpose(2, 3)
    attn_scores.masked_fill_(causal_mask, -torch.inf)
    attn_weights = self.dropout(torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1))
    context_vec = (attn_weights @ values).transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)  # (b, T, C)
    return self.out_proj(context_vec), next_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--uncached-tokens", type=int, default=30, help="new tokens for the book's uncached loop")
    ap.add_argument("--batch", type=int, default=8, help="batch size of the throughput rows")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    ap.add_argument("--pair-rounds", type=int, default=5,
                    help="interleaved rounds of the headline pair (scratchllm fp32 and HF fp32 at batch 1)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-uncached", action="store_true")
    ap.add_argument("--lookup", type=int, default=10,
                    help="draft tokens of the prompt-lookup (speculative) rows, scratchllm's and HF's")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: --new-tokens 50 --repeats 1 --pair-rounds 2 --skip-uncached")
    add_record_flag(ap)
    args = ap.parse_args()
    if args.quick:
        args.new_tokens, args.repeats, args.pair_rounds, args.skip_uncached = 50, 1, 2, True
    with recorded("generate", not args.no_record):
        run_all(args)


def run_all(args) -> None:

    from transformers import GPT2Config, GPT2LMHeadModel

    from scratchllm.config.model import ModelConfig
    from scratchllm.config.sample import SampleConfig
    from scratchllm.generate import generate, generate_batch
    from scratchllm.model import GPT, gemv
    from scratchllm.model.info import kv_cache_bytes_per_token
    from scratchllm.model.weights import to_book_gpt, to_hf_gpt2
    from scratchllm.runtime import set_threads

    set_threads(args.threads)
    torch.manual_seed(0)
    cfg = ModelConfig.preset("gpt2-small")
    ours = GPT(cfg).eval()
    sd = ours.state_dict()
    n_new, n_prompt = args.new_tokens, args.prompt_tokens
    prompt = torch.randint(0, cfg.vocab_size, (1, n_prompt), generator=torch.Generator().manual_seed(1))
    prompts_b = torch.randint(0, cfg.vocab_size, (args.batch, n_prompt), generator=torch.Generator().manual_seed(2))
    greedy = SampleConfig(temperature=0.0, max_new_tokens=n_new)

    hf_cfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.context_length, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=cfg.norm_eps)
    hf = GPT2LMHeadModel(hf_cfg).eval()
    missing, unexpected = hf.load_state_dict(to_hf_gpt2(sd), strict=False)
    assert not unexpected and all(".attn." in k and k.endswith("bias") for k in missing), (missing, unexpected)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0

    def run_hf(model, ids, n, lookup=None):
        extra = {"prompt_lookup_num_tokens": lookup} if lookup else {}
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, use_cache=True, **extra)
        return out[:, ids.shape[1]:]

    def run_ours(model, ids, n, lookup=0):
        return generate(model, ids[0].tolist(), greedy.replace(max_new_tokens=n, prompt_lookup=lookup))

    # (name, seconds, tokens, precision, (tokens per read of the weights, sequences) or None: not
    # known, read bandwidth around the row)
    rows: list[tuple[str, float, int, str, tuple[float, int] | None, float]] = []

    def bench(name, fn, tokens, precision="fp32", step=(1.0, 1)):
        # the first call also warms up allocators and kernels
        (t, out), bw = bandwidth.around(lambda: best_time(fn, args.repeats + 1))
        rows.append((name, t, tokens, precision, step, bw))
        print(f"  {name:<42} {precision:<5} {tokens / t:8.1f} tok/s  ({t:.2f} s)", flush=True)
        return out

    header("generation: scratchllm's engine vs HF transformers and the book, GPT-2 124M shape, random weights")
    print(f"matrix-vector kernel: {gemv.status()}")
    bandwidth = ReadBandwidth()
    # bytes a decode step reads per sequence: every weight but the position table (one row of it), and
    # the KV cache, on average over the generation (keys and values of every layer, prompt + half the new)
    weights_read = ours.num_params() - (ours.pos_emb.weight.numel() if ours.pos_emb is not None else 0)
    kv_read = kv_cache_bytes_per_token(cfg, "fp32") / 4 * (n_prompt + n_new / 2)  # values, as weights_read
    elem = {"fp32": 4, "bf16": 2}

    def bound(precision: str, step: tuple[float, int], bw: float) -> float:
        """tokens/s at read bandwidth `bw` when one decode step makes step[0] tokens (a batch, or a pass
        whose drafts are accepted) and reads the weights once and step[1] sequences' KV caches."""
        per_step, sequences = step
        return per_step * bw * 1e9 / ((weights_read + sequences * kv_read) * elem[precision])

    print(f"read per token at batch 1: {weights_read * 4 / 1e6:.0f} MB of fp32 weights + {kv_read * 4 / 1e6:.0f} MB "
          f"of KV cache on average")
    print(f"batch 1, prompt {n_prompt}, {n_new} new tokens, greedy")

    # the headline pair runs interleaved (ours, HF, ours, HF, ...): this shared machine's memory speed
    # drifts within minutes, and batch-1 decode follows it, so both sides see the same conditions
    pair_times: dict[str, list[float]] = {"scratchllm fp32": [], "HF transformers fp32 (generate, use_cache)": []}
    outs = {}
    pair_bw = [bandwidth.measure()]
    for _ in range(args.pair_rounds + 1):  # the first round warms up and is not counted
        for name, fn in (("scratchllm fp32", lambda: run_ours(ours, prompt, n_new)),
                         ("HF transformers fp32 (generate, use_cache)", lambda: run_hf(hf, prompt, n_new))):
            t0 = time.perf_counter()
            outs[name] = fn()
            pair_times[name].append(time.perf_counter() - t0)
        pair_bw.append(bandwidth.measure())
    for name, times in pair_times.items():
        times = sorted(times[1:])
        rows.append((name, times[0], n_new, "fp32", (1.0, 1), max(pair_bw)))
        print(f"  {name:<42} fp32  {n_new / times[0]:8.1f} tok/s  ({times[0]:.2f} s; median of {len(times)} "
              f"interleaved runs {n_new / times[len(times) // 2]:.1f} tok/s)", flush=True)
    medians = {name: sorted(t[1:])[len(t[1:]) // 2] for name, t in pair_times.items()}
    ours_tokens, hf_tokens = outs["scratchllm fp32"], outs["HF transformers fp32 (generate, use_cache)"]

    # the book's KV-cache GPTModel
    from llms_from_scratch.kv_cache.gpt2 import GPTModel as BookKV
    from llms_from_scratch.kv_cache.utils import KVCache as BookCache

    book_cfg = {"vocab_size": cfg.vocab_size, "context_length": cfg.context_length, "emb_dim": cfg.n_embd,
                "n_heads": cfg.n_head, "n_layers": cfg.n_layer, "drop_rate": 0.0, "qkv_bias": True}
    book_sd = to_book_gpt(sd)
    book_kv = BookKV(book_cfg).eval()
    book_kv.load_state_dict(book_sd, strict=True)
    for blk in book_kv.trf_blocks:  # the installed release slices the mask's columns; use its rows
        blk.att.forward = book_attention_fixed.__get__(blk.att)

    def run_book_kv(ids, n):
        with torch.no_grad():
            cache = BookCache(n_layers=cfg.n_layer)
            book_kv.current_pos = 0
            logits = book_kv(ids, use_cache=True, cache=cache)
            out = []
            for _ in range(n):
                nxt = logits[:, -1].argmax(dim=-1, keepdim=True)
                out.append(nxt)
                logits = book_kv(nxt, use_cache=True, cache=cache)
        return torch.cat(out, dim=1)

    # speculative decoding by prompt lookup (exact for greedy): scratchllm's and HF's own
    passes: list[int] = []
    hook = ours.register_forward_hook(lambda m, a, o: passes.append(1))
    spec_tokens = bench(f"scratchllm fp32, prompt lookup {args.lookup}",
                        lambda: run_ours(ours, prompt, n_new, args.lookup), n_new)
    hook.remove()
    per_run = len(passes) // (args.repeats + 1)
    print(f"    ({per_run} forward passes for {n_new} tokens: {n_new / per_run:.2f} tokens per weight read)")
    rows[-1] = (*rows[-1][:4], (n_new / per_run, 1), rows[-1][5])
    hf_spec = bench(f"HF transformers fp32, prompt lookup {args.lookup}",
                    lambda: run_hf(hf, prompt, n_new, args.lookup), n_new, step=None)
    same_spec = spec_tokens == ours_tokens and hf_spec[0].tolist() == hf_tokens[0].tolist()

    book_tokens = bench("book KV-cache GPTModel fp32", lambda: run_book_kv(prompt, n_new), n_new)
    same_hf = ours_tokens == hf_tokens[0].tolist()
    same_book = ours_tokens == book_tokens[0].tolist()

    if not args.skip_uncached:
        from llms_from_scratch.ch04 import GPTModel as Book
        from llms_from_scratch.ch04 import generate_text_simple

        book = Book(book_cfg).eval()
        book.load_state_dict(book_sd, strict=False)
        k = args.uncached_tokens
        bench(f"book uncached loop fp32 ({k} tokens)",
              lambda: generate_text_simple(book, prompt, k, cfg.context_length), k)

    ours_bf16 = GPT(cfg).eval()
    ours_bf16.load_state_dict(sd)
    ours_bf16 = ours_bf16.to(torch.bfloat16)
    bf16_tokens = bench("scratchllm bf16", lambda: run_ours(ours_bf16, prompt, n_new), n_new, "bf16")
    hf_bf16 = GPT2LMHeadModel(hf_cfg).eval()
    hf_bf16.load_state_dict(hf.state_dict())
    hf_bf16 = hf_bf16.to(torch.bfloat16)
    hf_bf16.generation_config.eos_token_id, hf_bf16.generation_config.pad_token_id = None, 0
    hf_bf16_tokens = bench("HF transformers bf16", lambda: run_hf(hf_bf16, prompt, n_new), n_new,
                           "bf16")[0].tolist()
    # bf16 sums round differently in every implementation; a random-weight model's logits are close
    # together, so greedy paths may part after a while: report where
    agree = next((i for i, (a, c) in enumerate(zip(bf16_tokens, hf_bf16_tokens)) if a != c), n_new)

    b = args.batch
    print(f"batch {b} throughput (all rows {n_new} tokens)")
    batch_out = bench(f"scratchllm fp32 batch {b}",
                      lambda: generate_batch(ours, prompts_b.tolist(), greedy), b * n_new, step=(b, b))
    hf_batch = bench(f"HF transformers fp32 batch {b}", lambda: run_hf(hf, prompts_b, n_new), b * n_new,
                     step=(b, b))
    same_batch = batch_out == hf_batch.tolist()

    print("bound: tok/s if every step read its bytes at the memory's read bandwidth, measured around the row "
          "(a plain sum of 512 MB: a yardstick, so above 100% is possible; the interleaved pair: the highest "
          "between its rounds)")
    print(f"  {'row':<42} {'prec':<5} {'tok/s':>8} {'GB/s':>5} {'bound':>8}  reached")
    for name, t, tokens, precision, step, bw in rows:
        limit = f"{bound(precision, step, bw):8.0f}" if step else f"{'?':>8}"
        reached = f"{tokens / t / bound(precision, step, bw):6.0%}" if step else "  (tokens per pass not known)"
        print(f"  {name:<42} {precision:<5} {tokens / t:8.1f} {bw:5.1f} {limit}  {reached}")

    speed = {name: tokens / t for name, t, tokens, *_ in rows}
    print("ratios (scratchllm / peer, tokens per second):")
    median_ratio = medians["HF transformers fp32 (generate, use_cache)"] / medians["scratchllm fp32"]
    print(f"  fp32 batch 1 vs HF:            {speed['scratchllm fp32'] / speed[rows[1][0]]:.2f}x best, "
          f"{median_ratio:.2f}x median  (target >= 2x)")
    lk = f"prompt lookup {args.lookup}"
    print(f"  fp32 batch 1 with {lk} vs HF:  {speed[f'scratchllm fp32, {lk}'] / speed[rows[1][0]]:.2f}x  "
          f"(the same greedy tokens; how many drafts are accepted depends on the text)")
    print(f"  fp32 batch 1 with {lk} vs HF with {lk}: "
          f"{speed[f'scratchllm fp32, {lk}'] / speed[f'HF transformers fp32, {lk}']:.2f}x")
    print(f"  fp32 batch 1 vs book KV cache: {speed['scratchllm fp32'] / speed['book KV-cache GPTModel fp32']:.2f}x")
    print(f"  bf16 batch 1 vs HF bf16:       {speed['scratchllm bf16'] / speed['HF transformers bf16']:.2f}x")
    print(f"  fp32 batch {b} vs HF batch {b}:     "
          f"{speed[f'scratchllm fp32 batch {b}'] / speed[f'HF transformers fp32 batch {b}']:.2f}x")
    print(f"greedy tokens identical: HF {same_hf}, book KV cache {same_book}, HF batch {b} {same_batch}, "
          f"prompt lookup (ours and HF's) {same_spec}; bf16: first {agree} of {n_new} identical to HF bf16")


if __name__ == "__main__":
    main()
