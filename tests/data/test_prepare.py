"""The text pipeline job: fetch -> clean -> tokenizer -> shards, statistics, and reuse of a finished folder."""

import json
import time

import numpy as np
import pytest

from scratchllm.config.data import DataConfig
from scratchllm.config.tokenizer import TokenizerConfig
from scratchllm.data.prepare import config_hash, prepare
from scratchllm.errors import ConfigError, UserError


@pytest.fixture
def corpus(tmp_path, plays):
    d = tmp_path / "corpus"
    d.mkdir()
    for i, text in enumerate(plays * 4):
        (d / f"play{i:02d}.txt").write_text(text.replace("ACT I.", f"ACT {i}."))
    (d / "zz_copy.txt").write_text(plays[0].replace("ACT I.", "ACT 0.") + "\r\n")  # an exact duplicate of play00
    return d


def test_prepare_char_pipeline_writes_everything(tmp_path, corpus, plays, capsys):
    cfg = DataConfig(dataset=str(corpus), tokenizer=TokenizerConfig(kind="char"), val_fraction=0.25)
    out = tmp_path / "prep"
    p = prepare(cfg, out)
    assert not p.reused and p.dir == out
    assert sorted(f.name for f in out.iterdir()) == ["clean_report.json", "meta.json", "tokenizer.scratchllm.json",
                                                      "train.bin", "val.bin"]
    assert p.meta["documents"] == {"total": 12, "train": 9, "val": 3}
    report = json.loads((out / "clean_report.json").read_text())
    copy_bytes = len(plays[0].replace("ACT I.", "ACT 0.").encode()) + 1  # "\r\n" became "\n"
    assert report["exact_duplicates"] == [{"doc": "zz_copy.txt", "same_as": "play00.txt", "bytes": copy_bytes}]
    assert p.tokenizer.kind == "char" and p.tokenizer.eot_id is not None
    assert int((np.asarray(p.train) == p.tokenizer.eot_id).sum()) == 9 and len(p.val) == p.meta["tokens"]["val"]
    assert set(p.timings) == {"fetch", "read", "clean", "tokenizer", "shards"}
    printed = capsys.readouterr().out
    assert "exact duplicates removed: 1" in printed and "train tokens" in printed and "tokens per byte" in printed


def test_prepare_reuses_a_finished_folder_and_rebuilds_on_change(tmp_path, corpus, capsys):
    cfg = DataConfig(dataset=str(corpus), tokenizer=TokenizerConfig(kind="char"))
    out = tmp_path / "prep"
    first = prepare(cfg, out, progress=False)
    stamp = (out / "train.bin").stat().st_mtime_ns
    again = prepare(cfg.replace(workers=2, data_dir=str(tmp_path)), out)  # settings that do not change the data
    assert again.reused and (out / "train.bin").stat().st_mtime_ns == stamp
    assert np.array_equal(again.train, first.train) and "reusing" in capsys.readouterr().out
    changed = prepare(cfg.replace(val_fraction=0.25), out, progress=False)
    assert not changed.reused and changed.meta["prepare"]["config_hash"] != first.meta["prepare"]["config_hash"]
    (corpus / "play99.txt").write_text("A new play.")  # new input: not the same preparation
    assert config_hash(cfg) != first.meta["prepare"]["config_hash"]


def test_preparations_of_one_folder_at_once_take_turns(tmp_path, corpus, monkeypatch):
    """Four threads preparing the same folder at once (a sweep's parallel trials): one prepares it, the others wait
    their turn and reuse it; none reads a folder another is writing."""
    import threading

    import scratchllm.data.prepare as P

    writes, inner = [], P._prepare_into

    def slow_prepare(*args, **kwargs):  # a preparation long enough for the others to arrive meanwhile
        writes.append(threading.get_ident())
        prepared = inner(*args, **kwargs)
        time.sleep(0.2)
        return prepared

    monkeypatch.setattr(P, "_prepare_into", slow_prepare)
    cfg = DataConfig(dataset=str(corpus), tokenizer=TokenizerConfig(kind="char"))
    out, results, errors = tmp_path / "prep", [], []

    def run():
        try:
            results.append(prepare(cfg, out, progress=False))
        except Exception as e:  # noqa: BLE001 (reported by the assertion below)
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(writes) == 1
    assert sorted(p.reused for p in results) == [False, True, True, True]
    assert all(np.array_equal(p.train, results[0].train) for p in results)


SLOW_PREPARE = """
import sys, time
import scratchllm.data.prepare as P
from scratchllm.config.data import DataConfig
from scratchllm.config.tokenizer import TokenizerConfig
inner = P._prepare_into
def slow(*args, **kwargs):  # the folder has no meta.json yet: the other process, arriving now, must wait
    time.sleep(1.5)
    return inner(*args, **kwargs)
P._prepare_into = slow
p = P.prepare(DataConfig(dataset=sys.argv[1], tokenizer=TokenizerConfig(kind="char")), sys.argv[2], progress=False)
print("reused" if p.reused else "prepared", int(p.train.sum()))
"""


def test_preparations_of_one_folder_in_two_processes_take_turns(tmp_path, corpus):
    """Two processes preparing the same folder at once: one prepares it, the other waits and reuses it; nothing
    is left beside the folder."""
    import subprocess
    import sys

    out = tmp_path / "prep"
    procs = [subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(corpus), str(out)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    said = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in said]
    words = sorted(o.split()[0] for o, _ in said)
    assert words == ["prepared", "reused"] and len({o.split()[1] for o, _ in said}) == 1
    assert sorted(f.name for f in tmp_path.iterdir()) == ["corpus", "prep"]


def test_prepare_bpe_on_the_verdict(tmp_path, shared_data):
    cfg = DataConfig(dataset="the-verdict", data_dir=str(shared_data), tokenizer=TokenizerConfig(vocab_size=300))
    p = prepare(cfg, tmp_path / "verdict", progress=False)
    text = (shared_data / "the-verdict.txt").read_text(encoding="utf-8")
    ids = p.tokenizer.encode(text) + [p.tokenizer.eot_id]
    assert p.meta["split"]["by"] == "tokens" and np.concatenate([p.train, p.val]).tolist() == ids
    assert p.tokenizer.vocab_size == 300 and p.meta["tokens"]["total"] < 0.75 * len(text.encode())


def test_prepare_refuses_bad_input_and_writes_nothing(tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(UserError, match="is empty"):
        prepare(DataConfig(dataset=str(tmp_path / "blank.txt")), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="data.val_fraction must be in"):
        DataConfig(val_fraction=1.5)
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        prepare(DataConfig(dataset="nope"), tmp_path / "out", progress=False)
