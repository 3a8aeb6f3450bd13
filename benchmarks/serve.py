"""Serving: total generated tokens/s and latency for 1, 4 and 16 concurrent clients of one server.

A GPT-2 124M-shaped model (random weights, fp32, GPT-2's tokenizer from the shared data folder) is
served by `scratchllm.serve` (FastAPI + uvicorn on 127.0.0.1, continuous batching, max_batch 16) in
this process; the clients (httpx, asyncio, the same process: they only wait on sockets) each send
`--requests` streamed greedy completions one after another (a prompt of about 16 tokens,
max_tokens `--tokens`). Per request: the time to the first token (TTFT, from sending the request to
the first text chunk) and the time per further token; per concurrency: the total generated tokens
(`usage.completion_tokens`) divided by the wall time from the first request sent to the last answer.
One warm-up request first (the decoder packs the weights on first use). Torch's default threads.

Continuous batching shares each decoding step between the clients, so the total throughput should
grow with them. Target: 16 clients get >= 3x the total tokens/s of one client, with p50 TTFT < 1 s.

    python benchmarks/serve.py [--tokens 64] [--requests 2] [--no-record]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_record_flag, header, recorded, shared_data_dir  # noqa: E402

CONCURRENCY = (1, 4, 16)
PROMPTS = ["The history of the city begins with a small village on the river, where",
           "In a distant galaxy, the crew of the starship received a message that",
           "Once upon a time, in a kingdom by the sea, there lived a young",
           "The recipe calls for two cups of flour, one egg, and a pinch of"]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def one_request(client, url: str, prompt: str, tokens: int) -> dict:
    body = {"model": "gpt2", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = last = None
    used = 0
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["text"]:
                now = time.perf_counter()
                first = first if first is not None else now
                last = now
    per_token = (last - first) / (used - 1) if used > 1 and first is not None else float("nan")
    return {"ttft": (first if first is not None else last) - t0, "per_token": per_token, "tokens": used}


async def clients(url: str, n: int, requests: int, tokens: int) -> tuple[float, list[dict]]:
    import httpx

    async def client_loop(c: int, client) -> list[dict]:
        return [await one_request(client, url, PROMPTS[(c + i) % len(PROMPTS)], tokens) for i in range(requests)]

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n + 1)) as client:
        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop(c, client) for c in range(n)))
        wall = time.perf_counter() - t0
    return wall, [r for rs in per_client for r in rs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens of each request (default 64)")
    ap.add_argument("--requests", type=int, default=2, help="requests each client sends in turn (default 2)")
    add_record_flag(ap)
    args = ap.parse_args()
    with recorded("serve", not args.no_record):
        header("serve: continuous batching, total tokens/s and latency for 1, 4, 16 concurrent clients")
        import torch
        import uvicorn

        from scratchllm.config.model import ModelConfig
        from scratchllm.config.serve import ServeConfig
        from scratchllm.data.sources import gpt2_tokenizer
        from scratchllm.model import GPT
        from scratchllm.serve.app import create_app
        from scratchllm.serve.models import ServedModel

        tokenizer = gpt2_tokenizer(shared_data_dir(), offline=True)
        torch.manual_seed(0)
        model = GPT(ModelConfig.preset("gpt2-small")).eval()
        served = ServedModel("gpt2", "random weights", model, tokenizer, {"generation": {}})
        config = ServeConfig(port=0, max_batch=16, max_queue=64)
        server = uvicorn.Server(uvicorn.Config(create_app(config, {"gpt2": served}), host="127.0.0.1", port=0,
                                               log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        n_prompt = statistics.mean(len(tokenizer.encode(p)) for p in PROMPTS)
        print(f"model: GPT-2 124M shape, random weights, fp32; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; prompts of {n_prompt:.0f} tokens, max_tokens {args.tokens}, "
              f"greedy, streamed; {args.requests} requests per client, one after another")
        asyncio.run(clients(url, 1, 1, 8))  # warm-up
        print(f"{'clients':>8}{'precision':>10}{'requests':>9}{'tokens':>8}{'wall s':>8}{'tokens/s':>10}"
              f"{'TTFT p50':>10}{'p90':>7}{'ms/token p50':>14}{'p90':>7}")
        rates = {}
        ttft50 = {}
        for n in CONCURRENCY:
            wall, results = asyncio.run(clients(url, n, args.requests, args.tokens))
            tokens = sum(r["tokens"] for r in results)
            rates[n] = tokens / wall
            ttfts = [r["ttft"] for r in results]
            per = [r["per_token"] * 1e3 for r in results if r["per_token"] == r["per_token"]]
            ttft50[n] = percentile(ttfts, 0.5)
            print(f"{n:>8}{'fp32':>10}{len(results):>9}{tokens:>8}{wall:>8.1f}{rates[n]:>10.1f}"
                  f"{ttft50[n]:>9.2f}s{percentile(ttfts, 0.9):>6.2f}s{percentile(per, 0.5):>14.1f}"
                  f"{percentile(per, 0.9):>7.1f}")
        server.should_exit = True
        thread.join()
        ratio = rates[16] / rates[1]
        print(f"16 clients / 1 client: {ratio:.2f}x total tokens/s (target >= 3x: {'met' if ratio >= 3 else 'MISSED'});"
              f" p50 TTFT at 16 clients {ttft50[16]:.2f} s (target < 1 s: "
              f"{'met' if ttft50[16] < 1 else 'MISSED'})")


if __name__ == "__main__":
    main()
