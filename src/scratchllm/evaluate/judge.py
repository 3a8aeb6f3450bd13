"""LLM-as-judge: a larger model scores each response 0-100 (the book's chapter 7), over any
OpenAI-compatible chat endpoint.

- `PROMPT`: the book's prompt (`generate_model_scores`): "Given the input `...` and correct output
  `...`, score the model response `...` on a scale from 0 to 100, where 100 is the best score.
  Respond with the integer number only." A prompt file replaces it: text with the placeholders
  {input} (the entry's instruction and input in the book's Alpaca format, else its "prompt"),
  {output} (the reference), {response}, and any other field of the entry as {name}.
- `Endpoint`: POST {url}/chat/completions (Ollama at http://localhost:11434/v1, vLLM, llama.cpp's
  server, OpenAI, scratchllm's own server) with the standard library's urllib (no client package).
  Each request has a timeout (urllib's: on connecting and on each read); a timeout, a refused
  connection, HTTP 429 or 5xx, or a reply that is not a chat completion is retried after an
  exponential backoff, and the whole wait for one answer is bounded (`max_wait`); other HTTP errors
  (401 bad key, 404 unknown model) are not retried.
- `parse_score(answer)`: the score in a free-text answer, or why there is none ("junk", "refusal",
  "out_of_range", "ambiguous"); see its doc for the rules. Never raises.
- `judge(entries, endpoint, ...)`: each entry scored in turn, each answer appended to a JSON Lines
  file as it arrives (an interrupted run keeps what it got); `JudgeResult` has the mean over the
  scored entries, the count of each outcome and a 10-point histogram; `plot_histogram` draws it.
  An endpoint that never answers (the first entry fails) or stops answering (`ABORT_AFTER` entries
  in a row fail) is a `UserError`: one line naming the URL and what to do.

Not here: reading the responses file (`evaluate.generation`), the command (`cli/eval.py`).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import UserError

# The book's judge: Llama 3 8B served by Ollama (its OpenAI-compatible API lives under /v1).
DEFAULT_URL = "http://localhost:11434/v1"
DEFAULT_MODEL = "llama3"
# Environment variables read when a flag is not given (the key also from OPENAI_API_KEY).
ENV_URL, ENV_MODEL, ENV_KEY = "SCRATCHLLM_JUDGE_URL", "SCRATCHLLM_JUDGE_MODEL", "SCRATCHLLM_JUDGE_KEY"
# Seconds one request may take (a large model on a CPU answers a short prompt in well under a minute).
DEFAULT_TIMEOUT = 60.0
# Retries after a failed request, the first backoff (doubled each time) and the longest wait for one answer.
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 1.0
DEFAULT_MAX_WAIT = 300.0
# Entries in a row whose requests all failed before the run stops: the endpoint has gone away.
ABORT_AFTER = 3
# The book's sampling settings for the judge (query_model): deterministic answers.
TEMPERATURE, SEED = 0.0, 123

PROMPT = ("Given the input `{input}` and correct output `{output}`, score the model response `{response}` on a "
          "scale from 0 to 100, where 100 is the best score. Respond with the integer number only.")
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
OUTCOMES = ("ok", "junk", "refusal", "out_of_range", "ambiguous", "failed")


# --- the prompt ---------------------------------------------------------------------------------------------
def read_prompt(path: str | os.PathLike) -> str:
    """A prompt template from a file; it must hold {response} (else the judge never sees the answer)."""
    from scratchllm.data.readers import decode, read_bytes

    text = decode(read_bytes(Path(path)), str(path))
    if "{response}" not in text:
        raise UserError(f"prompt file {path} has no {{response}} placeholder; the judge must see the response "
                        f"(placeholders: {{input}}, {{output}}, {{response}}, or any field as {{name}})")
    return text


def fill_prompt(template: str, fields: dict[str, Any], response: str, reference: str, where: str) -> str:
    """`template` with its {name} placeholders replaced (see the module doc); other braces (a JSON example
    such as {"score": 85}) stay as they are; a placeholder naming a field the entry lacks is an error
    naming `where`."""
    from scratchllm.generate.templates import alpaca_prompt

    if isinstance(fields.get("instruction"), str):
        given = alpaca_prompt(fields["instruction"], fields.get("input") or "")  # the book's format_input
    else:
        given = str(fields.get("prompt", ""))
    values = {**{k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()},
              "input": given, "output": reference, "response": response}

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in values:
            raise UserError(f"{where} has no {name!r} field, which the judge prompt asks for as {{{name}}}")
        return values[name]

    return PLACEHOLDER.sub(sub, template)


# --- parsing the answer -----------------------------------------------------------------------------------
NUMBER = r"[-+]?\d+(?:\.\d+)?"
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)  # a reasoning model's thoughts are not its answer
_WHOLE = re.compile(rf"^[\s*_`\"'(\[]*(?:score\s*[:=]?\s*)?({NUMBER})\s*%?[\s*_`\"')\].!]*$", re.I)
_FRACTION = re.compile(rf"({NUMBER})\s*(?:/|out\s+of)\s*({NUMBER})", re.I)
_LABELLED = re.compile(rf"\b(?:score|rating|grade)d?\b(?:\s+(?:is|of|would\s+be|:))?[\s:=*\"'`]*({NUMBER})", re.I)
_ANY = re.compile(rf"(?<![\w.]){NUMBER}(?![\w])")
_REFUSAL = re.compile(r"\b(?:I\s+(?:cannot|can't|can’t|won't|am\s+(?:unable|not\s+able))|I'm\s+(?:sorry|unable|not\s+"
                      r"able)|I\s+apologi[sz]e|unable\s+to\s+(?:score|evaluate|rate|assess|provide))",
                      re.I)


@dataclass(frozen=True)
class Parsed:
    """The score read from an answer (None when there is none) and the outcome: "ok", "junk" (no
    number), "refusal", "out_of_range" (`value` holds the number), "ambiguous" (several numbers)."""

    score: float | None
    outcome: str
    value: float | None = None


def _checked(v: float) -> Parsed:
    if not math.isfinite(v) or not 0.0 <= v <= 100.0:
        return Parsed(None, "out_of_range", v)
    return Parsed(v, "ok", v)


def _one(values: list[float]) -> float | None:
    distinct = sorted(set(values))
    return distinct[0] if len(distinct) == 1 else None


def parse_score(answer: Any) -> Parsed:
    """The 0-100 score in a judge's answer. In order: a reasoning model's <think> block is dropped;
    an answer that is one number ("85", "**85**", "85.", "85%", "Score: 85") is that number; a
    fraction ("85/100", "8 out of 10") is scaled to 100; a labelled number ("score: 85", "I would
    rate it 85") or, failing those, a number alone on the first line ("85", then an explanation) is taken;
    else the one number the answer holds. Several different candidates are "ambiguous"; none is a
    "refusal" when the answer declines ("I cannot ...", "I'm sorry ...") and "junk" otherwise; a number
    outside [0, 100] (or a fraction over its whole) is "out_of_range".

    >>> [parse_score(a).score for a in ["85", "Score: 85.", "85/100", "7 out of 10", "I'd rate it 90 overall"]]
    [85.0, 85.0, 85.0, 70.0, 90.0]
    >>> [parse_score(a).outcome for a in ["", "great answer!", "I'm sorry, I can't do that", "150", "60 or 70"]]
    ['junk', 'junk', 'refusal', 'out_of_range', 'ambiguous']
    """
    if not isinstance(answer, str):
        return Parsed(None, "junk")
    text = _THINK.sub("", answer).strip()
    if not text:
        return Parsed(None, "junk")
    whole = _WHOLE.match(text)
    if whole:
        return _checked(float(whole.group(1)))
    fractions = [(float(a), float(b)) for a, b in _FRACTION.findall(text)]
    if fractions:
        scaled = [a / b * 100.0 if b > 0 else math.inf for a, b in fractions]
        v = _one(scaled)
        if v is None:
            return Parsed(None, "ambiguous")
        return Parsed(None, "out_of_range", v) if any(a > b or a < 0 for a, b in fractions) else _checked(v)
    labelled = [float(x) for x in _LABELLED.findall(text)]
    if labelled:
        v = _one(labelled)
        return _checked(v) if v is not None else Parsed(None, "ambiguous")
    first_line = _WHOLE.match(text.splitlines()[0])
    if first_line:  # "85" alone on the first line, an explanation below
        return _checked(float(first_line.group(1)))
    if _REFUSAL.search(text):
        return Parsed(None, "refusal")
    numbers = [float(x) for x in _ANY.findall(text)]
    if not numbers:
        return Parsed(None, "junk")
    v = _one(numbers)
    return _checked(v) if v is not None else Parsed(None, "ambiguous")


# --- the endpoint ------------------------------------------------------------------------------------------
class JudgeUnavailable(Exception):
    """A request that failed for good (after its retries, or an error not worth retrying)."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal  # True: retrying later entries cannot help either (bad key, unknown model)


def chat_url(url: str) -> str:
    """The chat completions URL of an endpoint given as its base (".../v1") or in full.

    >>> chat_url("http://localhost:11434/v1/"), chat_url("http://h:8000/v1/chat/completions")
    ('http://localhost:11434/v1/chat/completions', 'http://h:8000/v1/chat/completions')
    """
    url = url.strip().rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


@dataclass
class Endpoint:
    """An OpenAI-compatible chat endpoint (see the module doc for the retry rules)."""

    url: str = DEFAULT_URL
    model: str = DEFAULT_MODEL
    key: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_wait: float = DEFAULT_MAX_WAIT
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def __post_init__(self) -> None:
        from urllib.parse import urlparse

        parsed = urlparse(self.url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UserError(f"judge URL {self.url!r} is not an http(s) URL; give one such as {DEFAULT_URL} "
                            f"(--judge-url or {ENV_URL})")
        if not self.model:
            raise UserError(f"no judge model named; pass --judge-model or set {ENV_MODEL}")
        for name in ("timeout", "max_wait"):
            if not getattr(self, name) > 0:
                raise UserError(f"judge --{name.replace('_', '-')} must be > 0 seconds, got {getattr(self, name)}")
        if self.retries < 0 or self.backoff < 0:
            raise UserError(f"judge --retries and --backoff must be >= 0, got {self.retries} and {self.backoff}")

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None, key: str | None = None,
                 **options: Any) -> Endpoint:
        """Flags first, then SCRATCHLLM_JUDGE_URL/MODEL/KEY (and OPENAI_API_KEY), then Ollama's defaults."""
        key = key or os.environ.get(ENV_KEY) or os.environ.get("OPENAI_API_KEY") or None
        return cls(url=url or os.environ.get(ENV_URL) or DEFAULT_URL,
                   model=model or os.environ.get(ENV_MODEL) or DEFAULT_MODEL, key=key, **options)

    def request(self, prompt: str, timeout: float) -> str:
        """One POST; the answer's text. Raises OSError-like errors for the caller to sort."""
        import urllib.request

        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": TEMPERATURE, "seed": SEED, "stream": False}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(chat_url(self.url), data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as r:
            reply = json.loads(r.read().decode("utf-8", errors="replace"))
        content = reply["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise ValueError("the reply's message content is not text")
        return content

    def ask(self, prompt: str) -> tuple[str, int]:
        """(the judge's answer, attempts made); JudgeUnavailable when every attempt failed or the wait ran out."""
        import socket
        import urllib.error

        start, delay, last = time.monotonic(), self.backoff, ""
        for attempt in range(1, self.retries + 2):
            remaining = self.max_wait - (time.monotonic() - start)
            try:
                return self.request(prompt, min(self.timeout, max(remaining, 0.001))), attempt
            except urllib.error.HTTPError as e:
                detail = _error_detail(e)
                if e.code not in (408, 429) and e.code < 500:
                    raise JudgeUnavailable(f"the judge at {self.url} answered HTTP {e.code} {e.reason}{detail}"
                                           f"{_hint(e.code)}", fatal=True) from None
                last = f"HTTP {e.code} {e.reason}{detail}"
            except urllib.error.URLError as e:
                reason = e.reason
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    last = f"no answer within {self.timeout:g} s"
                else:
                    last = f"cannot connect ({getattr(reason, 'strerror', None) or reason})"
            except TimeoutError:
                last = f"no answer within {self.timeout:g} s"
            except (ConnectionError, OSError) as e:
                last = f"connection failed ({getattr(e, 'strerror', None) or e})"
            except (ValueError, KeyError, IndexError, TypeError):
                last = "the reply is not an OpenAI chat completion (choices[0].message.content)"
            if attempt > self.retries:
                break
            if time.monotonic() - start + delay >= self.max_wait:
                last += f"; gave up after {self.max_wait:g} s (--max-wait)"
                break
            self.sleep(delay)
            delay *= 2
        raise JudgeUnavailable(f"the judge at {self.url} failed: {last}")


def _error_detail(e: Any) -> str:
    """The message of an HTTP error's JSON body ({"error": {"message"}} or {"error": "..."}), if any."""
    try:
        body = json.loads(e.read().decode("utf-8", errors="replace"))
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message") if isinstance(err, dict) else err
        return f": {str(msg)[:200]}" if msg else ""
    except Exception:  # a body that is not JSON (or none): the status line says enough
        return ""


def _hint(code: int) -> str:
    if code in (401, 403):
        return f"; check the key (--judge-key, {ENV_KEY} or OPENAI_API_KEY)"
    if code == 404:
        return f"; check the URL (an OpenAI-compatible base such as {DEFAULT_URL}) and the model name (--judge-model)"
    return ""


# --- the run -----------------------------------------------------------------------------------------------
@dataclass
class JudgeResult:
    """Scores of a judged file: one record per entry ({"index", "where", "answer", "score", "outcome",
    "attempts", "error"}) and the summary (`to_dict`)."""

    model: str
    url: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def scores(self) -> list[float]:
        return [r["score"] for r in self.records if r["score"] is not None]

    @property
    def mean(self) -> float | None:
        s = self.scores
        return sum(s) / len(s) if s else None

    def counts(self) -> dict[str, int]:
        return {k: sum(r["outcome"] == k for r in self.records) for k in OUTCOMES}

    def histogram(self) -> dict[str, int]:
        """Scores in bins of ten points: 0-9, 10-19, ..., 90-100 (100 goes in the last bin)."""
        bins = {f"{lo}-{lo + 9 if lo < 90 else 100}": 0 for lo in range(0, 100, 10)}
        keys = list(bins)
        for s in self.scores:
            bins[keys[min(int(s // 10), 9)]] += 1
        return bins

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.model, "url": self.url, "entries": len(self.records), "scored": len(self.scores),
                "mean": self.mean, "outcomes": self.counts(), "histogram": self.histogram()}


def judge(items: Iterable[tuple[str, str]], endpoint: Endpoint, answers_path: str | os.PathLike | None = None,
          progress: bool = True) -> JudgeResult:
    """Score each (where, prompt) of `items` with `endpoint` (see the module doc). Each answer is appended
    to `answers_path` (JSON Lines, replaced at the start) as it arrives."""
    from tqdm import tqdm

    items = list(items)
    result = JudgeResult(endpoint.model, endpoint.url)
    out = None
    if answers_path is not None:
        Path(answers_path).parent.mkdir(parents=True, exist_ok=True)
        out = open(answers_path, "w", encoding="utf-8")
    failed_in_a_row = 0
    try:
        for i, (where, prompt) in enumerate(tqdm(items, desc="judging", unit="entry", disable=not progress)):
            try:
                answer, attempts = endpoint.ask(prompt)
            except JudgeUnavailable as e:
                failed_in_a_row += 1
                record = {"index": i, "where": where, "answer": None, "score": None, "outcome": "failed",
                          "attempts": None, "error": str(e)}
                _write(out, record)
                result.records.append(record)
                if e.fatal or i == 0 or failed_in_a_row >= ABORT_AFTER:  # never answered, or gone
                    kept = sum(r["answer"] is not None for r in result.records)
                    if out is not None:
                        out.close()
                        if not kept:  # nothing worth keeping
                            Path(answers_path).unlink(missing_ok=True)
                    where = f"; the {kept} answers it gave are kept in {answers_path}" if kept and out else ""
                    raise UserError(f"{e}{where}{_what_to_do(endpoint, e)}") from None
                continue
            failed_in_a_row = 0
            parsed = parse_score(answer)
            record = {"index": i, "where": where, "answer": answer, "score": parsed.score, "outcome": parsed.outcome,
                      "attempts": attempts}
            if parsed.value is not None and parsed.score is None:
                record["value"] = parsed.value
            _write(out, record)
            result.records.append(record)
    finally:
        if out is not None:
            out.close()
    return result


def _write(out: Any, record: dict[str, Any]) -> None:
    if out is not None:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()


def _what_to_do(endpoint: Endpoint, e: JudgeUnavailable) -> str:
    if e.fatal:
        return ""
    return (f"; start the server (Ollama: `ollama serve` and `ollama pull {endpoint.model}`), or point --judge-url "
            f"(or {ENV_URL}) at a running OpenAI-compatible endpoint; raise --timeout for a slow one")


def plot_histogram(result: JudgeResult, path: str | os.PathLike) -> Path:
    """The scores' histogram (bins of ten points) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scratchllm.files import save_figure

    hist = result.histogram()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar_label(ax.bar(range(len(hist)), list(hist.values()), color="C0"), fontsize=8)
    ax.set_xticks(range(len(hist)), list(hist), rotation=30, fontsize=8)
    ax.set_xlabel("score")
    ax.set_ylabel("responses")
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    mean = result.mean
    counts = result.counts()
    unscored = len(result.records) - len(result.scores)
    ax.set_title(f"judge {result.model}: mean {mean:.1f} of {len(result.scores)} scored" if mean is not None
                 else f"judge {result.model}: nothing scored", fontsize=10)
    if unscored:
        ax.text(0.01, 0.97, ", ".join(f"{k} {v}" for k, v in counts.items() if v and k != "ok"),
                transform=ax.transAxes, va="top", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)
