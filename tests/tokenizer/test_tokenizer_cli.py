"""`scratchllm tokenizer ...` through scratchllm.cli.main: outputs, round trips, one-line errors."""

import io
import subprocess
import sys

import pytest

from scratchllm.cli import main
from scratchllm.tokenizer import load


@pytest.fixture
def corpus(tmp_path, shared_data):
    d = tmp_path / "corpus"
    d.mkdir()
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (d / "a.txt").write_text(text[:60_000], encoding="utf-8")
    (d / "b.txt").write_text(text[60_000:120_000], encoding="utf-8")
    (d / "notes.md").write_text("ignored: not .txt", encoding="utf-8")
    return d


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_encode_decode_round_trip(capsys, corpus, tmp_path, monkeypatch):
    out_path = tmp_path / "tok.json"
    rc, out, err = run(capsys, "tokenizer", "train", str(corpus), "--vocab-size", "500", "--out", str(out_path),
                       "--hf-out", str(tmp_path / "tokenizer.json"), "--no-progress")
    assert rc == 0 and "500 ids from 2 file(s)" in out and out_path.is_file()
    assert (tmp_path / "tokenizer.json").is_file()
    text = "O Romeo, Romeo! 😀 wherefore art thou"
    rc, out, _ = run(capsys, "tokenizer", "encode", "--tokenizer", str(out_path), text)
    ids = [int(x) for x in out.split()]
    assert rc == 0 and ids == load(out_path).encode(text)
    rc, out2, _ = run(capsys, "tokenizer", "encode", "--tokenizer", str(out_path), "--engine", "python", text)
    assert out2 == out
    rc, back, _ = run(capsys, "tokenizer", "decode", "--tokenizer", str(out_path), *out.split())
    assert rc == 0 and back == text + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(out.encode())))
    rc, back, _ = run(capsys, "tokenizer", "decode", "--tokenizer", str(out_path))
    assert back == text + "\n"


@pytest.mark.parametrize("kind", ["char", "words", "wordpiece"])
def test_train_other_kinds(capsys, corpus, tmp_path, kind):
    size = ["--vocab-size", "300"] if kind == "wordpiece" else []
    rc, out, _ = run(capsys, "tokenizer", "train", str(corpus / "a.txt"), "--kind", kind, *size,
                     "--out", str(tmp_path), "--no-progress")
    assert rc == 0 and load(tmp_path).kind == kind


def test_gpt2_encode_from_file_and_stdin(capsys, shared_data, tmp_path, monkeypatch):
    f = tmp_path / "in.txt"
    f.write_text("Hello world", encoding="utf-8")
    rc, out, _ = run(capsys, "tokenizer", "encode", "--tokenizer", "gpt2", "--data-dir", str(shared_data),
                     "--file", str(f))
    assert rc == 0 and out.split() == ["15496", "995"]
    monkeypatch.setenv("SCRATCHLLM_DATA_DIR", str(shared_data))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hello world<|endoftext|>")))
    rc, out, _ = run(capsys, "tokenizer", "encode", "--tokenizer", "gpt2", "--allow-special")
    assert out.split() == ["15496", "995", "50256"]


def test_gpt2_files_missing_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("SCRATCHLLM_DATA_DIR", raising=False)
    rc, out, err = run(capsys, "tokenizer", "encode", "--tokenizer", "gpt2", "--data-dir", str(tmp_path), "hi")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "gpt2/encoder.json" in err and "SCRATCHLLM_DATA_DIR" in err
    assert "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/encoder.json" in err


def test_bad_inputs_are_one_line_and_write_nothing(capsys, tmp_path):
    out_path = tmp_path / "out.json"
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"plain ascii then caf" + "é".encode("latin-1") + b" more")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    small = tmp_path / "small.txt"
    small.write_text("hello hello", encoding="utf-8")
    cases = [
        ([str(bad)], "latin1.txt is not UTF-8 text: byte offset 20"),
        ([str(empty)], "empty.txt is empty"),
        ([str(small), "--vocab-size", "100"], "smaller than the byte-level base alphabet"),
        ([str(small), "--vocab-size", "5000"], "supports only 5"),
        ([str(tmp_path / "nope.txt")], "not found"),
    ]
    for args, msg in cases:
        rc, out, err = run(capsys, "tokenizer", "train", *args, "--out", str(out_path), "--no-progress")
        assert rc == 2 and msg in err and err.count("\n") == 1, (args, err)
        assert not out_path.exists() and list(tmp_path.glob(".out.json*")) == []
    rc, out, err = run(capsys, "tokenizer", "train", str(bad), "--errors", "replace", "--vocab-size", "260",
                       "--out", str(out_path), "--no-progress")
    assert rc == 0 and out_path.is_file()
    rc, _, err = run(capsys, "tokenizer", "decode", "--tokenizer", str(out_path), "1", "x2")
    assert rc == 2 and "'x2' is not a token id" in err
    rc, _, err = run(capsys, "tokenizer", "decode", "--tokenizer", str(out_path), "99999")
    assert rc == 2 and "outside this tokenizer's vocabulary" in err
    rc, _, err = run(capsys, "tokenizer", "encode", "--tokenizer", str(out_path), "a<|endoftext|>")
    assert rc == 2 and "--allow-special" in err


def test_inspect_table(capsys, corpus, shared_data):
    rc, out, _ = run(capsys, "tokenizer", "inspect", str(corpus / "a.txt"), "--vocab-size", "300")
    assert rc == 0
    for name in ("char", "words", "bpe-300", "wordpiece-300", "tokens/byte", "sample: 'First Citizen:'"):
        assert name in out
    rc, out, _ = run(capsys, "tokenizer", "inspect", "--tokenizer", "gpt2", "--data-dir", str(shared_data),
                     "--sample", "Hello world 😀")
    assert rc == 0 and "Hello| world| \\xf0\\x9f\\x98|\\x80" in out


def test_help_imports_no_torch():
    code = "import sys; from scratchllm.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
