"""The feedback routes (`serve.feedback`): pairs in exactly the format `scratchllm finetune dpo` reads (a real
run trains on them), ratings beside them, bad requests refused with nothing written, whole lines under
concurrent requests; and the page's files served at `/`."""

from __future__ import annotations

import json
import threading

import pytest
from chat_helpers import save_tiny
from fastapi import FastAPI
from fastapi.testclient import TestClient

from scratchllm.cli import main  # noqa: E402
from scratchllm.finetune.dpo import read_preferences  # noqa: E402
from scratchllm.generate.templates import chat_prompt  # noqa: E402
from scratchllm.serve.chat import conversation_prompt  # noqa: E402
from scratchllm.serve.feedback import add_feedback_routes, mount_page, ratings_path, template_renderer  # noqa: E402

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture
def app(tmp_path):
    a = FastAPI()
    log = add_feedback_routes(a, tmp_path / "feedback.jsonl", template_renderer({"tiny-chat": "chat",
                                                                                  "tiny-base": None}))
    mount_page(a)
    return a, log


def test_a_pair_is_one_line_the_dpo_reader_takes_with_the_prompt_the_model_read(app, tmp_path):
    a, log = app
    client = TestClient(a)
    r = client.post("/feedback/pair", json={"model": "tiny-chat", "messages": MESSAGES, "chosen": "Blue.",
                                            "rejected": "I will not."})
    assert r.status_code == 200, r.text
    r = client.post("/feedback/pair", json={"model": "tiny-base", "messages": MESSAGES[1:], "chosen": " Red",
                                            "rejected": " Green"})
    assert r.status_code == 200, r.text
    lines = log.path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["model"] == "tiny-chat" and first["messages"] == MESSAGES and first["time"].endswith("Z")
    got = [entry[1:] for entry in read_preferences(str(log.path))]
    assert got == [(chat_prompt(MESSAGES), "Blue.", "I will not."), ("Name a colour.", " Red", " Green")]
    assert not log.ratings.exists()


def test_a_rating_goes_to_the_ratings_file_and_the_preference_file_stays_readable(app):
    a, log = app
    client = TestClient(a)
    for rating, answer in [("up", "Blue."), ("down", "")]:
        r = client.post("/feedback/rating", json={"model": "tiny-chat", "messages": MESSAGES, "answer": answer,
                                                  "rating": rating})
        assert r.status_code == 200, r.text
    assert log.ratings == ratings_path(log.path) == log.path.with_name("feedback.ratings.jsonl")
    rows = [json.loads(line) for line in log.ratings.read_text().splitlines()]
    assert [(r["rating"], r["answer"], r["prompt"]) for r in rows] == [("up", "Blue.", chat_prompt(MESSAGES)),
                                                                        ("down", "", chat_prompt(MESSAGES))]
    assert not log.path.exists()  # a rating alone is not a pair


@pytest.mark.parametrize("route, body, status, message", [
    ("pair", b"{not json", 400, "not valid JSON"),
    ("pair", [1, 2], 400, "must be a JSON object"),
    ("pair", {"messages": MESSAGES, "chosen": "a", "rejected": "b"}, 400, "has no 'model'"),
    ("pair", {"model": "tiny-chat", "chosen": "a", "rejected": "b"}, 400, "'messages' must be a non-empty list"),
    ("pair", {"model": "tiny-chat", "messages": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"},
     400, "unknown role 'robot'"),
    ("pair", {"model": "tiny-chat", "messages": MESSAGES, "chosen": "a"}, 400, "has no 'rejected'"),
    ("pair", {"model": "tiny-chat", "messages": MESSAGES, "chosen": "a", "rejected": "a"}, 400, "the same answer"),
    ("pair", {"model": "tiny-chat", "messages": MESSAGES, "chosen": " ", "rejected": "a"}, 400, "'chosen' is empty"),
    ("pair", {"model": "nope", "messages": MESSAGES, "chosen": "a", "rejected": "b"}, 404, "GET /v1/models"),
    ("rating", {"model": "tiny-chat", "messages": MESSAGES, "answer": "a", "rating": "meh"}, 400, "'rating' must be"),
    ("rating", {"model": "tiny-chat", "messages": MESSAGES, "answer": 3, "rating": "up"}, 400, "'answer' must be text"),
])
def test_a_bad_request_is_an_openai_error_and_nothing_is_written(app, route, body, status, message):
    a, log = app
    client = TestClient(a)
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = client.post(f"/feedback/{route}", **kwargs)
    assert r.status_code == status
    error = r.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert not log.path.exists() and not log.ratings.exists()
    # and the next request is served
    ok = client.post("/feedback/pair", json={"model": "tiny-chat", "messages": MESSAGES, "chosen": "a",
                                             "rejected": "b"})
    assert ok.status_code == 200


def test_requests_at_once_each_add_one_whole_line(app):
    a, log = app
    client = TestClient(a)
    answers = [f"answer {i} " + "x" * (i * 300) for i in range(24)]  # lines of up to 7 kB
    codes = []

    def post(i):
        codes.append(client.post("/feedback/pair", json={"model": "tiny-chat", "messages": MESSAGES,
                                                         "chosen": answers[i], "rejected": "no"}).status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(answers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * len(answers)
    rows = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert sorted(r["chosen"] for r in rows) == sorted(answers)


def test_the_page_and_its_files_are_served(app):
    a, _ = app
    client = TestClient(a)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for ref in ("/static/chat.js", "/static/chat.css"):
        assert ref in page.text
        assert client.get(ref).status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert "/v1/chat/completions" in client.get("/static/chat.js").text


def test_a_feedback_path_in_a_missing_folder_is_a_user_error(tmp_path):
    from scratchllm.errors import UserError

    with pytest.raises(UserError, match="does not exist"):
        add_feedback_routes(FastAPI(), tmp_path / "no" / "feedback.jsonl", template_renderer({}))


def test_finetune_dpo_trains_on_the_pairs_the_routes_wrote(app, tmp_path):
    a, log = app
    client = TestClient(a)
    model = save_tiny(tmp_path / "tiny", "chat")
    for i in range(12):
        msgs = [{"role": "user", "content": f"Say {i}."}]
        r = client.post("/feedback/pair", json={"model": "tiny-chat", "messages": msgs, "chosen": f"{i}.",
                                                "rejected": f"No {i}!"})
        assert r.status_code == 200
    client.post("/feedback/rating", json={"model": "tiny-chat", "messages": MESSAGES, "answer": "x", "rating": "up"})
    runs = tmp_path / "runs"
    assert main(["finetune", "dpo", "--init-from", str(model), "--data", str(log.path), "--runs_dir", str(runs),
                 "--name", "fb", "--max_steps", "2", "--batch_size", "2", "--eval_interval", "2", "--eval_batches",
                 "1", "--quiet"]) == 0
    card = (runs / "fb" / "MODEL_CARD.md").read_text()
    assert '- pairs: {"train": 10, "val": 1, "test": 1}' in card  # all twelve pairs, not the rating
    assert json.loads((runs / "fb" / "report.json").read_text())["test"]["pairs"] == 1
    assert conversation_prompt("chat", [{"role": "user", "content": "Say 0."}]) == \
        json.loads(log.path.read_text().splitlines()[0])["prompt"]


def test_in_the_server_the_page_is_open_and_feedback_needs_the_key(tmp_path):
    from scratchllm.config.serve import ServeConfig
    from scratchllm.serve.app import create_app
    from scratchllm.serve.models import load_models

    models = load_models([f"tiny-chat={save_tiny(tmp_path / 'tiny', 'chat')}"])
    feedback = tmp_path / "feedback.jsonl"
    client = TestClient(create_app(ServeConfig(api_key="sesame", feedback=str(feedback)), models))
    assert client.get("/").status_code == 200 and client.get("/static/chat.js").status_code == 200
    assert client.get("/v1/models").status_code == 401
    body = {"model": "tiny-chat", "messages": MESSAGES, "chosen": "Blue.", "rejected": "No."}
    assert client.post("/feedback/pair", json=body).status_code == 401
    r = client.post("/feedback/pair", json=body, headers={"Authorization": "Bearer sesame"})
    assert r.status_code == 200, r.text
    # the prompt is the one the server's chat route reads for this model
    assert json.loads(feedback.read_text())["prompt"] == models["tiny-chat"].chat_prompt(MESSAGES)[0]

    off = TestClient(create_app(ServeConfig(), models))  # no --feedback: the page still works, judgments are refused
    r = off.post("/feedback/rating", json={"model": "tiny-chat", "messages": MESSAGES, "answer": "a", "rating": "up"})
    assert r.status_code == 404 and "start it with --feedback FILE" in r.json()["error"]["message"]
    assert off.get("/").status_code == 200
