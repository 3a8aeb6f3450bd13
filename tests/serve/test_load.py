"""Load: 50 concurrent streaming requests against one server. Every request is answered in full or
cleanly refused (503 with Retry-After and OpenAI's error JSON); none is lost or mixed up with another:
each answer equals the same request served alone (greedy, float64: see serve_helpers); the requests
shared decoding steps (continuous batching); the server is alive afterwards."""

import asyncio
import json

import httpx
from serve_helpers import as_float64, running

from scratchllm.config.sample import SampleConfig
from scratchllm.generate.text import complete_batch
from scratchllm.serve.models import load_models

N = 50


def request(i: int) -> dict:
    # distinct prompts and lengths, so that an answer delivered to the wrong request would show
    return {"model": "tiny", "prompt": f"request {i}: " + "abcdefgh"[: i % 8], "max_tokens": 8 + i % 13,
            "temperature": 0, "stream": True}


async def stream(client: httpx.AsyncClient, url: str, body: dict) -> tuple[int, str, dict]:
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, r.json(), dict(r.headers)
        text, events = [], []
        async for line in r.aiter_lines():
            if line:
                events.append(line)
        assert events[-1] == "data: [DONE]"
        for e in events[:-1]:
            chunk = json.loads(e.removeprefix("data: "))
            assert chunk["object"] == "text_completion" and chunk["model"] == "tiny"
            text.append(chunk["choices"][0]["text"])
        return 200, "".join(text), {"finish_reason": chunk["choices"][0]["finish_reason"]}


def test_fifty_concurrent_streams_all_answered_or_cleanly_refused(model_dirs):
    models = as_float64(load_models([f"tiny={model_dirs['base']}"]))
    ref = as_float64(load_models([f"tiny={model_dirs['base']}"]))["tiny"]
    bodies = [request(i) for i in range(N)]
    expected = [complete_batch(ref.model, ref.tokenizer, [b["prompt"]],
                               SampleConfig(temperature=0, max_new_tokens=b["max_tokens"]), eos_id=ref.eos_ids)[0]
                for b in bodies]
    with running(models, max_batch=8, max_queue=20) as (url, app):
        async def all_at_once():
            limits = httpx.Limits(max_connections=N)
            async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                return await asyncio.gather(*(stream(client, url, b) for b in bodies))

        results = asyncio.run(all_at_once())
        answered = [i for i, (status, _, _) in enumerate(results) if status == 200]
        refused = [i for i, (status, _, _) in enumerate(results) if status == 503]
        assert len(answered) + len(refused) == N  # nothing lost, no other outcome
        assert len(answered) >= 8 + 20  # a full batch and a full queue were served
        for i in answered:
            _, text, info = results[i]
            assert text == expected[i].text, i
            assert info["finish_reason"] == ("length" if expected[i].finish_reason == "length" else "stop")
        for i in refused:
            _, body, headers = results[i]
            assert body["error"]["code"] == "server_busy" and headers["retry-after"] == "1"
        # the answered requests shared decoding steps: far fewer steps than their tokens
        tokens = sum(bodies[i]["max_tokens"] for i in answered)
        assert app.state.scheduler.steps < tokens / 3
        # the server is alive and idle
        assert httpx.get(url + "/health").json()["status"] == "ok"
        assert app.state.scheduler.rows_in_use("tiny") == 0
        again = httpx.post(url + "/v1/completions", json={**bodies[0], "stream": False}).json()
        assert again["choices"][0]["text"] == expected[0].text
