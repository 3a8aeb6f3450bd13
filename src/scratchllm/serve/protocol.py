"""The OpenAI API's shapes: requests read and checked field by field, responses and errors written.

Requests are JSON bodies read by `parse_completion`, `parse_chat` and `parse_classification` into
plain dataclasses; anything wrong (not JSON, a missing or unknown field, a value of the wrong type or
out of range) raises `APIError`, which the app turns into OpenAI's error JSON

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": null}}

with its HTTP status (400 bad request, 401 bad key, 404 unknown model or route, 503 busy, 504 too
slow). Fields are OpenAI's (https://platform.openai.com/docs/api-reference/completions and
.../chat); those this server does not implement (penalties, logit_bias, tools, echo, suffix) are
refused when set to anything but their neutral value, rather than silently ignored. Responses are
built by the `*_response` and `*_chunk` functions, the shapes OpenAI's clients parse.

Not here: tokens and limits that depend on a model (`serve.app`), decoding (`serve.scheduler`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

# OpenAI's limits on a request's own fields.
MAX_STOPS = 4  # stop strings per request
MAX_LOGPROBS = 5  # /v1/completions: top log-probabilities per token
MAX_TOP_LOGPROBS = 20  # /v1/chat/completions: top_logprobs
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class APIError(Exception):
    """An error answered in OpenAI's JSON shape with an HTTP status (400 unless said)."""

    def __init__(self, message: str, *, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says why not."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(f"the request body is not valid JSON ({e}); send a JSON object") from None
    if not isinstance(body, dict):
        raise APIError(f"the request body is a JSON {type(body).__name__}; send a JSON object")
    return body


# --- field readers ---------------------------------------------------------------------------------
class _Fields:
    """Reads a request's fields one by one; at the end, any field not read is an unknown one."""

    def __init__(self, body: dict[str, Any], known_ignored: tuple[str, ...] = ()) -> None:
        self.body, self.read = body, set(known_ignored)

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        value = self.body.get(name, default)
        return default if value is None else value

    def required(self, name: str) -> Any:
        self.read.add(name)
        if self.body.get(name) is None:
            raise APIError(f"you must provide a {name!r} field", param=name, code="missing_required_parameter")
        return self.body[name]

    def string(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise APIError(f"{name!r} must be a string, got {_kind(value)}", param=name)
        return value

    def integer(self, name: str, default: int | None, low: int | None = None, high: int | None = None) -> int | None:
        value = self.get(name, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise APIError(f"{name!r} must be an integer, got {_kind(value)}", param=name)
        value = int(value)
        if low is not None and value < low:
            raise APIError(f"{value} is less than the minimum of {low} - {name!r}", param=name)
        if high is not None and value > high:
            raise APIError(f"{value} is greater than the maximum of {high} - {name!r}", param=name)
        return value

    def number(self, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise APIError(f"{name!r} must be a number, got {_kind(value)}", param=name)
        if value < low or (low_open and value == low) or value > high:
            bound = f"in ({low}, {high}]" if low_open else f"in [{low}, {high}]"
            raise APIError(f"{name!r} must be {bound}, got {value}", param=name)
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name, default)
        if not isinstance(value, bool):
            raise APIError(f"{name!r} must be true or false, got {_kind(value)}", param=name)
        return value

    def neutral(self, name: str, neutral: Any, what: str) -> None:
        """A field this server does not implement: accepted only at its neutral value."""
        value = self.get(name)
        if value is not None and value != neutral:
            raise APIError(f"{name!r} is not supported by this server ({what}); leave it out", param=name,
                           code="unsupported_parameter")

    def finish(self) -> None:
        unknown = sorted(set(self.body) - self.read)
        if unknown:
            raise APIError(f"unrecognized request argument supplied: {', '.join(unknown)}", param=unknown[0])


def _kind(value: Any) -> str:
    return "null" if value is None else {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                                         list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


# --- requests --------------------------------------------------------------------------------------
@dataclass
class Sampling:
    """What both generation routes share."""

    model: str
    max_tokens: int | None  # None: the route's default
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None  # top log-probabilities per token (0: the drawn token's only); None: off


@dataclass
class CompletionRequest(Sampling):
    prompts: list[str | list[int]] = field(default_factory=list)  # text or token ids, one per prompt


@dataclass
class ChatRequest(Sampling):
    messages: list[dict[str, str]] = field(default_factory=list)  # {"role", "content"}, roles as templates


@dataclass
class ClassificationRequest:
    model: str
    inputs: list[str]


def _sampling(f: _Fields, max_n: int, max_tokens_names: tuple[str, ...]) -> dict[str, Any]:
    model = f.string("model", f.required("model"))
    max_tokens = None
    for name in max_tokens_names:  # chat's max_completion_tokens is the newer name of max_tokens
        given = f.integer(name, None)
        if given is not None:
            if given < 1:
                raise APIError(f"{name!r} must be at least 1, got {given}", param=name)
            max_tokens = given
    stop = f.get("stop", [])
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise APIError(f"'stop' must be a string or an array of strings, got {_kind(stop)}", param="stop")
    if len(stop) > MAX_STOPS:
        raise APIError(f"'stop' holds {len(stop)} strings; give at most {MAX_STOPS}", param="stop")
    if any(s == "" for s in stop):
        raise APIError("'stop' holds an empty string; give each stop string at least one character", param="stop")
    options = f.get("stream_options", {})
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise APIError("'stream_options' must be an object with at most 'include_usage'", param="stream_options")
    stream = f.boolean("stream", False)
    if options and not stream:
        raise APIError("'stream_options' is only allowed when 'stream' is true", param="stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise APIError("'stream_options.include_usage' must be true or false", param="stream_options")
    for name, what in (("presence_penalty", "no penalties"), ("frequency_penalty", "no penalties")):
        f.neutral(name, 0, what)
    f.neutral("logit_bias", {}, "no logit bias")
    return dict(model=model, max_tokens=max_tokens, temperature=f.number("temperature", 1.0, 0.0, 2.0),
                top_p=f.number("top_p", 1.0, 0.0, 1.0, low_open=True), n=f.integer("n", 1, 1, max_n),
                stream=stream, include_usage=include, stop=tuple(stop),
                seed=f.integer("seed", None, -(2**63), 2**64 - 1))


def parse_completion(body: dict[str, Any], max_n: int) -> CompletionRequest:
    """A /v1/completions request (prompt: a string, an array of strings, an array of token ids or of
    such arrays)."""
    f = _Fields(body, known_ignored=("user",))
    common = _sampling(f, max_n, ("max_tokens",))
    prompt = f.required("prompt")
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_ids(p) for p in prompt):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) and p and _all_ids(p) for p in prompt):
        prompts = [list(p) for p in prompt]
    else:
        raise APIError("'prompt' must be a string, an array of strings, an array of token ids or an array of "
                       "such arrays (none empty)", param="prompt")
    logprobs = f.integer("logprobs", None, 0, MAX_LOGPROBS)
    f.neutral("echo", False, "the prompt is not echoed")
    f.neutral("suffix", "", "no insertion")
    best_of = f.integer("best_of", None)
    if best_of is not None and best_of != common["n"]:
        raise APIError("'best_of' is not supported by this server (each answer is returned); leave it out",
                       param="best_of", code="unsupported_parameter")
    f.finish()
    return CompletionRequest(**common, logprobs=logprobs, prompts=prompts)


def _is_ids(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _all_ids(xs: list) -> bool:
    return all(_is_ids(x) for x in xs)


def parse_chat(body: dict[str, Any], max_n: int) -> ChatRequest:
    """A /v1/chat/completions request (messages with text content: a string or text parts)."""
    f = _Fields(body, known_ignored=("user",))
    common = _sampling(f, max_n, ("max_tokens", "max_completion_tokens"))
    messages = f.required("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError("'messages' must be a non-empty array of {\"role\", \"content\"} objects", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or "role" not in m:
            raise APIError(f"{where} must be an object with 'role' and 'content'", param=where)
        if m["role"] not in CHAT_ROLES:
            raise APIError(f"{where}.role {m['role']!r} is not one of {', '.join(CHAT_ROLES)}", param=f"{where}.role")
        out.append({"role": CHAT_ROLES[m["role"]], "content": _content(m.get("content"), where)})
    logprobs = f.boolean("logprobs", False)
    top = f.integer("top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise APIError("'top_logprobs' needs 'logprobs' set to true", param="top_logprobs")
    f.neutral("tools", [], "no tool calls")
    f.neutral("tool_choice", "none", "no tool calls")
    f.neutral("response_format", {"type": "text"}, "text answers only")
    f.finish()
    return ChatRequest(**common, logprobs=(top or 0) if logprobs else None, messages=out)


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or an array of {"type": "text", "text"} parts (joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise APIError(f"{where}.content must be a string or an array of text parts, got {_kind(content)}",
                   param=f"{where}.content")


def parse_classification(body: dict[str, Any], max_inputs: int) -> ClassificationRequest:
    """A /v1/classifications request: {"model", "input": a string or an array of strings}."""
    f = _Fields(body, known_ignored=("user",))
    model = f.string("model", f.required("model"))
    given = f.required("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
        raise APIError("'input' must be a string or a non-empty array of strings", param="input")
    if len(inputs) > max_inputs:
        raise APIError(f"'input' holds {len(inputs)} texts; send at most {max_inputs} a request", param="input")
    f.finish()
    return ClassificationRequest(model, inputs)


# --- responses -------------------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(rid: str, created: int, model: str, choices: list[dict[str, Any]],
                        use: dict[str, int] | None) -> dict[str, Any]:
    """A /v1/completions answer (a whole one, or one streamed chunk when `use` is None)."""
    out = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if use is not None:
        out["usage"] = use
    return out


def completion_choice(index: int, text: str, finish_reason: str | None,
                      logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_response(rid: str, created: int, model: str, choices: list[dict[str, Any]],
                  use: dict[str, int]) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices,
            "usage": use}


def chat_choice(index: int, text: str, finish_reason: str, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
            "finish_reason": finish_reason}


def chat_chunk(rid: str, created: int, model: str, choices: list[dict[str, Any]],
               use: dict[str, int] | None = None) -> dict[str, Any]:
    out = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if use is not None:
        out["usage"] = use
    return out


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event: `data: JSON` and a blank line (the stream ends with `data: [DONE]`)."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
