"""The OpenAI-compatible HTTP server: FastAPI routes over the scheduler.

`create_app(config, models)` builds the app from a `ServeConfig` and the loaded models
(`serve.models.load_models`); `scratchllm serve` runs it with uvicorn. Routes:

    GET  /health                  {"status": "ok", ...}; never needs the key
    GET  /v1/models               the models by name (OpenAI's list; plus kind, template, context length)
    GET  /v1/models/{name}        one of them
    POST /v1/completions          text after a prompt (OpenAI's completions: n, stream, stop, seed,
                                  logprobs, usage, finish_reason stop/length)
    POST /v1/chat/completions     an assistant message after messages, through the model's template
                                  (`ServedModel.chat_prompt`)
    POST /v1/classifications      labels of texts, for classifier models: {"model", "input": str | [str]}
                                  -> {"data": [{"index", "label", "probability", "probabilities"}]}
    GET  /                        the web page (chat, ratings, two answers to pick from; `serve.feedback`)
    POST /feedback/pair, /rating  the page's judgments, appended to config.feedback (`serve.feedback`)

With an API key (config.api_key) every route but those in `app.state.open_paths` (/health) needs
`Authorization: Bearer KEY`. Errors are OpenAI's JSON (`serve.protocol.APIError`), for anything:
a bad body, an unknown route, a busy server (503 with Retry-After), a timeout (504), a bug (500);
the server never stops on a request. Streams are server-sent events ending with `data: [DONE]`; a
client that disconnects (stream or not) cancels its job, so its rows leave the batch.

Limits, checked before a request is queued: a prompt longer than max_prompt_tokens (default the
context), max_tokens beyond max_output_tokens, and prompt + max_tokens beyond the model's context
(OpenAI's `context_length_exceeded`) are 400s. A chat request without max_tokens gets the rest of the
context, at most max_output_tokens; a completion gets default_completion_tokens (OpenAI's 16).

To add routes (a web page, feedback), build the app and add them: `app = create_app(...)`, then
`@app.get("/")` or `app.include_router(...)`; `app.state` holds config, models and scheduler, and a
path added to `app.state.open_paths` needs no key.

Not here: reading requests and writing responses (`serve.protocol`), batching (`serve.scheduler`).
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from scratchllm.config.sample import SampleConfig
from scratchllm.config.serve import ServeConfig
from scratchllm.generate.text import prompt_ids
from scratchllm.serve import protocol as api
from scratchllm.serve.feedback import add_feedback_routes, mount_page
from scratchllm.serve.models import ServedModel
from scratchllm.serve.protocol import APIError
from scratchllm.serve.scheduler import Answer, Busy, Event, Job, Scheduler

# How often a request that waits for its answer checks whether its client is still there (seconds).
DISCONNECT_POLL = 0.5


def create_app(config: ServeConfig, models: dict[str, ServedModel]) -> FastAPI:
    """The server's app: routes, key check and error handlers; the scheduler runs while the app does."""
    scheduler = Scheduler(models, config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="scratchllm", lifespan=lifespan, dependencies=[Depends(check_key)],
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.config, app.state.models, app.state.scheduler = config, models, scheduler
    app.state.open_paths = {"/health"}
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, server_error)

    app.get("/health", include_in_schema=False)(health)
    app.get("/v1/models")(list_models)
    app.get("/v1/models/{name:path}")(get_model)
    app.post("/v1/completions")(completions)
    app.post("/v1/chat/completions")(chat_completions)
    app.post("/v1/classifications")(classifications)
    # the web page at / and its feedback routes (config.feedback: the preference file)
    add_feedback_routes(app, config.feedback, lambda name, messages: models[name].chat_prompt(messages)[0])
    mount_page(app)
    return app


# --- errors and the key ----------------------------------------------------------------------------
async def api_error(request: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    message = f"{request.method} {request.url.path}: {e.detail}"
    return await api_error(request, APIError(message, status=e.status_code, code=kind))


async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    return await api_error(request, APIError(f"invalid request: {e.errors()}"))


async def server_error(request: Request, e: Exception) -> JSONResponse:
    return await api_error(request, APIError(f"the server failed on this request: {type(e).__name__}: {e}",
                                             status=500, type="server_error"))


async def check_key(request: Request) -> None:
    """`Authorization: Bearer KEY` on every route but the open ones, when the server has a key."""
    key = request.app.state.config.api_key
    if key is None or request.url.path in request.app.state.open_paths:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        what = "no API key was given" if not given else "the API key is wrong"
        raise APIError(f"{what}; send the server's key as `Authorization: Bearer KEY`", status=401,
                       code="invalid_api_key")


# --- models ----------------------------------------------------------------------------------------
async def health(request: Request) -> dict[str, Any]:
    return {"status": "ok", "models": list(request.app.state.models)}


async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [m.card() for m in request.app.state.models.values()]}


async def get_model(name: str, request: Request) -> dict[str, Any]:
    return served(request, name).card()


def served(request: Request, name: str, route: str | None = None) -> ServedModel:
    """The model `name`, or a 404 (or a 400 when it cannot answer `route`)."""
    models = request.app.state.models
    if name not in models:
        raise APIError(f"the model {name!r} does not exist; this server has {', '.join(models)}", status=404,
                       param="model", code="model_not_found")
    m = models[name]
    if route == "classify" and not m.is_classifier:
        raise APIError(f"{name} is not a classifier; it generates (use /v1/completions or /v1/chat/completions)",
                       param="model")
    if route == "generate" and m.is_classifier:
        raise APIError(f"{name} is a classifier; use /v1/classifications", param="model")
    return m


# --- generation ------------------------------------------------------------------------------------
def encode(m: ServedModel, prompt: str | list[int]) -> list[int]:
    ids = prompt_ids(m.tokenizer, prompt)
    vocab = m.model.config.vocab_size
    if any(t >= vocab for t in ids):
        raise APIError(f"the prompt holds a token id >= the model's vocabulary size ({vocab})", param="prompt")
    return ids


def output_tokens(config: ServeConfig, m: ServedModel, req: api.Sampling, prompts: list[list[int]],
                  default: int | None) -> int:
    """max_tokens for the request after the limits (module doc); 400s name the limit."""
    ctx = m.context_length
    longest = max(len(p) for p in prompts)
    limit = min(config.max_prompt_tokens or ctx, ctx)
    if longest > limit:
        raise APIError(f"the prompt is {longest} tokens long; this server takes at most {limit} "
                       f"(max_prompt_tokens)", param="messages" if default is None else "prompt",
                       code="context_length_exceeded")
    if req.max_tokens is not None and req.max_tokens > config.max_output_tokens:
        raise APIError(f"max_tokens is {req.max_tokens}; this server gives at most {config.max_output_tokens} "
                       f"(max_output_tokens)", param="max_tokens")
    wanted = req.max_tokens or (default if default is not None else min(config.max_output_tokens, ctx - longest))
    if longest + wanted > ctx:
        raise APIError(f"this model's maximum context length is {ctx} tokens; however, you requested "
                       f"{longest + wanted} tokens ({longest} in the prompt, {wanted} in the completion). Please "
                       f"reduce the prompt or max_tokens", param="max_tokens", code="context_length_exceeded")
    return wanted


def make_job(request: Request, m: ServedModel, req: api.Sampling, prompts: list[list[int]], max_tokens: int,
             stops: tuple[str, ...] = ()) -> Job:
    """The job of a request: req.n answers per prompt, answer i seeded with seed + i."""
    config: ServeConfig = request.app.state.config
    answers = []
    for p, ids in enumerate(prompts):
        for j in range(req.n):
            i = p * req.n + j
            seed = None if req.seed is None else (req.seed + i) % 2**63
            sample = SampleConfig(max_new_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                                  stop=tuple(dict.fromkeys(req.stop + stops)), seed=seed)
            answers.append(Answer(i, ids, sample))
    return Job(m, answers, logprobs=req.logprobs, timeout=config.request_timeout)


def submit(request: Request, job: Job) -> None:
    config: ServeConfig = request.app.state.config
    try:
        request.app.state.scheduler.submit(job)
    except Busy as e:
        raise APIError(str(e), status=503, type="server_error", code="server_busy",
                       headers={"Retry-After": str(config.retry_after)}) from None


def job_error(e: Exception) -> APIError:
    if isinstance(e, TimeoutError):
        return APIError(str(e), status=504, type="timeout", code="timeout")
    return APIError(str(e), status=500, type="server_error")


async def gather(request: Request, job: Job) -> list[dict[str, Any]]:
    """Wait for every answer of `job` (cancelled if the client goes away); per answer its text, reason and
    logprob records."""
    out = [{"text": [], "reason": None, "logprobs": []} for _ in job.answers]
    try:
        while True:
            try:
                ev: Event = await asyncio.wait_for(job.events.get(), DISCONNECT_POLL)
            except asyncio.TimeoutError:
                if await request.is_disconnected():  # nobody will read the answer
                    raise APIError("the client went away", status=499, code="client_closed_request") from None
                continue
            if ev.kind == "text":
                out[ev.index]["text"].append(ev.text)
                out[ev.index]["logprobs"] += ev.logprobs
            elif ev.kind == "finish":
                out[ev.index]["reason"] = ev.reason
            elif ev.kind == "error":
                raise job_error(ev.error)
            elif ev.kind == "end":
                return [{**o, "text": "".join(o["text"])} for o in out]
    finally:
        if not job.finished:
            job.cancel()
            request.app.state.scheduler.wake()


async def events(request: Request, job: Job) -> AsyncIterator[Event]:
    """The job's events as they come; the job is cancelled when the stream ends early (a disconnect)."""
    try:
        while True:
            ev = await job.events.get()
            yield ev
            if ev.kind in ("end", "error"):
                return
    finally:
        if not job.finished:
            job.cancel()
            request.app.state.scheduler.wake()


def token_text(m: ServedModel, token: int) -> str:
    return m.tokenizer.decode_bytes([token]).decode("utf-8", errors="replace")


def completion_logprobs(m: ServedModel, records: list, offset: int) -> dict[str, Any]:
    """OpenAI's completions logprobs: tokens, their log-probabilities, the top ones, text offsets."""
    tokens = [token_text(m, t) for t, _, _ in records]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in records],
            "top_logprobs": [{token_text(m, i): v for i, v in top} for _, _, top in records],
            "text_offset": offsets}


def chat_logprobs(m: ServedModel, records: list) -> dict[str, Any]:
    """OpenAI's chat logprobs: per token its text, bytes, log-probability and the top ones."""
    def entry(t: int, lp: float) -> dict[str, Any]:
        b = m.tokenizer.decode_bytes([t])
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in top]} for t, lp, top in records]}


async def completions(request: Request):
    config: ServeConfig = request.app.state.config
    req = api.parse_completion(api.parse_json(await request.body()), config.answers_limit)
    m = served(request, req.model, "generate")
    prompts = [encode(m, p) for p in req.prompts]
    max_tokens = output_tokens(config, m, req, prompts, config.default_completion_tokens)
    job = make_job(request, m, req, prompts, max_tokens)
    submit(request, job)
    rid, created = f"cmpl-{job.id}", int(time.time())
    prompt_tokens = sum(len(p) for p in prompts)

    def logprobs(records, offset):
        return completion_logprobs(m, records, offset) if req.logprobs is not None else None

    if not req.stream:
        done = await gather(request, job)
        choices = [api.completion_choice(i, d["text"], d["reason"], logprobs(d["logprobs"], 0))
                   for i, d in enumerate(done)]
        use = api.usage(prompt_tokens, sum(a.tokens for a in job.answers))
        return api.completion_response(rid, created, m.name, choices, use)

    async def stream() -> AsyncIterator[bytes]:
        offsets = [0] * len(job.answers)
        async for ev in events(request, job):
            if ev.kind == "text":
                choice = api.completion_choice(ev.index, ev.text, None, logprobs(ev.logprobs, offsets[ev.index]))
                offsets[ev.index] += len(ev.text)
                yield api.sse(api.completion_response(rid, created, m.name, [choice], None))
            elif ev.kind == "finish":
                choice = api.completion_choice(ev.index, "", ev.reason, None)
                yield api.sse(api.completion_response(rid, created, m.name, [choice], None))
            elif ev.kind == "error":
                yield api.sse(job_error(ev.error).body())
                return
            elif ev.kind == "end":
                if req.include_usage:
                    use = api.usage(prompt_tokens, sum(a.tokens for a in job.answers))
                    yield api.sse(api.completion_response(rid, created, m.name, [], use))
                yield api.sse("[DONE]")

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def chat_completions(request: Request):
    config: ServeConfig = request.app.state.config
    req = api.parse_chat(api.parse_json(await request.body()), config.answers_limit)
    m = served(request, req.model, "generate")
    text, stops = m.chat_prompt(req.messages)
    prompt = encode(m, text)
    max_tokens = output_tokens(config, m, req, [prompt], None)
    job = make_job(request, m, req, [prompt], max_tokens, stops)
    submit(request, job)
    rid, created = f"chatcmpl-{job.id}", int(time.time())

    def logprobs(records):
        return chat_logprobs(m, records) if req.logprobs is not None else None

    if not req.stream:
        done = await gather(request, job)
        choices = [api.chat_choice(i, d["text"], d["reason"], logprobs(d["logprobs"])) for i, d in enumerate(done)]
        return api.chat_response(rid, created, m.name, choices, api.usage(len(prompt), sum(a.tokens for a in
                                                                                            job.answers)))

    def chunk(index: int, delta: dict[str, Any], reason: str | None = None, records=None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": logprobs(records) if records else None,
                  "finish_reason": reason}
        return api.sse(api.chat_chunk(rid, created, m.name, [choice]))

    async def stream() -> AsyncIterator[bytes]:
        for a in job.answers:
            yield chunk(a.index, {"role": "assistant", "content": ""})
        async for ev in events(request, job):
            if ev.kind == "text":
                yield chunk(ev.index, {"content": ev.text}, records=ev.logprobs)
            elif ev.kind == "finish":
                yield chunk(ev.index, {}, ev.reason)
            elif ev.kind == "error":
                yield api.sse(job_error(ev.error).body())
                return
            elif ev.kind == "end":
                if req.include_usage:
                    use = api.usage(len(prompt), sum(a.tokens for a in job.answers))
                    yield api.sse(api.chat_chunk(rid, created, m.name, [], use))
                yield api.sse("[DONE]")

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# --- classification --------------------------------------------------------------------------------
async def classifications(request: Request):
    from scratchllm.finetune.classify import predict

    config: ServeConfig = request.app.state.config
    req = api.parse_classification(api.parse_json(await request.body()), config.max_classify_inputs)
    m = served(request, req.model, "classify")
    future = request.app.state.scheduler.call(lambda: predict(m.model, m.tokenizer, m.task, req.inputs,
                                                              source=m.name))
    probs, truncated = await asyncio.wrap_future(future)
    labels = m.task["labels"]
    data = []
    for i, p in enumerate(probs):
        k = int(p.argmax())
        data.append({"index": i, "label": labels[k], "probability": float(p[k]),
                     "probabilities": {name: float(v) for name, v in zip(labels, p)}})
    n_tokens = sum(len(m.tokenizer.encode(t)) for t in req.inputs)
    return {"object": "list", "id": f"clf-{uuid.uuid4().hex[:24]}", "model": m.name, "data": data,
            "truncated": truncated, "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
