"""Our TensorFlow tensor-bundle reader against a checkpoint TensorFlow itself wrote (tests/fixtures/
openai-gpt2-tiny, made by make_openai_gpt2_fixture.py with tf.compat.v1.train.Saver), and damaged copies."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from scratchllm.errors import UserError
from scratchllm.interop import tf_bundle
from scratchllm.interop.tf_bundle import crc32c, masked, read_bundle, read_index, read_tensors

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "openai-gpt2-tiny"
EXPECTED = json.loads((FIXTURE / "expected_logits.json").read_text(encoding="utf-8"))
DATA = "model.ckpt.data-00000-of-00001"


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "gpt2")
    return tmp_path / "gpt2"


def test_every_tensor_as_tensorflow_wrote_it():
    tensors = read_bundle(FIXTURE / "model.ckpt")
    assert set(tensors) == set(EXPECTED["tensors"])
    for name, want in EXPECTED["tensors"].items():
        t = tensors[name]
        assert t.dtype == np.float32 and list(t.shape) == want["shape"], name
        assert hashlib.sha256(t.astype("<f4").tobytes()).hexdigest() == want["sha256"], name


def test_index_entries_locate_the_bytes():
    bundle = read_index(FIXTURE / "model.ckpt")
    assert bundle.num_shards == 1 and not bundle.big_endian
    assert len(bundle.entries) == 4 + 12 * 2  # wte, wpe, ln_f g/b + 12 per block; the header is not an entry
    data = (FIXTURE / DATA).read_bytes()
    ends = sorted((e.offset, e.offset + e.size) for e in bundle.entries.values())
    assert ends[0][0] == 0 and ends[-1][1] == len(data)  # the tensors tile the data file
    assert all(a[1] == b[0] for a, b in zip(ends, ends[1:]))
    for e in bundle.entries.values():  # TensorFlow's stored checksums are masked CRC-32Cs of the bytes
        assert masked(crc32c(data[e.offset:e.offset + e.size])) == e.crc32c, e.name


def test_lanes_agree_with_tensorflows_checksums(monkeypatch):
    monkeypatch.setattr(tf_bundle, "_LANES_FROM", 256)  # the fixture's tensors are small: force the lanes
    bundle = read_index(FIXTURE / "model.ckpt")
    data = (FIXTURE / DATA).read_bytes()
    big = [e for e in bundle.entries.values() if e.size >= 256]
    assert len(big) > 10  # wte: 128 lanes
    for e in big:
        assert masked(crc32c(data[e.offset:e.offset + e.size])) == e.crc32c, e.name


@pytest.mark.parametrize("n", [0, 1, 9, 65535, 65536, 65537, 300_001])
def test_crc32c_lanes_equal_the_bytewise_loop(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(data) == tf_bundle._update(0xFFFFFFFF, data) ^ 0xFFFFFFFF


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C (RFC 3720)
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert crc32c(b"\xff" * 32) == 0x62A8AB43  # RFC 3720 B.4: 32 bytes of 0xff


DTYPES = Path(__file__).resolve().parents[1] / "fixtures" / "tf-bundle-dtypes"


def test_every_dtype_as_tensorflow_reads_it():
    want = json.loads((DTYPES / "expected.json").read_text(encoding="utf-8"))
    bundle = read_index(DTYPES / "dtypes.ckpt")
    assert set(bundle.entries) == set(want) | {"text"}
    got = read_tensors(bundle, list(want))
    for name, w in want.items():
        t = got[name]
        assert t.dtype == np.dtype(w["dtype"]) and list(t.shape) == w["shape"], name
        assert np.array_equal(t, np.array(w["values"], dtype=w["dtype"]).reshape(w["shape"])), name
    assert got["bf16"][3] == np.float32(1.498797955988901e20)  # bfloat16 widened exactly, not rounded again
    with pytest.raises(UserError, match=r"dtypes.ckpt.index: tensor 'text' is a string tensor; scratchllm reads "
                                        r"only numeric tensors"):
        read_tensors(bundle, ["text"])


def test_truncated_data_file(copy):
    data = copy / DATA
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(UserError, match=rf"{DATA} is truncated: tensor 'model/wte' needs bytes"):
        read_bundle(copy / "model.ckpt")


def test_missing_data_file(copy):
    (copy / DATA).unlink()
    with pytest.raises(UserError, match=rf"{DATA} not found; it holds tensor"):
        read_bundle(copy / "model.ckpt")


def test_damaged_tensor_fails_its_checksum(copy):
    bundle = read_index(copy / "model.ckpt")
    e = bundle.entries["model/h1/mlp/c_fc/w"]
    data = bytearray((copy / DATA).read_bytes())
    data[e.offset + 10] ^= 0x40
    (copy / DATA).write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"tensor 'model/h1/mlp/c_fc/w' fails its CRC-32C check"):
        read_bundle(copy / "model.ckpt")
    assert read_bundle(copy / "model.ckpt", verify=False)["model/h1/mlp/c_fc/w"].shape == (1, 32, 128)


def test_index_that_is_not_a_table(copy):
    (copy / "model.ckpt.index").write_bytes(b'{"this": "is json, not an SSTable"}' * 3)
    with pytest.raises(UserError, match=r"model.ckpt.index is not a readable TensorFlow checkpoint index "
                                        r"\(an SSTable\): it does not end with the table magic number"):
        read_index(copy / "model.ckpt")
    (copy / "model.ckpt.index").write_bytes(b"")
    with pytest.raises(UserError, match="model.ckpt.index is not a readable"):
        read_index(copy / "model.ckpt")


def test_damaged_index_block(copy):
    index = copy / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    raw[20] ^= 0x01  # inside the first data block: a key's bytes
    index.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="the block at byte 0 fails its checksum"):
        read_index(copy / "model.ckpt")


def _first_block_size(raw: bytes) -> int:
    """Size of the data block at offset 0, from the index block's first handle (via the footer)."""
    footer = raw[-tf_bundle.FOOTER_SIZE:]
    _, pos = tf_bundle._varint(footer, 0)
    _, pos = tf_bundle._varint(footer, pos)
    off, pos = tf_bundle._varint(footer, pos)
    size, _ = tf_bundle._varint(footer, pos)
    _, handle = next(tf_bundle._block_entries(raw[off:off + size]))
    offset, pos = tf_bundle._varint(handle, 0)
    assert offset == 0
    return tf_bundle._varint(handle, pos)[0]


def test_compressed_blocks_are_refused_clearly(copy):
    index = copy / "model.ckpt.index"
    raw = bytearray(index.read_bytes())
    size = _first_block_size(bytes(raw))
    raw[size] = 1  # the trailer's compression byte: snappy (with a checksum that matches it)
    raw[size + 1:size + 5] = masked(crc32c(bytes(raw[:size + 1]))).to_bytes(4, "little")
    index.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"model.ckpt.index: its blocks are snappy-compressed; scratchllm reads "
                                        r"only uncompressed tables"):
        read_index(copy / "model.ckpt")


def test_missing_index_and_missing_tensor(copy):
    with pytest.raises(UserError, match=r"nope.index not found"):
        read_index(copy / "nope")
    bundle = read_index(copy / "model.ckpt")
    with pytest.raises(UserError, match=r"model.ckpt.index has no tensor 'model/h9/ln_1/g'"):
        read_tensors(bundle, ["model/wte", "model/h9/ln_1/g"])


def test_wrong_size_in_index_is_caught(copy):
    bundle = read_index(copy / "model.ckpt")
    e = bundle.entries["model/wpe"]
    bad = tf_bundle.Bundle(bundle.prefix, bundle.num_shards, bundle.big_endian,
                           {e.name: tf_bundle.TensorEntry(e.name, e.dtype, (7, 32), e.shard_id, e.offset, e.size,
                                                          e.crc32c)})
    with pytest.raises(UserError, match=r"tensor 'model/wpe' has 4096 bytes, but shape \[7, 32\] of float32 needs 896"):
        read_tensors(bad)


def test_reads_only_what_is_asked(copy):
    os.truncate(copy / DATA, read_index(copy / "model.ckpt").entries["model/wpe"].offset + 32 * 32 * 4)
    got = read_tensors(read_index(copy / "model.ckpt"), ["model/wpe"])  # wpe still fits
    assert list(got) == ["model/wpe"] and got["model/wpe"].shape == (32, 32)


# --- the same entries in a table of many small blocks (LevelDB's layout with a small block size) ---------
def _varint_bytes(v: int) -> bytes:
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _block_bytes(items, restart_every: int) -> bytes:
    """A LevelDB block: prefix-compressed entries, a full key every `restart_every`, the restart offsets."""
    out, restarts, prev = bytearray(), [], b""
    for i, (k, v) in enumerate(items):
        shared = 0
        if i % restart_every == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(k), len(prev)) and k[shared] == prev[shared]:
                shared += 1
        out += _varint_bytes(shared) + _varint_bytes(len(k) - shared) + _varint_bytes(len(v)) + k[shared:] + v
        prev = k
    return bytes(out + b"".join(r.to_bytes(4, "little") for r in restarts) + len(restarts).to_bytes(4, "little"))


def _sstable(items, per_block: int, restart_every: int) -> bytes:
    out, index = bytearray(), []

    def put(block: bytes) -> bytes:
        handle = _varint_bytes(len(out)) + _varint_bytes(len(block))
        out.extend(block + b"\0" + masked(crc32c(block + b"\0")).to_bytes(4, "little"))
        return handle

    for i in range(0, len(items), per_block):
        chunk = items[i:i + per_block]
        index.append((chunk[-1][0], put(_block_bytes(chunk, restart_every))))
    meta, idx = put(_block_bytes([], 1)), put(_block_bytes(index, 1))
    return bytes(out + (meta + idx).ljust(40, b"\0") + tf_bundle.TABLE_MAGIC.to_bytes(8, "little"))


@pytest.mark.parametrize("per_block,restart_every", [(1, 1), (3, 2), (7, 16), (100, 5)])
def test_many_small_blocks_read_the_same(copy, per_block, restart_every):
    original = read_index(copy / "model.ckpt")
    items = list(tf_bundle._table((copy / "model.ckpt.index").read_bytes()))
    assert items[0][0] == b"" and len(items) == 1 + len(original.entries)  # the header first, then the tensors
    (copy / "model.ckpt.index").write_bytes(_sstable(items, per_block, restart_every))
    rebuilt = read_index(copy / "model.ckpt")
    assert rebuilt == original
    tensors = read_bundle(copy / "model.ckpt")
    assert all(hashlib.sha256(tensors[n].tobytes()).hexdigest() == w["sha256"] for n, w in EXPECTED["tensors"].items())
