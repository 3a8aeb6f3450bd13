"""The LLM judge (evaluate.judge) against an OpenAI-compatible server the test starts on 127.0.0.1: good,
junk, refusal, out-of-range, slow (a timeout, then an answer) and 500-then-OK answers are scored and
counted; an unreachable, always-slow or key-refusing endpoint is one `error:` line, exit 2, in bounded
time. Score parsing on adversarial answers; the default prompt is the book's."""

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scratchllm.cli import main
from scratchllm.errors import UserError
from scratchllm.evaluate.card import HEADING
from scratchllm.evaluate.judge import PROMPT, Endpoint, JudgeResult, chat_url, fill_prompt, parse_score, read_prompt

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.mark.parametrize("answer,score,outcome", [
    ("85", 85.0, "ok"), ("85\n", 85.0, "ok"), ("**85**", 85.0, "ok"), ("Score: 85.", 85.0, "ok"), ("85%", 85.0, "ok"),
    ("85/100", 85.0, "ok"), ("8/10", 80.0, "ok"), ("7 out of 10", 70.0, "ok"), ("Rating: 8/10", 80.0, "ok"),
    ("I would score this response 95 out of 100.", 95.0, "ok"), ("The score is 77.", 77.0, "ok"),
    ("85\n\nThe response is right but misses 2 details.", 85.0, "ok"), ("Score: 85. It has 3 errors.", 85.0, "ok"),
    ("<think>maybe 40, maybe 50</think>\n72", 72.0, "ok"), ("0", 0.0, "ok"), ("100", 100.0, "ok"),
    ("85.5", 85.5, "ok"), ("Score:\n\n88", 88.0, "ok"),
    ("", None, "junk"), ("   ", None, "junk"), ("great answer!", None, "junk"), ("eighty-five", None, "junk"),
    ("<think>90</think>", None, "junk"), (None, None, "junk"), (42, None, "junk"),
    ("I'm sorry, but I can't help with that.", None, "refusal"),
    ("I cannot provide a score on a 0 to 100 scale.", None, "refusal"),
    ("150", None, "out_of_range"), ("-5", None, "out_of_range"), ("12/10", None, "out_of_range"),
    ("Score: 1000", None, "out_of_range"),
    ("60 or 70", None, "ambiguous"), ("Final score: 80\nScore: 90", None, "ambiguous"),
    ("either 3/10 or 9/10", None, "ambiguous"),
])
def test_parse_score_on_adversarial_answers(answer, score, outcome):
    got = parse_score(answer)
    assert (got.score, got.outcome) == (score, outcome)


def test_the_default_prompt_is_the_books():
    from llms_from_scratch.ch07 import format_input

    entry = {"instruction": "Rewrite the sentence.", "input": "The cake was baked by me.",
             "output": "I baked the cake.", "model_response": "I made the cake."}
    book = (f"Given the input `{format_input(entry)}` "
            f"and correct output `{entry['output']}`, "
            f"score the model response `{entry['model_response']}`"
            f" on a scale from 0 to 100, where 100 is the best score. "
            f"Respond with the integer number only.")
    assert fill_prompt(PROMPT, entry, entry["model_response"], entry["output"], "x") == book


def test_a_prompt_file_and_its_placeholders(tmp_path):
    p = tmp_path / "prompt.txt"
    p.write_text('Q {prompt} / {topic} / ref {output} / got {response}; answer as {"score": 85}', encoding="utf-8")
    fields = {"prompt": "2+2?", "topic": "maths"}
    want = 'Q 2+2? / maths / ref four / got 4; answer as {"score": 85}'
    assert fill_prompt(read_prompt(p), fields, "4", "four", "x") == want
    assert fill_prompt("{input}|{n}", {"prompt": "p", "n": 3}, "r", "o", "x") == "p|3"  # {input}: the prompt field
    with pytest.raises(UserError, match="f line 3 has no 'tpoic' field"):
        fill_prompt("{tpoic} {response}", fields, "4", "four", "f line 3")
    p.write_text("no placeholder", encoding="utf-8")
    with pytest.raises(UserError, match="has no {response} placeholder"):
        read_prompt(p)


def test_endpoint_settings():
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    for kwargs, message in (({"url": "localhost:11434"}, "not an http"), ({"model": ""}, "no judge model"),
                            ({"timeout": 0}, "--timeout must be > 0"), ({"retries": -1}, "must be >= 0")):
        with pytest.raises(UserError, match=message):
            Endpoint(**kwargs)
    r = JudgeResult("m", "u", [{"score": s, "outcome": "ok"} for s in (0, 9.5, 10, 99, 100)] +
                    [{"score": None, "outcome": "junk"}])
    assert r.mean == pytest.approx(218.5 / 5) and r.counts()["junk"] == 1
    assert r.histogram() == {"0-9": 2, "10-19": 1, **{f"{a}-{a + 9}": 0 for a in range(20, 90, 10)}, "90-100": 2}


# --- a judge server -----------------------------------------------------------------------------------------
class Judge(BaseHTTPRequestHandler):
    """Answers by the marker in the prompt: GOOD, JUNK, REFUSE, RANGE, SLOW (first request too slow), FLAKY
    (first request HTTP 500); DOWN always 500s, STALL always sleeps. Every request is recorded."""

    seen: list = []
    calls: dict = {}

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        Judge.seen.append({"path": self.path, "model": body["model"], "auth": self.headers.get("Authorization"),
                           "temperature": body.get("temperature")})
        if self.headers.get("Authorization") == "Bearer wrong":
            return self.reply(401, {"error": {"message": "invalid api key"}})
        marker = next(m for m in ("GOOD", "JUNK", "REFUSE", "RANGE", "SLOW", "FLAKY", "DOWN", "STALL") if m in prompt)
        n = Judge.calls[marker] = Judge.calls.get(marker, 0) + 1
        if marker == "STALL" or (marker == "SLOW" and n == 1):
            time.sleep(1.0)
        if marker == "DOWN" or (marker == "FLAKY" and n == 1):
            return self.reply(500, {"error": "overloaded"})
        answer = {"GOOD": "Score: 90", "JUNK": "what a lovely response", "REFUSE": "I'm sorry, I cannot score this.",
                  "RANGE": "250", "SLOW": "70", "FLAKY": "60/100", "STALL": "50"}[marker]
        self.reply(200, {"choices": [{"message": {"role": "assistant", "content": answer}}]})

    def reply(self, code, obj):
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout): nothing to answer
            pass


@pytest.fixture
def server():
    Judge.seen, Judge.calls = [], {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def responses(folder: Path, markers) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "test-responses.json"
    p.write_text(json.dumps([{"instruction": f"say {m}", "input": "", "output": "ref", "model_response": m}
                             for m in markers], indent=4), encoding="utf-8")
    return p


FAST = ["--timeout", "0.4", "--retries", "2", "--backoff", "0.01", "--max-wait", "5", "-q"]


def test_every_kind_of_answer_is_scored_or_counted(server, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "MODEL_CARD.md").write_text("# model card: run\n", encoding="utf-8")
    p = responses(run, ["GOOD", "JUNK", "REFUSE", "RANGE", "SLOW", "FLAKY", "GOOD"])
    monkeypatch.setenv("SCRATCHLLM_JUDGE_KEY", "sk-test")
    assert main(["eval", "judge", str(p), "--judge-url", server, "--judge-model", "big", "--json", *FAST]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["scored"] == 4 and got["mean"] == pytest.approx((90 + 70 + 60 + 90) / 4)
    assert got["outcomes"] == {"ok": 4, "junk": 1, "refusal": 1, "out_of_range": 1, "ambiguous": 0, "failed": 0}
    assert got["histogram"]["60-69"] == 1 and got["histogram"]["70-79"] == 1 and got["histogram"]["90-100"] == 2
    out = run / "test-responses-judge"
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in answers][:4] == ["Score: 90", "what a lovely response",
                                                  "I'm sorry, I cannot score this.", "250"]
    assert answers[3]["value"] == 250 and answers[4]["attempts"] == 2 and answers[5]["attempts"] == 2
    assert answers[1]["where"] == f"{p} line 8"
    assert json.loads((out / "judge.json").read_text())["mean"] == got["mean"]
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    assert {s["path"] for s in Judge.seen} == {"/v1/chat/completions"}
    assert {s["model"] for s in Judge.seen} == {"big"} and {s["auth"] for s in Judge.seen} == {"Bearer sk-test"}
    assert {s["temperature"] for s in Judge.seen} == {0.0}
    card = (run / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert HEADING in card and "--judge-model big" in card and "mean score 77.5" in card and "refusal 1" in card


def test_settings_come_from_the_environment(server, tmp_path, capsys, monkeypatch):
    p = responses(tmp_path, ["GOOD"])
    monkeypatch.setenv("SCRATCHLLM_JUDGE_URL", server)
    monkeypatch.setenv("SCRATCHLLM_JUDGE_MODEL", "env-model")
    monkeypatch.delenv("SCRATCHLLM_JUDGE_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert main(["eval", "judge", str(p), "--out", str(tmp_path / "j"), *FAST]) == 0
    assert capsys.readouterr().out.startswith("mean score 90.00 (1 of 1 scored by env-model)")
    assert Judge.seen[0]["model"] == "env-model" and Judge.seen[0]["auth"] == "Bearer sk-openai"


def run_cli(args, timeout=60):
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "scratchllm.cli", "eval", "judge", *args], capture_output=True,
                       text=True, timeout=timeout, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"})
    return r, time.monotonic() - t


def test_unreachable_endpoint_is_one_error_line_in_bounded_time(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    p = responses(tmp_path, ["GOOD", "GOOD"])
    r, seconds = run_cli([str(p), "--judge-url", f"http://127.0.0.1:{port}/v1", *FAST])
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    assert "cannot connect" in errors[0] and "ollama serve" in errors[0]
    assert seconds < 30 and not (tmp_path / "test-responses-judge").exists()  # nothing left behind


def test_slow_or_failing_endpoints_are_one_error_line(server, tmp_path, capsys):
    p = responses(tmp_path, ["STALL", "GOOD"])
    t = time.monotonic()
    assert main(["eval", "judge", str(p), "--judge-url", server, "--timeout", "0.2", "--retries", "1",
                 "--backoff", "0.01", "-q"]) == 2
    assert time.monotonic() - t < 5  # two attempts of 0.2 s, not the server's 1 s each
    err = capsys.readouterr().err.splitlines()
    assert [e for e in err if e.startswith("error:")] == [err[-1]] and "no answer within 0.2 s" in err[-1]
    p = responses(tmp_path, ["GOOD", "DOWN", "DOWN", "DOWN", "GOOD"])  # the endpoint goes away mid-run
    assert main(["eval", "judge", str(p), "--judge-url", server, *FAST]) == 2
    err = capsys.readouterr().err
    assert "HTTP 500" in err and Judge.calls.get("GOOD") == 1 and "the 1 answers it gave are kept in" in err
    answers = (tmp_path / "test-responses-judge" / "answers.jsonl").read_text().splitlines()
    assert len(answers) == 4 and json.loads(answers[0])["score"] == 90  # what it got is kept
    assert main(["eval", "judge", str(p), "--judge-url", server, "--judge-key", "wrong", *FAST]) == 2
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "invalid api key" in err and "check the key" in err
    assert sum(s["auth"] == "Bearer wrong" for s in Judge.seen) == 1  # a refused key is not retried


def test_max_wait_bounds_the_retries(server, tmp_path, capsys):
    p = responses(tmp_path, ["STALL"])
    t = time.monotonic()
    assert main(["eval", "judge", str(p), "--judge-url", server, "--timeout", "0.3", "--retries", "50",
                 "--backoff", "0.05", "--max-wait", "1", "-q"]) == 2
    assert time.monotonic() - t < 3
    assert "--max-wait" in capsys.readouterr().err


def test_bad_files_fail_before_any_request(server, tmp_path, capsys):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"output": "a", "model_response": "GOOD"}) + "\n" + json.dumps({"output": "b"}) + "\n")
    assert main(["eval", "judge", str(p), "--judge-url", server, *FAST]) == 2
    assert f"{p} line 2 has no 'model_response'" in capsys.readouterr().err and Judge.seen == []
