"""`scratchllm generate`: checkpoint folders, presets, prompts from argument/file/stdin, bad input."""

import io

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
