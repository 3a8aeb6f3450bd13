"""DPO's preference data: the two entry formats, JSON and JSON Lines, token ids, truncation, the split,
and bad input (one `error:` line naming the file and entry, exit 2, nothing written)."""

import json
import traceback

import pytest
from finetune_helpers import gpt2_tokenizer

from scratchllm.cli import main
from scratchllm.errors import UserError
from scratchllm.finetune.dpo import encode_pairs, read_preferences
from scratchllm.finetune.instruct import split_entries as split_pairs
from scratchllm.generate.templates import ALPACA_RESPONSE, alpaca_prompt

ENTRIES = [
    {"instruction": "Name a colour.", "input": "", "chosen": "Blue.", "rejected": "No."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "chosen": "5", "rejected": "23", "output": "5"},
]


@pytest.fixture(scope="module")
def tok(shared_data):
    return gpt2_tokenizer(shared_data)


def test_json_and_jsonl_entries_become_alpaca_prompts_and_responses(tmp_path, tok):
    as_json, as_jsonl = tmp_path / "p.json", tmp_path / "p.jsonl"
    as_json.write_text(json.dumps(ENTRIES))
    as_jsonl.write_text("\n".join(json.dumps(e) for e in ENTRIES) + "\n\n")
    entries = read_preferences(str(as_json))
    assert read_preferences(str(as_jsonl))[1][1:] == entries[1][1:]
    assert [e[0] for e in entries] == [f"{as_json} entry 0", f"{as_json} entry 1"]
    prompt = alpaca_prompt("Add the numbers.", "2 and 3") + ALPACA_RESPONSE
    assert entries[1][1:] == (prompt, "5", "23")
    pairs, stats = encode_pairs(entries, tok, 50256, max_length=1024)
    p = tok.encode(prompt)
    assert pairs[1].chosen == p + tok.encode("5") + [50256]
    assert pairs[1].rejected == p + tok.encode("23") + [50256]
    assert pairs[1].prompt_len == len(p)
    assert stats == {"same": 0, "truncated": 0, "no_response": 0}


def test_a_ready_prompt_is_used_as_it_is(tmp_path, tok):
    path = tmp_path / "rated.jsonl"
    path.write_text(json.dumps({"prompt": "Q: hi\nA:", "chosen": " hello", "rejected": " go away", "rater": 7}))
    [(where, prompt, chosen, rejected)] = read_preferences(str(path))
    assert (where, prompt, chosen, rejected) == (f"{path} line 1", "Q: hi\nA:", " hello", " go away")


def test_the_books_data_pairs_truncation_and_split(tok):
    entries = read_preferences("alpaca-book-preference")
    assert len(entries) == 1100 and entries[0][0] == "alpaca-book-preference entry 0"
    pairs, stats = encode_pairs(entries, tok, 50256, max_length=1024)
    assert stats["same"] == sum(e[2] == e[3] for e in entries) > 0  # the book's data has a few equal pairs
    assert len(pairs) == 1100 - stats["same"]
    short, cut = encode_pairs(entries[:50], tok, 50256, max_length=64)
    assert cut["truncated"] > 0 and all(p.length <= 64 for p in short)
    assert len(short) + cut["no_response"] + cut["same"] == 50
    train, val, test = split_pairs(list(range(1100)), (0.85, 0.05, 0.10), seed=123)
    assert (len(train), len(val), len(test)) == (935, 55, 110)  # the book's sizes
    assert sorted(train + val + test) == list(range(1100))
    assert split_pairs(list(range(1100)), (0.85, 0.05, 0.10), seed=123)[0] == train
    assert split_pairs(list(range(1100)), (0.85, 0.05, 0.10), seed=7)[0] != train


def test_a_special_token_in_the_data_names_the_entry(tmp_path, tok):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{**ENTRIES[0], "chosen": "Blue.<|endoftext|>"}]))
    with pytest.raises(UserError, match=r"p\.json entry 0: the text contains the special token"):
        encode_pairs(read_preferences(str(path)), tok, 50256, 1024)


GOOD = json.dumps(ENTRIES[0])
# (file name, content, what the error line says besides the file's name)
BAD = [
    ("empty.json", "", "is empty"),
    ("blank.jsonl", "\n  \n", "is empty"),
    ("list.json", "[]", "holds no entries"),
    ("broken.json", '[{"instruction": "a", "chosen": "b",\n "rejected" "c"}]', "is not valid JSON"),
    ("broken.jsonl", GOOD + "\n{not json}\n", "line 2 is not valid JSON"),
    ("dict.json", '{"data": [1, 2]}', "line 1"),
    ("no-chosen.json", json.dumps([ENTRIES[0], {"instruction": "x", "rejected": "y"}]), "entry 1 has no 'chosen'"),
    ("no-rejected.jsonl", json.dumps({"instruction": "x", "chosen": "y"}), "line 1 has no 'rejected'"),
    ("neither.json", json.dumps([{"chosen": "a", "rejected": "b"}]), "exactly one of 'instruction'"),
    ("both.json", json.dumps([{**ENTRIES[0], "prompt": "p"}]), "exactly one of 'instruction'"),
    ("not-object.json", json.dumps([ENTRIES[0], "text"]), "entry 1: expected an object"),
    ("number.json", json.dumps([{**ENTRIES[0], "chosen": 3}]), "field 'chosen' is int"),
    ("blank-response.json", json.dumps([{**ENTRIES[0], "rejected": "  "}]), "field 'rejected' is empty"),
    ("same.json", json.dumps([{**e, "rejected": e["chosen"]} for e in ENTRIES]), "chosen equals its rejected"),
    ("special.json", json.dumps([{**ENTRIES[0], "chosen": "<|endoftext|>"}]), "entry 0: the text contains"),
]


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("name,content,message", BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_one_error_line_exit_2_and_nothing_written(name, content, message, base_model, tmp_path, capsys):
    data = tmp_path / name
    data.write_text(content)
    before = files_under(tmp_path)
    try:
        rc = main(["finetune", "dpo", "--init-from", str(base_model), "--data", str(data),
                   "--runs_dir", str(tmp_path / "runs"), "--quiet"])
    except BaseException:
        pytest.fail(f"raised instead of one error line:\n{traceback.format_exc()}")
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if "error:" in line]
    assert rc == 2, err
    assert len(errors) == 1, err
    assert name in errors[0] and message in errors[0], errors[0]
    assert "Traceback" not in out + err
    assert files_under(tmp_path) == before


def test_a_missing_file_too_few_pairs_and_bad_settings(base_model, tmp_path, capsys):
    assert main(["finetune", "dpo", "--init-from", str(base_model), "--data", str(tmp_path / "nope.json"),
                 "--runs_dir", str(tmp_path / "runs")]) == 2
    assert "no such file, and not a named dataset" in capsys.readouterr().err
    data = tmp_path / "p.json"
    data.write_text(json.dumps(ENTRIES))
    assert main(["finetune", "dpo", "--init-from", str(base_model), "--data", str(data), "--max_length", "4096",
                 "--runs_dir", str(tmp_path / "runs")]) == 2
    assert "longer than the model's context of 128" in capsys.readouterr().err
    assert main(["finetune", "dpo", "--init-from", str(base_model), "--data", str(data),
                 "--runs_dir", str(tmp_path / "runs")]) == 2  # 2 pairs, a batch of 8
    assert "fewer than one batch of 8; lower train.batch_size" in capsys.readouterr().err
    assert main(["finetune", "dpo", "--init-from", str(base_model), "--beta", "0"]) == 2
    assert "beta must be positive" in capsys.readouterr().err
