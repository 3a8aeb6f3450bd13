"""The web page in a real browser: Debian's chromium, headless, driven by selenium, against the real server
(`scratchllm serve --feedback FILE` on 127.0.0.1) and a tiny chat model the test writes.

Send a message: the answer's text appears while it streams (the page shows parts of it before the last
one arrives) and ends equal to greedy generation from the same prompt; rate it and find the line in the
ratings file; ask for two answers, pick one, and read the pair back with `finetune dpo`'s reader.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time

import pytest
from chat_helpers import child_env, save_tiny
from selenium import webdriver

from scratchllm.config.sample import SampleConfig  # noqa: E402
from scratchllm.finetune.dpo import read_preferences  # noqa: E402
from scratchllm.generate.templates import chat_prompt  # noqa: E402
from scratchllm.generate.text import generate_text  # noqa: E402
from scratchllm.interop.load import load_any  # noqa: E402
from scratchllm.serve.feedback import ratings_path  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Debian's chromium and chromium-driver are test dependencies like the PyPI ones: `.ci/run` installs them, and
# the browser test fails (never skips) without them; elsewhere, `apt-get install chromium chromium-driver`.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`scratchllm serve` in a subprocess: (base URL, model folder, feedback file)."""
    root = tmp_path_factory.mktemp("page")
    folder = save_tiny(root / "tiny", "chat")
    feedback = root / "feedback.jsonl"
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm.cli", "serve", "-m", f"tiny={folder}", "--port",
                             str(port), "--feedback", str(feedback)], env=child_env(), stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("the server did not start:\n" + (root / "server.log").read_text()) from None
                time.sleep(0.1)
        yield url, folder, feedback
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and DRIVER, "the browser test needs Debian's chromium and chromium-driver (apt-get install them)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = 30.0):
    """Poll a JavaScript expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script("return " + script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {script}; status: "
                                 + driver.execute_script("return document.getElementById('status').textContent"))
        time.sleep(0.05)


def set_value(driver, element_id: str, value: str) -> None:
    box = driver.find_element("id", element_id)
    box.clear()
    box.send_keys(value)


# Records, for every change of an answer's text while it streams, how long the text was: the proof
# that text appeared before the answer was complete (no timing involved).
WATCH = """
window.streamed = [];
new MutationObserver((changes) => {
  for (const c of changes) {
    const div = c.target.nodeType === 1 ? c.target : c.target.parentElement;
    if (div && div.classList.contains('answer') && div.dataset.state === 'streaming')
      window.streamed.push(div.textContent.length);
  }
}).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
"""


def test_chat_streams_rates_and_picks_the_better_of_two(server, browser):
    url, folder, feedback = server
    model, tokenizer, _ = load_any(folder)
    d = browser
    d.get(url + "/")
    wait_for(d, "document.querySelector('#model option') && document.querySelector('#model').value === 'tiny'")
    set_value(d, "temperature", "0")
    set_value(d, "max-tokens", "40")
    d.execute_script(WATCH)

    # a message: its answer streams in, and is greedy generation after the chat template
    set_value(d, "message", "Hello there")
    d.find_element("id", "send").click()
    wait_for(d, "document.querySelector('.answer') && document.querySelector('.answer').dataset.state === 'done'")
    answer = d.execute_script("return document.querySelector('.answer').textContent")
    first = [{"role": "user", "content": "Hello there"}]
    want = generate_text(model, tokenizer, chat_prompt(first), SampleConfig(temperature=0, max_new_tokens=40,
                                                                            stop=("<|im_end|>",)))
    assert answer == want and len(want) > 2
    chunks = int(d.execute_script("return document.querySelector('.answer').dataset.chunks"))
    streamed = d.execute_script("return window.streamed")
    assert chunks > 1 and any(0 < n < len(want) for n in streamed), (chunks, streamed)

    # rate it: one line in the ratings file
    d.find_element("css selector", ".rate-up").click()
    wait_for(d, "document.querySelector('.answer').dataset.rated === 'up'")
    rows = [json.loads(line) for line in ratings_path(feedback).read_text().splitlines()]
    assert [(r["rating"], r["answer"], r["prompt"], r["model"]) for r in rows] == [("up", want, chat_prompt(first),
                                                                                     "tiny")]

    # two answers (sampled, so they differ), pick the second: a pair that finetune dpo reads. A sampled answer can
    # be empty (the model's end of text drawn first): the page offers no pick then, and the message is sent again
    d.find_element("id", "two-answers").click()
    set_value(d, "temperature", "1.5")
    history = first + [{"role": "assistant", "content": want}]
    last_pair = "[...document.querySelectorAll('.pair')].pop()"
    for attempt in range(1, 7):
        set_value(d, "message", "Pick one")
        d.find_element("id", "send").click()
        wait_for(d, f"document.querySelectorAll('.pair').length === {attempt} && "
                    f"{last_pair}.querySelectorAll('.answer[data-state=done]').length === 2 && "
                    "!document.getElementById('send').disabled")
        answers = d.execute_script(f"return [...{last_pair}.querySelectorAll('.answer')].map(a => a.textContent)")
        second = history + [{"role": "user", "content": "Pick one"}]
        picks = d.find_elements("css selector", ".pair")[-1].find_elements("css selector", "button.pick")
        if all(a.strip() for a in answers) and answers[0] != answers[1]:
            break
        assert picks == []  # nothing to pick in a pair with an empty answer
        history = second + [{"role": "assistant", "content": answers[0]}]
    picks[1].click()
    wait_for(d, f"{last_pair}.dataset.picked === '1'")
    pairs = read_preferences(str(feedback))
    assert [p[1:] for p in pairs] == [(chat_prompt(second), answers[1], answers[0])]
    assert json.loads(feedback.read_text())["messages"] == second
