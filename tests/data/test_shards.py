"""Token shards: ids equal to the tokenizer's, dtype, splits, workers, meta.json, nothing half-written."""

import json

import numpy as np
import pytest

from scratchllm.data.shards import dtype_for, open_split, read_meta, write_shards
from scratchllm.errors import UserError
from scratchllm.tokenizer import load
from scratchllm.tokenizer.char import CharTokenizer


def _stream(docs, tok):
    out = []
    for d in docs:
        out += tok.encode(d) + [tok.eot_id]
    return out


def test_round_trip_by_document(tmp_path, plays, char_tok):
    docs = plays * 4  # 12 documents
    meta = write_shards(docs, char_tok, tmp_path, val_fraction=0.25, split_by="document", seed=0, progress=False)
    train, val = open_split(tmp_path, "train"), open_split(tmp_path, "val")
    assert train.dtype == np.uint16 and isinstance(train, np.memmap)
    assert meta["documents"] == {"total": 12, "train": 9, "val": 3}
    assert meta["tokens"]["train"] == len(train) and meta["tokens"]["val"] == len(val)
    assert len(train) + len(val) == len(_stream(docs, char_tok))
    # each split is its documents' ids, in order, each followed by <|endoftext|>
    eot = char_tok.eot_id
    assert int(train[-1]) == eot and int(val[-1]) == eot
    ends = np.flatnonzero(np.asarray(val) == eot)
    val_docs = [char_tok.decode(np.asarray(val[s + 1 if i else 0:e]).tolist())
                for i, (s, e) in enumerate(zip(np.r_[-1, ends[:-1]], ends))]
    assert len(val_docs) == 3 and all(d in plays for d in val_docs)
    assert load(tmp_path).encode("ACT") == char_tok.encode("ACT")
    assert read_meta(tmp_path)["tokenizer"]["eot_id"] == eot and meta["split"]["by"] == "document"


def test_split_by_tokens_is_the_tail_of_the_stream(tmp_path, plays, char_tok):
    meta = write_shards(plays, char_tok, tmp_path, val_fraction=0.1, split_by="tokens", progress=False)
    stream = _stream(plays, char_tok)
    train, val = open_split(tmp_path, "train"), open_split(tmp_path, "val")
    n_val = int(np.ceil(len(stream) * 0.1))
    assert np.asarray(train).tolist() == stream[:-n_val] and np.asarray(val).tolist() == stream[-n_val:]
    assert meta["split"]["by"] == "tokens" and meta["documents"]["train"] is None


def test_auto_split_and_no_validation(tmp_path, plays, char_tok):
    meta = write_shards(plays[:1], char_tok, tmp_path / "one", val_fraction=0.1, progress=False)
    assert meta["split"]["by"] == "tokens" and meta["tokens"]["val"] > 0  # one document: split the stream
    meta = write_shards(plays, char_tok, tmp_path / "none", val_fraction=0.0, progress=False)
    assert meta["tokens"]["val"] == 0 and len(open_split(tmp_path / "none", "val")) == 0
    assert np.asarray(open_split(tmp_path / "none", "train")).tolist() == _stream(plays, char_tok)


def test_dtype_follows_vocabulary_size(tmp_path):
    assert dtype_for(256).name == "uint16" and dtype_for(2**16).name == "uint16"
    assert dtype_for(2**16 + 1).name == "uint32"
    big = CharTokenizer([chr(0x10000 + i) for i in range(70_000)])
    text = "".join(chr(0x10000 + i) for i in (0, 69_999, 65_536, 3))
    write_shards([text], big, tmp_path, val_fraction=0.0, progress=False)
    train = open_split(tmp_path, "train")
    assert train.dtype == np.uint32 and train.tolist() == [0, 69_999, 65_536, 3]
    assert json.loads((tmp_path / "meta.json").read_text())["dtype"] == "uint32"


def test_worker_processes_give_the_same_ids(tmp_path, plays, char_tok):
    docs = plays * 10
    write_shards(docs, char_tok, tmp_path / "one", split_by="tokens", workers=1, progress=False)
    write_shards(docs, char_tok, tmp_path / "two", split_by="tokens", workers=2, progress=False)
    for split in ("train", "val"):
        assert np.array_equal(open_split(tmp_path / "one", split), open_split(tmp_path / "two", split))


def test_a_failure_leaves_no_shards(tmp_path, plays, char_tok):
    with pytest.raises(UserError, match="not in this character vocabulary"):
        write_shards(plays + ["\u00e9t\u00e9"], char_tok, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with pytest.raises(UserError, match="holds no finished token shards"):
        open_split(tmp_path, "train")


def test_truncated_shard_is_detected(tmp_path, plays, char_tok):
    write_shards(plays, char_tok, tmp_path, split_by="tokens", progress=False)
    data = (tmp_path / "train.bin").read_bytes()
    (tmp_path / "train.bin").write_bytes(data[:-2])
    with pytest.raises(UserError, match="wrong size"):
        open_split(tmp_path, "train")


@pytest.mark.parametrize("workers", [1, 2])
def test_literal_special_token_in_a_document_is_refused_with_a_hint(tmp_path, plays, char_tok, workers):
    docs = plays + ["ACT I.<|endoftext|>ACT II."]
    with pytest.raises(UserError, match=r"document 3: .*special token '<\|endoftext\|>'.*--separator"):
        write_shards(docs, char_tok, tmp_path, workers=workers, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("meta", ['[1, 2]', '{"format": "scratchllm.shards"}',
                                  '{"format": "scratchllm.shards", "dtype": "uint16", "tokens": {"train": "x"}}'])
def test_meta_file_of_the_wrong_shape_is_one_clear_error(tmp_path, plays, char_tok, meta):
    write_shards(plays, char_tok, tmp_path, 0.2, "document")
    fmt = json.loads((tmp_path / "meta.json").read_text())["format"]
    (tmp_path / "meta.json").write_text(meta.replace("scratchllm.shards", fmt))
    with pytest.raises(UserError, match="meta"):
        read_meta(tmp_path)
