"""The chat: templates and trimming (`serve.chat`), the session's commands, and `scratchllm chat` in a real
pseudo-terminal (streamed answers equal to `generate_text`'s, Ctrl-C stops an answer, Ctrl-D leaves)."""

from __future__ import annotations

import io

import pytest
from chat_helpers import Terminal, char_tokenizer, save_tiny

from scratchllm.config.sample import SampleConfig
from scratchllm.generate.templates import ALPACA_RESPONSE, alpaca_prompt, chat_prompt
from scratchllm.generate.text import generate_text
from scratchllm.interop.load import load_any
from scratchllm.serve.chat import ChatSession, Conversation, conversation_prompt, model_template

GREEDY = SampleConfig(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    return {t or "base": save_tiny(root / (t or "base"), t) for t in ("chat", "alpaca", None)}


def session(folder, config=GREEDY):
    model, tokenizer, meta = load_any(folder)
    out = io.StringIO()
    return ChatSession(model, tokenizer, model_template(meta["generation"]), config, out=out), out


def test_model_template_follows_generation_json(folders):
    for name, want in [("chat", "chat"), ("alpaca", "alpaca"), ("base", None)]:
        assert model_template(load_any(folders[name])[2]["generation"]) == want
    qwen_like = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n'}}{% endfor %}"
    assert model_template({"chat_template": qwen_like, "eos_token_id": 5}) == "chat"


def test_conversation_prompts_are_the_templates_text():
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}]
    assert conversation_prompt("chat", turns) == chat_prompt(turns)
    assert conversation_prompt("alpaca", turns) == ("Be brief.\n\n" + alpaca_prompt("Hi") + ALPACA_RESPONSE
                                                    + "Hello.\n\n" + alpaca_prompt("Name a colour.") + ALPACA_RESPONSE)
    # a base model continues the text; each user line starts a new line
    assert conversation_prompt(None, turns) == "Be brief.\nHiHello.\nName a colour."


@pytest.mark.parametrize("name", ["chat", "alpaca", "base"])
def test_each_answer_is_greedy_generation_from_the_whole_conversation(folders, name):
    s, out = session(folders[name])
    first = s.answer("Hi there")
    second = s.answer("And then?")
    model, tokenizer = s.model, s.tokenizer
    stops = ("<|im_end|>",) if name == "chat" else ()
    config = GREEDY.replace(stop=stops)
    template = None if name == "base" else name
    want1 = generate_text(model, tokenizer, conversation_prompt(template, [{"role": "user", "content": "Hi there"}]),
                          config)
    history = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": want1},
               {"role": "user", "content": "And then?"}]
    want2 = generate_text(model, tokenizer, conversation_prompt(template, history), config)
    assert (first, second) == (want1, want2)
    assert out.getvalue() == f"{want1}\n{want2}\n"  # streamed to the terminal, one line after each
    assert [t["content"] for t in s.conversation.turns] == ["Hi there", want1, "And then?", want2]


def test_commands_reset_system_set_and_errors(folders):
    s, out = session(folders["chat"])
    s.answer("Hi")
    assert s.handle("/reset") and s.conversation.turns == []
    s.handle("/system You are terse.")
    reply = s.answer("Hi")
    want = generate_text(s.model, s.tokenizer, chat_prompt([{"role": "system", "content": "You are terse."},
                                                            {"role": "user", "content": "Hi"}]),
                         GREEDY.replace(stop=("<|im_end|>",)))
    assert reply == want
    s.handle("/set temperature 0.7")
    s.handle("/set top-p 0.9")
    assert (s.config.temperature, s.config.top_p) == (0.7, 0.9)
    before = s.config
    s.handle("/set temperature -1")
    s.handle("/set colour blue")
    s.handle("/bogus")
    assert s.config == before
    lines = out.getvalue().splitlines()
    assert "[temperature = 0.7]" in lines and "[top_p = 0.9]" in lines
    assert "error: temperature must be >= 0 (0 means greedy), got -1.0" in lines
    assert any(line.startswith("error: use /set KEY VALUE") for line in lines)
    assert "error: unknown command /bogus; /help lists the commands" in lines
    s.handle("/help")
    assert "/system TEXT" in out.getvalue()
    assert s.handle("/quit") is False


def test_a_character_outside_the_vocabulary_is_one_error_and_the_chat_goes_on(folders):
    s, out = session(folders["chat"])
    assert s.answer("caf\u00e9") == ""
    assert "error: character 'é' (U+00E9) is not in this character vocabulary" in out.getvalue()
    assert s.conversation.turns == []


def test_history_is_trimmed_to_the_context_with_a_note(tmp_path):
    folder = save_tiny(tmp_path / "small", "chat", context_length=128)
    s, out = session(folder, GREEDY.replace(max_new_tokens=20))
    for i in range(4):
        s.answer(f"message number {i}")
    conv = s.conversation
    assert "[history trimmed: the 2 oldest turns were dropped to fit the model's 128-token context]" in out.getvalue()
    assert conv.turns[0]["content"] != "message number 0"
    assert conv.turns[-2]["content"] == "message number 3"
    # what was kept fits: the prompt before the last answer plus its room
    kept = Conversation(s.tokenizer, "chat", 128, turns=conv.turns[:-1])
    assert kept.tokens() + 20 <= 128


def test_chat_in_a_terminal_streams_stops_on_ctrl_c_and_leaves_on_ctrl_d(tmp_path):
    # The long answer must still be being written when Ctrl-C comes: this tiny model writes a 512-token context's
    # room (256 tokens) in milliseconds. So a long context (room: half of it), and a seed whose greedy answer
    # runs on without the end-of-turn mark (checked below, in this process).
    folder = save_tiny(tmp_path / "chat", "chat", context_length=2**15, seed=2)
    model, tokenizer, _ = load_any(folder)
    first = generate_text(model, tokenizer, chat_prompt([{"role": "user", "content": "Hi there"}]),
                          GREEDY.replace(stop=("<|im_end|>",)))
    turns = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": first},
             {"role": "user", "content": "Go on"}]
    long = generate_text(model, tokenizer, chat_prompt(turns), GREEDY.replace(stop=("<|im_end|>",),
                                                                              max_new_tokens=2000))
    assert len(long) == 2000  # no end of turn in sight: seconds of writing in the terminal
    term = Terminal(["-m", "scratchllm.cli", "chat", "-m", str(folder), "--temperature", "0", "--max-new-tokens",
                     "12"])
    try:
        banner = term.expect("> ")
        assert "[chat template: ChatML turns" in banner and "Ctrl-D leaves" in banner
        term.send("Hi there\n")
        term.expect("Hi there\r\n")  # the terminal's echo of the line typed
        answer = term.expect("\r\n> ")
        want = generate_text(model, tokenizer, chat_prompt([{"role": "user", "content": "Hi there"}]),
                             GREEDY.replace(stop=("<|im_end|>",)))
        assert answer == want.replace("\n", "\r\n")
        # a long answer: Ctrl-C once it has started stops it, and the chat goes on
        term.send("/set max_new_tokens 100000\n")
        term.expect("[max_new_tokens = 100000]\r\n> ")
        term.send("Go on\n")
        term.expect("Go on\r\n")
        assert term.more()  # some text of the answer has arrived
        term.send("\x03")
        term.expect("[stopped]\r\n> ")
        term.send("/settings\n")
        assert "4 turns" in term.expect("\r\n> ")
        term.send("\x04")  # Ctrl-D
        assert term.wait() == 0
    finally:
        term.close()


def test_chat_reads_lines_from_a_pipe(folders, capsys, monkeypatch):
    import sys

    from scratchllm.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi there\n/set temperature 0.5\n"))
    assert main(["chat", "-m", str(folders["base"]), "--temperature", "0", "--max-new-tokens", "8"]) == 0
    out, err = capsys.readouterr()
    model, tokenizer, _ = load_any(folders["base"])
    want = generate_text(model, tokenizer, "Hi there", GREEDY.replace(max_new_tokens=8))
    assert out.splitlines()[0].startswith("[a base model with no prompt template: plain continuation")
    assert out.splitlines()[1:] == [*want.split("\n"), "[temperature = 0.5]"]
    assert f"[checkpoint {folders['base']}]" in err


def test_chat_bad_option_is_one_error_line(folders, capsys):
    from scratchllm.cli import main

    assert main(["chat", "-m", str(folders["chat"]), "--temperature", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: temperature must be >= 0 (0 means greedy), got -1.0"


def test_char_tokenizer_round_trips_the_chat_markers():
    t = char_tokenizer()
    text = chat_prompt([{"role": "user", "content": "Hi"}])
    assert t.decode(t.encode(text)) == text


@pytest.mark.parametrize("name", ["chat", "alpaca", "base"])
def test_the_server_reads_the_same_text_as_the_chat(folders, name):
    from scratchllm.serve.chat import answer_stops
    from scratchllm.serve.models import load_models

    served = load_models([str(folders[name])])[name]
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a colour."}]
    template = None if name == "base" else name
    assert served.template == template
    assert served.chat_prompt(turns) == (conversation_prompt(template, turns), answer_stops(template))
