"""Feedback from the web page, appended to JSON Lines files that preference tuning reads.

Two judgments, two routes (added to a FastAPI app by `add_feedback_routes(app, path, render)`):

- `POST /feedback/pair` {"model", "messages", "chosen", "rejected"}: the person asked for two answers
  to the same conversation and picked one. One line is appended to `path`, the preference file, in
  the format `scratchllm finetune dpo --data PATH` reads (`finetune.dpo.read_preferences`):

      {"prompt": "<the exact text the model read>", "chosen": "...", "rejected": "...",
       "model": "...", "messages": [...], "time": "2026-11-30T20:00:00Z"}

  `prompt` is the conversation rendered with the model's template (`render(model, messages)`, the text
  the model answered after), so DPO scores the two answers after the same tokens the model saw. The
  other fields (which model, the conversation as messages, when) are for people; the DPO reader
  ignores them.
- `POST /feedback/rating` {"model", "messages", "answer", "rating": "up" | "down"}: a thumbs-up or
  thumbs-down on one answer. A rating alone is not a pair (DPO needs a chosen and a rejected answer to
  the same prompt), so it does not go into the preference file, where `finetune dpo` would refuse a
  line without both: it is appended to the ratings file beside it, `ratings_path(path)`
  (feedback.jsonl -> feedback.ratings.jsonl), as {"prompt", "answer", "rating", "model", "messages",
  "time"}: the raw material for reward models, filtering, or pairs made later.

`messages` is the conversation the answer continues (system and user turns, earlier answers): the
page sends what it sent to /v1/chat/completions. Each line is one `os.write` of the whole line to a
file opened for appending, under a lock (a threading lock for the server's threads and `fcntl.flock`
for other processes), then fsync: requests that arrive together each add one whole line, never
interleaved, and a line that was acknowledged is on disk. A bad request gets a 400 in OpenAI's error
shape and nothing is written.

`mount_page(app)` serves the page itself: `GET /` is `static/index.html`, `/static/...` its script and
style sheet (no build step, nothing fetched from elsewhere). The page and its files need no API key
(they hold no data); the page sends the key the person types with every request it makes.

Not here: the chat completions the page calls (`serve.app`), the preference tuning (`finetune.dpo`).
"""


import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError
from scratchllm.generate.templates import check_messages

STATIC = Path(__file__).parent / "static"  # index.html, chat.js, chat.css
RATINGS = ("up", "down")

try:  # file locks between processes (POSIX); threads always share the threading lock below
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def ratings_path(path: str | os.PathLike) -> Path:
    """Where the ratings of single answers go, beside the preference file.

    >>> ratings_path("runs/feedback.jsonl").as_posix(), ratings_path("prefs").as_posix()
    ('runs/feedback.ratings.jsonl', 'prefs.ratings.jsonl')
    """
    p = Path(path)
    return p.with_name(f"{p.stem}.ratings{p.suffix or '.jsonl'}")


class FeedbackLog:
    """The preference file and the ratings file, appended one whole line at a time (see the module doc)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.ratings = ratings_path(self.path)
        self._lock = threading.Lock()
        for p in (self.path, self.ratings):
            if p.exists() and not p.is_file():
                raise UserError(f"--feedback {p} is a folder; give a file name such as feedback.jsonl")
            if not p.parent.is_dir():
                raise UserError(f"--feedback: the folder {p.parent} does not exist; create it or give another path")

    def append(self, path: Path, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(line)
                while view:  # one write in practice; a short write goes on where it stopped
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the flock

    def add_pair(self, prompt: str, chosen: str, rejected: str, **about: Any) -> dict[str, Any]:
        record = {"prompt": prompt, "chosen": chosen, "rejected": rejected, **about, "time": _now()}
        self.append(self.path, record)
        return record

    def add_rating(self, prompt: str, answer: str, rating: str, **about: Any) -> dict[str, Any]:
        record = {"prompt": prompt, "answer": answer, "rating": rating, **about, "time": _now()}
        self.append(self.ratings, record)
        return record


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _text(body: dict[str, Any], key: str, *, empty_ok: bool = False) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise UserError(f"'{key}' must be text" + ("" if key in body else f"; the request has no '{key}'"))
    if not empty_ok and not value.strip():
        raise UserError(f"'{key}' is empty")
    return value


def check_judgment(body: Any, kind: str) -> dict[str, Any]:
    """The fields of a /feedback/{kind} request body, checked; a UserError names the one at fault."""
    if not isinstance(body, dict):
        raise UserError("the request body must be a JSON object")
    out: dict[str, Any] = {"model": _text(body, "model"),
                           "messages": check_messages(body.get("messages"), "the feedback")}
    if kind == "pair":
        out["chosen"], out["rejected"] = _text(body, "chosen"), _text(body, "rejected")
        if out["chosen"] == out["rejected"]:
            raise UserError("'chosen' and 'rejected' are the same answer; a pair needs two different answers")
    else:
        out["answer"] = _text(body, "answer", empty_ok=True)
        if body.get("rating") not in RATINGS:
            raise UserError(f"'rating' must be \"up\" or \"down\", got {body.get('rating')!r}")
        out["rating"] = body["rating"]
    return out


def error_response(message: str, status: int = 400, param: str | None = None, code: str | None = None):
    """OpenAI's error shape (`serve.protocol.APIError`) as a response: this router answers its own errors,
    so it works in any FastAPI app."""
    from fastapi.responses import JSONResponse

    from scratchllm.serve.protocol import APIError

    return JSONResponse(APIError(message, status=status, param=param, code=code).body(), status_code=status)


def feedback_router(log: FeedbackLog | None, render: Callable[[str, list[dict[str, str]]], str]):
    """The two routes as an APIRouter. `render(model, messages)` is the prompt text the model read
    (KeyError for a model the server does not have). Without a log (a server started without a
    feedback file) both routes answer 404 and say how to turn feedback on."""
    from fastapi import APIRouter, Request

    router = APIRouter()

    async def judgment(request: Request, kind: str):
        if log is None:
            return error_response("this server keeps no feedback; start it with --feedback FILE (a JSONL file of "
                                  "preference pairs)", 404, code="feedback_off")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return error_response("the request body is not valid JSON")
        try:
            j = check_judgment(body, kind)
            prompt = render(j["model"], j["messages"])
        except KeyError:
            return error_response(f"the model {j['model']!r} does not exist; GET /v1/models lists the models", 404,
                                  "model", "model_not_found")
        except UserError as e:
            return error_response(str(e))
        about = {"model": j["model"], "messages": j["messages"]}
        import anyio.to_thread

        if kind == "pair":
            await anyio.to_thread.run_sync(lambda: log.add_pair(prompt, j["chosen"], j["rejected"], **about))
        else:
            await anyio.to_thread.run_sync(lambda: log.add_rating(prompt, j["answer"], j["rating"], **about))
        return {"ok": True, "file": str(log.path if kind == "pair" else log.ratings)}

    @router.post("/feedback/pair")
    async def pair(request: Request):
        return await judgment(request, "pair")

    @router.post("/feedback/rating")
    async def rating(request: Request):
        return await judgment(request, "rating")

    return router


def template_renderer(templates: dict[str, str | None]) -> Callable[[str, list[dict[str, str]]], str]:
    """`render` for models whose templates are `templates` (name -> "chat", "alpaca" or None), as
    `serve.chat.conversation_prompt` writes them."""
    from scratchllm.serve.chat import conversation_prompt

    def render(model: str, messages: list[dict[str, str]]) -> str:
        return conversation_prompt(templates[model], messages)

    return render


def add_feedback_routes(app, path: str | os.PathLike | None, render: Callable[[str, list[dict[str, str]]], str]):
    """Add POST /feedback/pair and /feedback/rating to `app`, writing to `path` and its ratings file
    (None: the routes say feedback is off); the FeedbackLog (or None)."""
    log = FeedbackLog(path) if path is not None else None
    app.include_router(feedback_router(log, render))
    return log


def mount_page(app) -> None:
    """Serve the web page: `GET /` and its files under `/static`."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    open_paths = getattr(app.state, "open_paths", None)  # the server's routes that need no API key
    if open_paths is not None:
        open_paths.add("/")  # the page holds no data; what it fetches asks for the key
