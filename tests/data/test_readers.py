"""Local files as corpora: text, folders, JSONL, JSON, CSV; and the one-line errors for bad input."""

import json

import pytest

from scratchllm.data.sources import load_corpus, load_documents
from scratchllm.errors import UserError


def test_text_file_is_one_document_or_split(tmp_path):
    p = tmp_path / "book.txt"
    p.write_text("Chapter one.\n\nChapter two.\n\n\n")
    assert load_documents(p) == ["Chapter one.\n\nChapter two.\n\n\n"]
    assert load_documents(p, separator="\n\n") == ["Chapter one.", "Chapter two."]


def test_folder_reads_text_files_sorted_and_skips_empty_ones(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.md").write_text("first")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "data.bin").write_bytes(b"\x00\xff")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("third")
    docs = load_corpus(tmp_path)
    assert [d.name for d in docs] == ["a.md", "b.txt", "sub/c.txt"]
    assert [d.text for d in docs] == ["first", "second", "third"]


def test_jsonl_json_and_csv_by_text_field(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    assert load_documents(tmp_path / "d.jsonl", text_field="body") == ["one", "two"]
    with pytest.raises(UserError, match=r"d.jsonl line 1 has no field 'text' \(fields: body\); pass --text-field"):
        load_documents(tmp_path / "d.jsonl")
    (tmp_path / "d.json").write_text(json.dumps([{"text": "a"}, {"text": "b"}]))
    assert load_documents(tmp_path / "d.json") == ["a", "b"]
    (tmp_path / "d.csv").write_text('id,text\n1,"hello, world"\n2,"two\nlines"\n3,\n')
    assert load_documents(tmp_path / "d.csv") == ["hello, world", "two\nlines"]
    with pytest.raises(UserError, match="no column 'body'"):
        load_documents(tmp_path / "d.csv", text_field="body")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(UserError, match="bad.jsonl line 2 is not valid JSON"):
        load_documents(tmp_path / "bad.jsonl")


def test_not_utf8_names_file_and_byte_offset(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(UserError) as e:
        load_documents(p)
    assert str(e.value).startswith(f"{p} is not valid UTF-8 at byte offset 3") and "--errors replace" in str(e.value)
    assert load_documents(p, errors="replace") == ["caf\ufffd au lait"]


def test_empty_and_missing_files_are_one_line(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="empty.txt is empty"):
        load_documents(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="not found"):
        load_documents(tmp_path / "nope.txt")
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError, match="has no text files"):
        load_documents(tmp_path / "folder")
