"""Bad requests get OpenAI's error JSON with the right status, and the next request is served; a busy
server answers 503 with Retry-After, a slow request 504, and a client that leaves frees its rows."""

import json
import time

import httpx
import openai
import pytest
from serve_helpers import running

from scratchllm.serve.models import load_models

GOOD = {"model": "tiny", "prompt": "Hello", "max_tokens": 3, "temperature": 0}


@pytest.fixture(scope="module")
def server(model_dirs):
    models = load_models([f"tiny={model_dirs['base']}"])
    with running(models, max_prompt_tokens=100, max_output_tokens=64) as (url, app):
        yield url, app


def served_after(url):
    r = httpx.post(url + "/v1/completions", json=GOOD)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    return True


def error(r, status):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


BAD = [  # (route, body, status, param, words in the message)
    ("/v1/completions", b"{not json", 400, None, "not valid JSON"),
    ("/v1/completions", b"[1, 2]", 400, None, "JSON object"),
    ("/v1/completions", b"\xff\xfe", 400, None, "not valid JSON"),
    ("/v1/completions", {"prompt": "a"}, 400, "model", "'model'"),
    ("/v1/completions", {"model": "tiny"}, 400, "prompt", "'prompt'"),
    ("/v1/chat/completions", {"model": "tiny"}, 400, "messages", "'messages'"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages", "non-empty"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400,
     "messages[0].role", "robot"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400,
     "messages[0].content", "string"),
    ("/v1/completions", {**GOOD, "max_tokens": -5}, 400, "max_tokens", "at least 1"),
    ("/v1/completions", {**GOOD, "max_tokens": 0}, 400, "max_tokens", "at least 1"),
    ("/v1/completions", {**GOOD, "max_tokens": 10**12}, 400, "max_tokens", "max_output_tokens"),
    ("/v1/completions", {**GOOD, "max_tokens": 60, "prompt": "x" * 90}, 400, "max_tokens", "maximum context length"),
    ("/v1/completions", {**GOOD, "prompt": "x" * 101}, 400, "prompt", "max_prompt_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x" * 500}]}, 400,
     "messages", "max_prompt_tokens"),
    ("/v1/completions", {**GOOD, "max_tokens": "ten"}, 400, "max_tokens", "integer"),
    ("/v1/completions", {**GOOD, "temperature": "hot"}, 400, "temperature", "number"),
    ("/v1/completions", {**GOOD, "temperature": 3}, 400, "temperature", "[0.0, 2.0]"),
    ("/v1/completions", {**GOOD, "top_p": 0}, 400, "top_p", "(0.0, 1.0]"),
    ("/v1/completions", {**GOOD, "n": 0}, 400, "n", "minimum"),
    ("/v1/completions", {**GOOD, "n": 99}, 400, "n", "maximum"),
    ("/v1/completions", {**GOOD, "stop": 5}, 400, "stop", "string"),
    ("/v1/completions", {**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "at most 4"),
    ("/v1/completions", {**GOOD, "logprobs": 9}, 400, "logprobs", "maximum"),
    ("/v1/completions", {**GOOD, "stream": "yes"}, 400, "stream", "true or false"),
    ("/v1/completions", {**GOOD, "frequency_penalty": 0.5}, 400, "frequency_penalty", "not supported"),
    ("/v1/completions", {**GOOD, "echo": True}, 400, "echo", "not supported"),
    ("/v1/completions", {**GOOD, "temprature": 0.5}, 400, "temprature", "unrecognized"),
    ("/v1/completions", {**GOOD, "prompt": [1, 99999]}, 400, None, "vocabulary"),
    ("/v1/completions", {**GOOD, "prompt": []}, 400, "prompt", "'prompt' must be"),
    ("/v1/completions", {**GOOD, "model": "gpt-4"}, 404, "model", "does not exist"),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "model",
     "does not exist"),
]


@pytest.mark.parametrize("route, body, status, param, words", BAD, ids=[f"{i}-{b[3]}" for i, b in enumerate(BAD)])
def test_bad_request_gets_the_right_error_and_the_next_is_served(server, route, body, status, param, words):
    url, _ = server
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    e = error(httpx.post(url + route, content=raw, headers={"content-type": "application/json"}), status)
    assert words in e["message"] and (param is None or e["param"] == param)
    assert e["type"] == "invalid_request_error"
    assert served_after(url)


def test_unknown_routes_and_models_are_404_json(server):
    url, _ = server
    assert error(httpx.get(url + "/v1/nothing"), 404)["code"] == "not_found"
    assert error(httpx.get(url + "/v1/models/gpt-4"), 404)["code"] == "model_not_found"
    assert error(httpx.get(url + "/v1/completions"), 405)["code"] == "method_not_allowed"
    assert served_after(url)


def test_the_openai_client_sees_the_errors(server):
    url, _ = server
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="a")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="a", max_tokens=10**6)
    assert e.value.body["param"] == "max_tokens"
    assert client.completions.create(model="tiny", prompt="a", max_tokens=2, temperature=0).usage.completion_tokens == 2


def slow(model, seconds):
    """Make each forward pass of `model` take `seconds` longer (a stand-in for a big model)."""
    forward = model.forward

    def slowed(*args, **kwargs):
        time.sleep(seconds)
        return forward(*args, **kwargs)

    model.forward = slowed


def test_full_queue_is_503_with_retry_after_and_a_left_client_frees_its_row(model_dirs):
    models = load_models([f"tiny={model_dirs['base']}"])
    slow(models["tiny"].model, 0.01)
    with running(models, max_batch=1, max_queue=0, retry_after=2) as (url, app):
        scheduler = app.state.scheduler
        long = {**GOOD, "max_tokens": 100, "stream": True}
        with httpx.Client(timeout=30) as client, client.stream("POST", url + "/v1/completions", json=long) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # (kept: a dropped iterator closes the response)
            next(lines)  # generating: the only row is taken
            busy = httpx.post(url + "/v1/completions", json=GOOD)
            e = error(busy, 503)
            assert busy.headers["retry-after"] == "2" and e["code"] == "server_busy"
            steps = scheduler.steps
        # the client left after its first tokens: its row is freed long before its 100 tokens
        deadline = time.monotonic() + 10
        while scheduler.rows_in_use("tiny") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.rows_in_use("tiny") == 0 and scheduler.steps < steps + 50
        assert served_after(url)
        # a non-streaming request whose client gives up is cancelled too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/completions", json={**GOOD, "max_tokens": 100}, timeout=0.2)
        deadline = time.monotonic() + 10
        while scheduler.rows_in_use("tiny") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.rows_in_use("tiny") == 0
        assert served_after(url)


def test_a_request_past_its_timeout_is_504_and_frees_its_row(model_dirs):
    models = load_models([f"tiny={model_dirs['base']}"])
    slow(models["tiny"].model, 0.01)
    with running(models, request_timeout=0.3) as (url, app):
        e = error(httpx.post(url + "/v1/completions", json={**GOOD, "max_tokens": 100}), 504)
        assert "request_timeout" in e["message"]
        with httpx.stream("POST", url + "/v1/completions", json={**GOOD, "max_tokens": 100, "stream": True}) as r:
            events = [line for line in r.iter_lines() if line]
        assert "request_timeout" in json.loads(events[-1].removeprefix("data: "))["error"]["message"]
        assert app.state.scheduler.rows_in_use("tiny") == 0
        assert served_after(url)


def test_a_failing_step_fails_its_requests_and_the_server_goes_on(model_dirs):
    models = load_models([f"tiny={model_dirs['base']}"])
    model = models["tiny"].model
    forward = model.forward
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated failure")
        return forward(*args, **kwargs)

    model.forward = flaky
    with running(models) as (url, _):
        e = error(httpx.post(url + "/v1/completions", json={**GOOD, "max_tokens": 10}), 500)
        assert "simulated failure" in e["message"] and e["type"] == "server_error"
        assert served_after(url)
