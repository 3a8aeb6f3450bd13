"""Continuous batching: one background thread decodes every request's answers in shared steps.

Each request (a `Job`: one or more answers, each a row of the engine's open batch) is queued by the
web app; the scheduler's thread admits queued jobs into their model's `generate.engine.Decoder` as
soon as the batch has room (`max_batch` rows), so a request that arrives while others generate joins
the very next decoding step, and a finished answer leaves the batch at once. Torch runs only in this
thread, never on the event loop; each job's events (text, finish, end, error) go to its own asyncio
queue, which the route reads (streamed as server-sent events, or gathered into one answer).

Per answer the thread turns tokens into text (`generate.text.TextTracker`: whole UTF-8 characters,
stop strings held back and cut), records log-probabilities when asked, and ends the row on the
end-of-text id or a stop string ("stop") or at max_tokens ("length"). Each answer has its own
sampling settings and generator (seed + answer index), so a seeded request draws the same text alone
or batched with others; greedy answers equal the same prompt decoded alone up to float rounding
(batched matrix products sum in another order).

Limits: a job that would wait when `max_queue` jobs already wait is refused (`Busy`: the app's 503
with Retry-After); a job past its deadline (`request_timeout`, waiting included) is ended with a
timeout error and its rows freed; a job whose client went away is cancelled (`Job.cancel`) and its
rows leave at the next step. An exception inside a step fails the jobs of that model only (500),
and its batch starts afresh: the server goes on.

Other torch work (classification) runs on the same thread between steps (`Scheduler.call`).

Not here: HTTP and the API's shapes (`serve.app`, `serve.protocol`), the decode loop (`generate.engine`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scratchllm.config.sample import SampleConfig
from scratchllm.config.serve import ServeConfig
from scratchllm.generate.engine import Decoder, Row
from scratchllm.generate.sampling import make_generator
from scratchllm.generate.text import TextTracker
from scratchllm.serve.models import ServedModel


class Busy(Exception):
    """The queue is full: try again later."""


@dataclass
class Answer:
    """One answer (choice) of a job: its prompt, its settings, and what it has produced."""

    index: int
    prompt: list[int]
    config: SampleConfig
    tracker: TextTracker | None = None
    row: Row | None = None
    finish_reason: str | None = None  # "stop" or "length" once it ended
    # with logprobs: one (token id, log-probability, [(id, log-probability)...]) per token kept
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """Tokens the model generated for this answer (an end-of-text id or a stop string's included)."""
        return self.row.emitted if self.row is not None else 0


@dataclass
class Event:
    kind: str  # "text" (index, text, logprobs), "finish" (index, reason), "end", "error" (error)
    index: int = 0
    text: str = ""
    logprobs: list = field(default_factory=list)
    reason: str | None = None
    error: Exception | None = None


class Job:
    """A request's generation: its answers and the asyncio queue its events go to."""

    def __init__(self, model: ServedModel, answers: list[Answer], *, logprobs: int | None, timeout: float,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.id = uuid.uuid4().hex[:24]
        self.model, self.answers, self.logprobs = model, answers, logprobs
        self.deadline = time.monotonic() + timeout
        self.loop = loop or asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = False
        self.finished = False  # set by the scheduler's thread when the job ends (done, failed, timed out)

    def cancel(self) -> None:
        """The client went away: the scheduler drops the job's rows at its next step."""
        self.cancelled = True

    def emit(self, event: Event) -> None:
        """Hand an event to the route (from the scheduler's thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled = True


class Scheduler:
    """The decode thread of a server: `submit` jobs, `call` other torch work; `start` / `stop`."""

    def __init__(self, models: dict[str, ServedModel], config: ServeConfig) -> None:
        self.models, self.config = models, config
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()  # submitted, not yet in a batch
        self._running: dict[str, list[Job]] = {name: [] for name in models}
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._decoders: dict[str, Decoder] = {}
        self._owner: dict[int, tuple[Job, Answer]] = {}  # id(row) -> its job and answer
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0  # decoding steps run (all models), for tests and monitoring

    # --- the app's side ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="scratchllm-decode", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def rows_in_use(self, name: str) -> int:
        """Rows of `name`'s batch taken by running jobs' unfinished answers."""
        return sum(1 for job in self._running[name] for a in job.answers if a.finish_reason is None)

    def submit(self, job: Job) -> None:
        """Queue `job`; `Busy` when it would wait (its model's batch is full) behind `max_queue` waiting jobs."""
        with self._lock:
            name = job.model.name
            free, queued = self.config.max_batch - self.rows_in_use(name), 0
            for j in self._waiting:  # those that fit the batch join at the next step; the others wait
                if j.model.name != name:
                    continue
                if queued == 0 and len(j.answers) <= free:
                    free -= len(j.answers)
                else:
                    queued += 1
            if (queued or len(job.answers) > free) and queued >= self.config.max_queue:
                raise Busy(f"the server is busy ({queued} requests wait for {name}); retry shortly")
            self._waiting.append(job)
            self._lock.notify_all()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn()` on the decode thread between steps; its future."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._calls.append((fn, future))
            self._lock.notify_all()
        return future

    def wake(self) -> None:
        """A job was cancelled: let an idle thread notice."""
        with self._lock:
            self._lock.notify_all()

    # --- the decode thread ---------------------------------------------------------------------------
    def _decoder(self, name: str) -> Decoder:
        dec = self._decoders.get(name)
        if dec is None:
            dec = Decoder(self.models[name].model, max_batch=self.config.max_batch).__enter__()
            self._decoders[name] = dec
        return dec

    def _busy(self) -> bool:
        return bool(self._waiting or self._calls or any(self._running.values()))

    def _loop(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._stopping and not self._busy():
                        self._lock.wait()
                    if self._stopping:
                        break
                    calls = list(self._calls)
                    self._calls.clear()
                    admitted = self._admit()
                for fn, future in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn())
                        except BaseException as e:  # the caller gets it; the thread goes on
                            future.set_exception(e)
                for job in admitted:
                    self._start(job)
                self._expire()
                for name, jobs in self._running.items():
                    if jobs:
                        self._step(name)
        finally:
            for job in [*self._waiting, *(j for jobs in self._running.values() for j in jobs)]:
                self._fail(job, RuntimeError("the server is shutting down"))
            for dec in self._decoders.values():
                dec.__exit__(None, None, None)
            self._decoders.clear()

    def _admit(self) -> list[Job]:
        """Waiting jobs that fit their model's batch, oldest first (a job that does not fit holds back
        the later ones of its model, so that big requests are not starved). Under the lock."""
        admitted, held = [], set()
        for job in list(self._waiting):
            name = job.model.name
            if job.cancelled or time.monotonic() > job.deadline:
                self._waiting.remove(job)
                admitted.append(job)  # _start / _expire end it
                continue
            if name in held:
                continue
            free = self.config.max_batch - self.rows_in_use(name)
            if len(job.answers) <= free:
                self._waiting.remove(job)
                self._running[name].append(job)
                admitted.append(job)
            else:
                held.add(name)
        return admitted

    def _start(self, job: Job) -> None:
        """Add the job's answers to its model's batch (they join at the next step)."""
        if job.cancelled or time.monotonic() > job.deadline:
            with self._lock:
                if job not in self._running[job.model.name]:
                    self._running[job.model.name].append(job)
            return  # _expire ends it
        dec, served = self._decoder(job.model.name), job.model
        for a in job.answers:
            a.tracker = TextTracker(served.tokenizer, a.config.stop)
            gen = make_generator(a.config.seed, dec.device) if a.config.temperature > 0 else None
            a.row = dec.add(a.prompt, a.config, generator=gen, eos_id=served.eos_ids, logprobs=job.logprobs)
            self._owner[id(a.row)] = (job, a)

    def _expire(self) -> None:
        """End cancelled jobs and jobs past their deadline; their rows leave at the next step."""
        now = time.monotonic()
        for jobs in self._running.values():
            for job in list(jobs):
                if job.cancelled:
                    self._end(job)
                elif now > job.deadline:
                    self._fail(job, TimeoutError(f"the request took longer than {self.config.request_timeout:g} "
                                                 f"seconds (request_timeout) and was stopped"))

    def _end(self, job: Job) -> None:
        for a in job.answers:
            if a.row is not None:
                a.row.done = True
                self._owner.pop(id(a.row), None)
            if a.finish_reason is None:
                a.finish_reason = "cancelled"
        with self._lock:
            if job in self._running[job.model.name]:
                self._running[job.model.name].remove(job)
        job.finished = True

    def _fail(self, job: Job, error: Exception) -> None:
        self._end(job)
        job.emit(Event("error", error=error))

    def _step(self, name: str) -> None:
        dec = self._decoders[name]
        try:
            events = dec.step()
        except Exception as e:  # a bug or no memory: this model's jobs fail, its batch starts afresh
            traceback.print_exc()
            for job in list(self._running[name]):
                self._fail(job, RuntimeError(f"generation failed: {type(e).__name__}: {e}"))
            dec.__exit__(None, None, None)
            del self._decoders[name]
            return
        self.steps += 1
        for row, token in events:
            owner = self._owner.get(id(row))
            if owner is not None:
                self._advance(*owner, row, token)

    def _advance(self, job: Job, a: Answer, row: Row, token: int | None) -> None:
        """One new token (None: end of text) of answer `a`: its text, its end."""
        tr = a.tracker
        piece, records = "", []
        if token is not None:
            piece = tr.push(token)
            if job.logprobs is not None:
                a.logprobs.append((token, row.logprob, list(row.top_logprobs)))
                records = [a.logprobs[-1]]
        reason = None
        if token is None or tr.stopped:
            reason = "stop"
        elif row.done:
            reason = "length"
        if reason is not None:
            row.done = True
            piece += tr.finish()
            if tr.stop_at is not None and job.logprobs is not None:
                del a.logprobs[tr.keep_tokens:]  # tokens of the stop string are not part of the answer
                records = [r for r in records if r in a.logprobs]
        if piece or records:
            job.emit(Event("text", a.index, piece, records))
        if reason is not None:
            a.finish_reason = reason
            self._owner.pop(id(row), None)
            job.emit(Event("finish", a.index, reason=reason))
            if all(x.finish_reason is not None for x in job.answers):
                with self._lock:
                    self._running[job.model.name].remove(job)
                job.finished = True
                job.emit(Event("end"))
