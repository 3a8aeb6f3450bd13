"""`scratchllm generate`: checkpoint folders, presets, prompts from argument/file/stdin, --batch JSONL,
the one UTF-8 rule (cli.inputs, shared with `tokenizer encode`), stop strings as given, bad input."""

import io
import json

import pytest
import torch
from gen_helpers import tiny_model

from scratchllm.checkpoint import save_checkpoint
from scratchllm.cli import main
from scratchllm.tokenizer.char import CharTokenizer

TEXT = "to be or not to be, that is the question\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tok = CharTokenizer.train(TEXT)  # no <|endoftext|>: greedy output runs the full length
    model = tiny_model(dtype=torch.float32, vocab_size=tok.vocab_size)
    folder = tmp_path_factory.mktemp("run") / "ck"
    save_checkpoint(folder, model, tokenizer=tok)
    return folder


def run_cli(argv, capsys):
    rc = main(["generate", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_generate_from_checkpoint_is_reproducible(checkpoint, capsys):
    argv = ["--model", str(checkpoint), "to be", "--max-new-tokens", "20", "--seed", "5", "--temperature", "0.8"]
    rc, out1, err = run_cli(argv, capsys)
    assert rc == 0, err
    assert out1.startswith("to be") and len(out1) > len("to be")
    assert set(out1) <= set(TEXT) | {"\n"}
    rc, out2, _ = run_cli([*argv, "--stream"], capsys)
    assert rc == 0 and out2 == out1  # streaming prints the same text
    rc, out3, _ = run_cli([*argv[:-2], "--temperature", "0.8", "--no-echo"], capsys)
    assert out3 == out1[len("to be"):]


def test_overrides_and_stop(checkpoint, capsys):
    rc, out, err = run_cli(["--model", str(checkpoint), "to", "--max_new_tokens", "30", "--temperature", "0",
                            "--no-echo"], capsys)
    assert rc == 0, err
    assert len(out) == 31  # 30 characters + newline
    stop = out[5:7]
    rc, cut, _ = run_cli(["--model", str(checkpoint), "to", "--max-new-tokens", "30", "--temperature", "0",
                          "--no-echo", "--stop", stop], capsys)
    assert cut == out[: out.index(stop)] + "\n"


def test_prompt_from_file_and_stdin(checkpoint, capsys, tmp_path, monkeypatch):
    f = tmp_path / "p.txt"
    f.write_text("not to", encoding="utf-8")
    rc, out, _ = run_cli(["--model", str(checkpoint), "--file", str(f), "--max-new-tokens", "3"], capsys)
    assert rc == 0 and out.startswith("not to")
    monkeypatch.setattr("sys.stdin", io.StringIO("that is"))
    rc, out, _ = run_cli(["--model", str(checkpoint), "--max-new-tokens", "3"], capsys)
    assert rc == 0 and out.startswith("that is")


def test_preset_with_random_weights(capsys):
    rc, out, err = run_cli(["--model", "tiny", "Hello", "--max-new-tokens", "5", "--seed", "0"], capsys)
    assert rc == 0, err
    assert out.startswith("Hello")
    assert "RANDOM weights" in err


@pytest.mark.parametrize("flag,value,field", [
    ("--top-p", "1.5", "top_p"), ("--top-p", "0", "top_p"), ("--temperature", "-1", "temperature"),
    ("--top-k", "0", "top_k"), ("--repetition-penalty", "0", "repetition_penalty"),
])
def test_invalid_sampling_options_give_one_line(checkpoint, capsys, flag, value, field):
    rc, out, err = run_cli(["--model", str(checkpoint), "x", flag, value], capsys)
    assert rc == 2
    assert err.startswith("error: ") and field in err and err.count("\n") == 1


def test_missing_checkpoint_and_no_runs(tmp_path, capsys, monkeypatch):
    rc, _, err = run_cli(["--model", str(tmp_path / "nope"), "x"], capsys)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    monkeypatch.chdir(tmp_path)
    rc, _, err = run_cli(["x"], capsys)
    assert rc == 2 and "no trained run" in err and err.count("\n") == 1


def test_latest_run_is_the_default(tmp_path, capsys, monkeypatch):
    from scratchllm.train.checkpoint import Checkpoints

    tok = CharTokenizer.train(TEXT)
    Checkpoints(tmp_path / "runs" / "r1").save(3, tiny_model(dtype=torch.float32, vocab_size=tok.vocab_size),
                                               tokenizer=tok)
    (tmp_path / "runs" / "latest").write_text("r1\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(["to be", "--max-new-tokens", "4"], capsys)
    assert rc == 0, err
    assert out.startswith("to be") and "step-0000003" in err


def test_preset_uses_gpt2_tokenizer_from_data_dir(shared_data, capsys):
    rc, out, err = run_cli(["--model", "tiny", "--data-dir", str(shared_data), "Hello 🙂", "--max-new-tokens", "4",
                            "--temperature", "0"], capsys)
    assert rc == 0, err
    assert "GPT-2's tokenizer" in err and out.startswith("Hello 🙂")


# --- --batch: one prompt a line in, one JSON object a line out -----------------------------------------
def test_batch_jsonl_equals_each_prompt_alone(checkpoint, capsys, tmp_path):
    f = tmp_path / "prompts.txt"
    lines = ["to be", "", "or not to be, that is", "t", "question\r"]  # an empty line is skipped; \r\n ends a line
    f.write_bytes("\n".join(lines).encode() + b"\n")
    argv = ["--model", str(checkpoint), "--max-new-tokens", "12", "--temperature", "0"]
    rc, out, err = run_cli([*argv, "--file", str(f), "--batch", "--batch-size", "2"], capsys)
    assert rc == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["line"] for r in records] == [1, 3, 4, 5]
    assert [r["prompt"] for r in records] == ["to be", "or not to be, that is", "t", "question"]
    for r in records:
        rc, alone, _ = run_cli([*argv, "--no-echo", r["prompt"]], capsys)
        assert rc == 0 and r["completion"] + "\n" == alone
        assert r["prompt_tokens"] == len(r["prompt"]) and r["completion_tokens"] == 12  # one char a token
        assert r["finish_reason"] == "length"  # the char tokenizer has no <|endoftext|>
    # a stop string ends a row on its own; the rest run on
    stop = records[0]["completion"][3:5]
    rc, out, err = run_cli([*argv, "--file", str(f), "--batch", "--stop", stop], capsys)
    assert rc == 0, err
    cut = [json.loads(line) for line in out.splitlines()]
    assert cut[0]["completion"] == records[0]["completion"][:3] and cut[0]["finish_reason"] == "stop"
    for r, c in zip(records, cut):
        assert c["completion"] == r["completion"].split(stop)[0]
        assert c["finish_reason"] == ("stop" if stop in r["completion"] else "length")


def test_batch_reads_stdin_and_refuses_what_it_cannot_do(checkpoint, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"to\nbe\n")))
    rc, out, err = run_cli(["--model", str(checkpoint), "--batch", "--max-new-tokens", "3"], capsys)
    assert rc == 0, err
    assert [json.loads(line)["prompt"] for line in out.splitlines()] == ["to", "be"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    for extra, msg in [(["prompt"], "not from an argument"), (["--stream"], "drop --stream"),
                       (["--batch-size", "0"], "--batch-size must be >= 1"), ([], "has no prompts")]:
        rc, out, err = run_cli(["--model", str(checkpoint), "--batch", "--file", str(empty), *extra], capsys)
        assert rc == 2 and msg in err and err.startswith("error: ") and err.count("\n") == 1, (extra, err)


# --- one UTF-8 rule for every source -----------------------------------------------------------------------
LATIN1 = b"to be caf\xe9 or not"  # byte 9 is latin-1's e-acute, not UTF-8


def test_non_utf8_file_and_stdin_are_one_error_line(checkpoint, capsys, tmp_path, monkeypatch):
    f = tmp_path / "latin1.txt"
    f.write_bytes(LATIN1)
    for extra in ([], ["--batch"]):
        rc, out, err = run_cli(["--model", str(checkpoint), "--file", str(f), *extra], capsys)
        assert rc == 2 and out == "" and err.count("\n") == 1
        assert err.startswith(f"error: {f} is not UTF-8 text: byte offset 9 (0xe9)")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(LATIN1)))
    rc, out, err = run_cli(["--model", str(checkpoint)], capsys)
    assert rc == 2 and err.startswith("error: standard input is not UTF-8 text: byte offset 9") and err.count("\n") == 1
    bad_arg = LATIN1.decode("utf-8", errors="surrogateescape")  # how Python passes such bytes in argv
    rc, out, err = run_cli(["--model", str(checkpoint), bad_arg], capsys)
    assert rc == 2 and err.startswith("error: the prompt argument is not UTF-8 text: byte offset 9 (0xe9)")
    assert err.count("\n") == 1
    # --errors replace opts in to U+FFFD, as for the tokenizer command
    rc, out, err = run_cli(["--model", "tiny", "--file", str(f), "--errors", "replace", "--max-new-tokens", "2"],
                           capsys)
    assert rc == 0, err
    assert out.startswith("to be caf\ufffd or not")


def test_tokenizer_encode_follows_the_same_rule(capsys, tmp_path, monkeypatch):
    from scratchllm.tokenizer.char import CharTokenizer

    tok_path = tmp_path / "tok.json"
    CharTokenizer.train("to be caf or nt\ufffd").save(tok_path)
    f = tmp_path / "latin1.txt"
    f.write_bytes(LATIN1)
    rc = main(["tokenizer", "encode", "--tokenizer", str(tok_path), "--file", str(f)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {f} is not UTF-8 text: byte offset 9 (0xe9)") and err.count("\n") == 1
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(LATIN1)))
    rc = main(["tokenizer", "encode", "--tokenizer", str(tok_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: standard input is not UTF-8 text: byte offset 9") and err.count("\n") == 1
    bad_arg = LATIN1.decode("utf-8", errors="surrogateescape")  # how Python passes such bytes in argv
    rc = main(["tokenizer", "encode", "--tokenizer", str(tok_path), bad_arg])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: the text argument is not UTF-8 text: byte offset 9 (0xe9)")
    assert err.count("\n") == 1
    rc = main(["tokenizer", "encode", "--tokenizer", str(tok_path), "--errors", "replace", bad_arg])
    out, err = capsys.readouterr()
    assert rc == 0, err
    replaced = CharTokenizer.train("to be caf or nt\ufffd").encode("to be caf\ufffd or not")
    assert [int(i) for i in out.split()] == replaced


# --- --runs-dir, also spelled --runs_dir as train spells it --------------------------------------------------
def test_runs_dir_in_both_spellings(tmp_path, capsys, monkeypatch):
    from scratchllm.train.checkpoint import Checkpoints

    tok = CharTokenizer.train(TEXT)
    Checkpoints(tmp_path / "elsewhere" / "r1").save(2, tiny_model(dtype=torch.float32, vocab_size=tok.vocab_size),
                                                    tokenizer=tok)
    (tmp_path / "elsewhere" / "latest").write_text("r1\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # no ./runs here
    outs = []
    for flag in ("--runs-dir", "--runs_dir"):
        rc, out, err = run_cli([flag, "elsewhere", "to be", "--max-new-tokens", "4", "--temperature", "0"], capsys)
        assert rc == 0, err
        assert "step-0000002" in err
        outs.append(out)
    assert outs[0] == outs[1]
    rc, _, err = run_cli(["to be"], capsys)
    assert rc == 2 and "no trained run" in err


# --- stop strings are taken as given -------------------------------------------------------------------------
@pytest.fixture
def scripted(monkeypatch):
    """`generate` on a scripted model that writes SCRIPT whatever the prompt (the CLI's own wiring)."""
    from gen_helpers import ScriptedModel, byte_tokenizer

    tok = byte_tokenizer()
    from scratchllm.generate.engine import TOKENIZER_EOS

    monkeypatch.setattr("scratchllm.cli.generate.load",
                        lambda args: (ScriptedModel([list(SCRIPT)], vocab_size=tok.vocab_size), tok, "scripted",
                                      TOKENIZER_EOS))


SCRIPT = b"Hi there.  User: no\n\nmore  text"


@pytest.mark.parametrize("stop,want", [
    (r"\n\n", "Hi there.  User: no"),  # typed in a shell as '\n\n': two newlines
    ("\n\n", "Hi there.  User: no"),  # real newlines ($'\n\n')
    (" User:", "Hi there. "),  # a leading space is part of the stop string
    ("  ", "Hi there."),  # so is a stop string of spaces only
    ("\nmore", "Hi there.  User: no\n"),  # and a leading newline
])
def test_stop_strings_are_taken_as_given(scripted, capsys, stop, want):
    rc, out, err = run_cli(["x", "--no-echo", "--temperature", "0", "--max-new-tokens", str(len(SCRIPT)),
                            "--stop", stop], capsys)
    assert rc == 0, err
    assert out == want + "\n"


def test_several_stop_strings_and_an_empty_one(scripted, capsys):
    rc, out, err = run_cli(["x", "--no-echo", "--temperature", "0", "--max-new-tokens", "40", "--stop", "\n\n",
                            "--stop", " User:"], capsys)
    assert rc == 0 and out == "Hi there. \n", err
    rc, out, err = run_cli(["x", "--no-echo", "--stop", ""], capsys)
    assert rc == 2 and err.startswith("error: ") and "stop" in err and err.count("\n") == 1
