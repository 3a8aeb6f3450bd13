"""Instruction data: the book's prompts, split and collate (parity with llms_from_scratch.ch07), the chat
template, and one clear error per bad entry."""

import json

import pytest
import torch
from finetune_helpers import gpt2_tokenizer
from llms_from_scratch.ch07 import InstructionDataset, custom_collate_fn, format_input

from scratchllm.data.sources import load_records
from scratchllm.errors import UserError
from scratchllm.finetune.instruct import (
    Example,
    check_entry,
    collate,
    encode_example,
    end_of_text_id,
    entry_text,
    generation_settings,
    learnable,
    prompt_and_reference,
    read_entries,
    split_entries,
)
from scratchllm.generate.templates import (
    ALPACA_RESPONSE,
    alpaca_prompt,
    chat_prompt,
    check_messages,
    instruction_prompt,
    render_chat,
    template_stops,
)

EOT = 50256


@pytest.fixture(scope="module")
def tok(shared_data):
    return gpt2_tokenizer(shared_data)


@pytest.fixture(scope="module")
def book_data(shared_data, tok):
    """The book's 1,100 entries and its InstructionDataset's token ids (built with our GPT-2 tokenizer, which
    the tokenizer tests hold equal to tiktoken's)."""
    data = load_records("alpaca-book", data_dir=shared_data)
    return data, InstructionDataset(data, tok).encoded_texts


def book_masked(batch, prompt_lengths, **kw):
    """The book's exercise 7.2: custom_collate_fn, then targets[:prompt_length - 1] = -100 per row."""
    x, y = custom_collate_fn(batch, **kw)
    for row, n in enumerate(prompt_lengths):
        y[row, :n - 1] = -100
    return x, y


def test_prompts_and_token_ids_equal_the_books(book_data, tok):
    data, book_ids = book_data
    assert len(data) == 1100
    for entry, ids in zip(data, book_ids):
        checked = check_entry(entry, "alpaca", "x")
        assert alpaca_prompt(entry["instruction"], entry["input"]) == format_input(entry)
        example = encode_example(tok, *entry_text(checked, "alpaca"))
        assert example.ids == ids
        # the response starts where the book's exercise 7.2 masks up to: after format_input's tokens
        assert example.spans == ((len(tok.encode(format_input(entry))), len(ids)),)


@pytest.mark.parametrize("max_length", [None, 1024, 60])
@pytest.mark.parametrize("mask_prompt", [False, True])
def test_collate_equals_custom_collate_fn(book_data, tok, max_length, mask_prompt):
    data, book_ids = book_data
    for start in range(0, 96, 8):  # twelve batches of 8, as the book's loader cuts them
        entries, ids = data[start:start + 8], book_ids[start:start + 8]
        examples = [encode_example(tok, *entry_text(check_entry(e, "alpaca", "x"), "alpaca")) for e in entries]
        mine = collate(examples, EOT, max_length=max_length, mask_prompt=mask_prompt)
        if mask_prompt:
            lengths = [len(tok.encode(format_input(e))) for e in entries]
            book = book_masked(ids, lengths, allowed_max_length=max_length)
        else:
            book = custom_collate_fn(ids, allowed_max_length=max_length)
        for a, b in zip(mine, book):
            assert a.dtype == b.dtype and torch.equal(a, b)
    if max_length == 60:
        assert mine[0].shape[1] == 60  # truncation happened


def test_collate_by_hand():
    x, y = collate([Example([5, 6, 7, 8], ((2, 4),)), [9, EOT]], EOT, mask_prompt=True)
    assert x.tolist() == [[5, 6, 7, 8], [9, EOT, EOT, EOT]]
    # row 0: targets 6 (prompt) masked; 7, 8 (response) and the end-of-text kept
    # row 1: a plain list has no response spans: with masking only its appended end-of-text is learned; the
    # text's own end-of-text is the row's first, the appended one and the padding after it are -100
    assert y.tolist() == [[-100, 7, 8, EOT], [-100, -100, -100, -100]]
    x, y = collate([[1, 2, 3]], EOT, max_length=2)
    assert x.tolist() == [[1, 2]] and y.tolist() == [[2, 3]]
    # the book's rule exactly: a literal end-of-text inside a text is the row's first, the appended one is ignored
    _, y = collate([[1, EOT, 3]], EOT)
    assert y.tolist() == custom_collate_fn([[1, EOT, 3]])[1].tolist() == [[EOT, 3, -100]]


def test_an_example_is_learnable_when_a_response_target_fits():
    example = Example(list(range(10)), ((6, 10),))  # token 6 is the first response token: target 5
    assert learnable(example, 6) and not learnable(example, 5)
    _, y = collate([example], EOT, max_length=5, mask_prompt=True)
    assert (y == -100).all()  # what leaving it out avoids: a batch with nothing to learn has a NaN loss
    assert learnable(Example([1, 2, 3]), 3) and not learnable(Example([1, 2, 3]), 2)  # the end-of-text is a target


def test_split_without_shuffle_is_the_books(book_data):
    data, _ = book_data
    # the book's chapter 7, verbatim
    train_portion = int(len(data) * 0.85)
    test_portion = int(len(data) * 0.1)
    train_data = data[:train_portion]
    test_data = data[train_portion:train_portion + test_portion]
    val_data = data[train_portion + test_portion:]
    train, val, test = split_entries(data, (0.85, 0.05, 0.10), seed=123, shuffle=False)
    assert (train, val, test) == (train_data, val_data, test_data)
    assert (len(train), len(val), len(test)) == (935, 55, 110)


def test_shuffled_split_is_seeded_and_covers_every_entry():
    entries = list(range(100))
    a = split_entries(entries, (0.85, 0.05, 0.10), seed=1)
    assert a == split_entries(entries, (0.85, 0.05, 0.10), seed=1)
    assert a != split_entries(entries, (0.85, 0.05, 0.10), seed=2)
    assert sorted(a[0] + a[1] + a[2]) == entries and [len(s) for s in a] == [85, 5, 10]
    assert a[0] != entries[:85]


# --- the chat template --------------------------------------------------------------------------------------
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]


def test_chat_template_text_spans_and_prompt():
    text, spans = render_chat(CONVERSATION)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
                    "<|im_start|>assistant\n4<|im_end|>\n")
    assert [text[a:b] for a, b in spans] == ["Hello!<|im_end|>", "4<|im_end|>"]
    prompt = chat_prompt(CONVERSATION[:4])
    assert text.startswith(prompt) and text[len(prompt):] == "4<|im_end|>\n"
    assert prompt_and_reference({"messages": CONVERSATION}, "chat") == (prompt, "4")
    assert template_stops("chat") == ("<|im_end|>",) and template_stops("alpaca") == ()
    assert instruction_prompt("alpaca", "Do it.", "x") == alpaca_prompt("Do it.", "x") + ALPACA_RESPONSE
    assert instruction_prompt("chat", "Do it.", "x") == chat_prompt([{"role": "user", "content": "Do it.\n\nx"}])


def test_chat_example_masks_everything_but_the_responses(tok):
    text, spans = render_chat(CONVERSATION)
    example = encode_example(tok, text, spans)
    assert example.ids == tok.encode(text)
    responses = [tok.decode(example.ids[a:b]) for a, b in example.spans]
    assert responses == ["Hello!<|im_end|>", "4<|im_end|>"]
    _, y = collate([example], EOT, mask_prompt=True)
    kept = [t for t in y[0].tolist() if t != -100]
    assert tok.decode(kept) == "Hello!<|im_end|>4<|im_end|><|endoftext|>"


def test_alpaca_entries_read_as_chat():
    entry = check_entry({"instruction": "Add.", "input": "1, 2", "output": "3"}, "chat", "x")
    text, spans = entry_text(entry, "chat")
    assert [text[a:b] for a, b in spans] == ["3<|im_end|>"]
    assert prompt_and_reference(entry, "chat") == (instruction_prompt("chat", "Add.", "1, 2"), "3")


# --- bad input: one clear line naming the file and the entry ------------------------------------------------
@pytest.mark.parametrize("content,suffix,template,message", [
    ("", ".json", "alpaca", "is empty"),
    ("  \n", ".jsonl", "alpaca", "is empty"),
    ('[{"instruction": "a", "output": "b"},\n {"instruction": "a" "output"}]', ".json", "alpaca",
     "is not valid JSON: Expecting ',' delimiter (line 2, column"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": \n', ".jsonl", "alpaca", "line 2 is not valid JSON"),
    ('[{"instruction": "a", "output": "b"}, {"instruction": "a", "input": ""}]', ".json", "alpaca",
     "entry 1 has no 'output'"),
    ('{"instruction": "a"}\n', ".jsonl", "alpaca", "line 1 has no 'output'"),
    ('[{"instruction": "a", "output": 3}]', ".json", "alpaca", "'output' is int, expected text"),
    ('[["a", "b"]]', ".json", "alpaca", "entry 0 is a JSON list"),
    ('{"a": 1}', ".json", "alpaca", "expected a list of entries"),
    ('[]', ".json", "alpaca", "has no entries"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', ".jsonl", "chat", "line 1 has no assistant turn"),
    ('{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n', ".jsonl", "chat",
     "message 1 has the unknown role 'bot'"),
    ('[{"messages": [{"role": "user"}]}]', ".json", "chat", "message 0 must be an object with 'role' and 'content'"),
    ('[{"messages": []}]', ".json", "chat", "'messages' must be a non-empty list"),
    ('[{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]', ".json",
     "alpaca", "finetune chat data with --template chat"),
])
def test_bad_entries_name_the_file_and_entry(tmp_path, content, suffix, template, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_entries(str(path), template)
    text = str(e.value)
    assert message in text and str(path) in text and "\n" not in text


def test_end_of_text_and_generation_settings(tok):
    assert end_of_text_id(tok, {}) == EOT

    class NoEot:
        eot_id = None

    assert end_of_text_id(NoEot(), {"generation": {"eos_token_id": [7, 8]}}) == 7
    with pytest.raises(UserError, match="no <\\|endoftext\\|> and no eos_token_id"):
        end_of_text_id(NoEot(), {"source": "runs/chars", "generation": {}})
    # an imported model's settings are kept, a previous template replaced
    source = {"generation": {"eos_token_id": [1, 2], "chat_template": "{{ x }}", "prompt_template": "alpaca"}}
    assert generation_settings(source, "chat", 1) == {"eos_token_id": [1, 2], "chat_template": "{{ x }}",
                                                      "prompt_template": "chat"}
    assert generation_settings({}, "alpaca", EOT) == {"eos_token_id": EOT, "prompt_template": "alpaca"}


def test_unknown_data_and_good_files(tmp_path):
    with pytest.raises(UserError, match="neither a file nor an instruction dataset"):
        read_entries(str(tmp_path / "missing.json"), "alpaca")
    with pytest.raises(UserError, match="not instruction data"):
        read_entries("sms-spam", "alpaca")
    p = tmp_path / "d.jsonl"
    p.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "input": null, "output": "d"}\n')
    entries, name = read_entries(str(p), "alpaca")
    assert name == "d" and [(e["instruction"], e["input"], e["output"]) for e in entries] == [("a", "", "b"),
                                                                                          ("c", "", "d")]
    with pytest.raises(UserError, match="message 0's content is int"):
        check_messages([{"role": "user", "content": 1}], "x")
    json.dumps(entries)  # entries stay plain JSON (they are written back with the responses)
