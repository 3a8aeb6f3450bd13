"""Reading TensorFlow's tensor-bundle checkpoints (`model.ckpt.index` + `model.ckpt.data-*`) without TensorFlow.

A checkpoint that `tf.compat.v1.train.Saver` (or `tf.train.Checkpoint`) writes under a prefix such as
`model.ckpt` is two kinds of file:
- `model.ckpt.index`: a table in LevelDB's SSTable layout. From the end: a 48-byte footer (two block
  handles, the meta-index's and the index's, as varint pairs (offset, size), zero padding, then the
  8-byte magic 0xdb4775248b80fb57); the index block maps a separator key to the handle of each data
  block; a data block is a run of prefix-compressed entries (varints shared, unshared, value length;
  the key's new bytes; the value) and ends with its restart offsets (uint32 each) and their count.
  Every block is followed by a 5-byte trailer: its compression (0 = none) and the masked CRC-32C of
  block + compression byte. The key "" holds a BundleHeaderProto (number of data shards, endianness);
  every other key is a tensor's name and holds a BundleEntryProto (dtype, shape, shard, offset, size,
  masked CRC-32C of the bytes), decoded here by a small protobuf wire-format parser.
- `model.ckpt.data-00000-of-00001` (one per shard): the tensors' raw bytes at those offsets, in the
  header's byte order (little-endian in OpenAI's GPT-2 files; big-endian bundles are read too).

Every size is checked against the shape and the file, every block's checksum and (by default) every
tensor's; a file that is not such a table, a truncated data file or a tensor that is missing is one
UserError that names the file or the tensor.

Not here: what the tensors mean (`interop.openai` for OpenAI's GPT-2, names via `model.weights`);
writing checkpoints; compressed tables (TensorFlow's BundleWriter never compresses its index), sliced
(partitioned) variables and string tensors, each refused with a clear error.
References: tensorflow/core/util/tensor_bundle/tensor_bundle.{h,cc} and tensor_bundle.proto;
tensorflow/core/lib/io/format.cc, block.cc, table.cc (LevelDB's table format, doc/table_format.md);
tensorflow/core/lib/hash/crc32c.h (the mask); RFC 3720 appendix B.4 (CRC-32C).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scratchllm.errors import UserError

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's (and TensorFlow's) kTableMagicNumber
FOOTER_SIZE = 48  # two block handles of at most 20 bytes each, padded to 40, then the 8-byte magic
TRAILER_SIZE = 5  # after each block: 1 compression byte + 4 bytes masked CRC-32C
COMPRESSION = {0: None, 1: "snappy", 2: "zlib"}  # table::CompressionType

# TensorFlow's DataType enum (types.proto) -> numpy dtype, for the types a weight can have.
# bfloat16 (14) has no numpy dtype: it is read as uint16 and widened to float32 exactly.
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 14: np.uint16, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DT_BFLOAT16 = 14
DT_NAMES = {7: "string", 8: "complex64", 18: "complex128", 20: "resource", 21: "variant"}


class _Corrupt(ValueError):
    """Internal: the bytes are not what the format says; the reader turns it into a UserError."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are (a BundleEntryProto): `crc32c` is the masked CRC-32C, or None."""

    name: str
    dtype: int  # TensorFlow's DataType number
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None


@dataclass(frozen=True)
class Bundle:
    """A checkpoint's index: its prefix, shard count, byte order and tensor entries by name."""

    prefix: Path
    num_shards: int
    big_endian: bool
    entries: dict[str, TensorEntry]

    @property
    def index_file(self) -> Path:
        return Path(f"{self.prefix}.index")

    def data_file(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.num_shards:05d}")


# --------------------------------------------------------------------------------------------
# CRC-32C (Castagnoli), the checksum of LevelDB blocks and of TensorFlow's tensors
_POLY = 0x82F63B78  # CRC-32C's polynomial, bit-reversed (the CRC is computed least significant bit first)


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        table.append(c)
    return table


_TABLE = _crc_table()


def _word_tables() -> tuple[np.ndarray, np.ndarray]:
    """Tables that advance the register by one little-endian 4-byte word in two lookups: with
    x = register ^ word, the new register is lo[x & 0xFFFF] ^ hi[x >> 16] (slicing-by-4, two bytes a lookup)."""
    by_byte = [np.array(_TABLE, dtype=np.uint32)]  # by_byte[k][b]: byte b followed by k zero bytes
    for _ in range(3):
        t = by_byte[-1]
        by_byte.append((t >> np.uint32(8)) ^ by_byte[0][t & np.uint32(0xFF)])
    i = np.arange(1 << 16)
    return by_byte[3][i & 0xFF] ^ by_byte[2][i >> 8], by_byte[1][i & 0xFF] ^ by_byte[0][i >> 8]


_LO, _HI = _word_tables()
# Below 4 KiB the plain Python loop is used (index blocks, biases, norms): numpy's per-step cost only
# pays off for 16 lanes of 256 bytes or more; above, numpy runs up to 65,536 lanes at once.
_LANES_FROM = 1 << 12


def _update(reg: int, data) -> int:
    """The CRC register after feeding `data` (no pre/post inversion: a linear map of reg and data)."""
    for b in bytes(data):
        reg = _TABLE[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


def _zeros_operator(n: int) -> np.ndarray:
    """The 32x32 GF(2) matrix (as 32 uint32 columns) that feeds n zero bytes to a CRC register."""
    op = np.array([_TABLE[(1 << i) & 0xFF] ^ ((1 << i) >> 8) for i in range(32)], dtype=np.uint32)  # one byte
    result = np.array([1 << i for i in range(32)], dtype=np.uint32)  # identity
    while n:
        if n & 1:
            result = _apply(op, result)
        op = _apply(op, op)
        n >>= 1
    return result


def _apply(op: np.ndarray, v: np.ndarray) -> np.ndarray:
    """op (32 columns) times each uint32 in v, over GF(2)."""
    out = np.zeros_like(v)
    for i in range(32):
        out ^= op[i] * ((v >> np.uint32(i)) & np.uint32(1))
    return out


def _shift(reg: int, n: int) -> int:
    """The register `reg` after n zero bytes."""
    return int(_apply(_zeros_operator(n), np.array([reg], dtype=np.uint32))[0])


def _raw(buf: np.ndarray) -> int:
    """The register, started at 0, after all of `buf` (uint8). Long inputs are cut into 2**k lanes of equal
    length whose registers numpy advances together, a 4-byte word per step; the lanes are then joined
    pairwise, the left one shifted by the right one's length of zero bytes (a CRC is linear over GF(2), as
    in zlib's crc32_combine); the bytes left over after the lanes are one more such join."""
    n = buf.size
    if n < _LANES_FROM:
        return _update(0, buf.tobytes())
    lanes = 1 << min(16, (n // 256).bit_length() - 1)  # at least 256 bytes per lane
    words = n // (4 * lanes)
    cols = np.ascontiguousarray(buf[: lanes * words * 4].view("<u4").reshape(lanes, words).T)  # (words, lanes)
    reg = np.zeros(lanes, dtype=np.uint32)
    for j in range(words):
        x = reg ^ cols[j]
        reg = _LO[x & np.uint32(0xFFFF)] ^ _HI[x >> np.uint32(16)]
    op = _zeros_operator(4 * words)
    while reg.size > 1:
        reg = _apply(op, reg[0::2]) ^ reg[1::2]
        op = _apply(op, op)
    rest = buf[lanes * words * 4:]
    return _shift(int(reg[0]), rest.size) ^ _raw(rest)


def crc32c(data) -> int:
    """CRC-32C of a bytes-like object, as RFC 3720 defines it (register starts at all ones, ends inverted).

    >>> hex(crc32c(b"123456789"))  # the standard check value
    '0xe3069283'
    >>> crc32c(bytes(range(256)) * 1000) == _update(0xFFFFFFFF, bytes(range(256)) * 1000) ^ 0xFFFFFFFF
    True
    """
    buf = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    return _raw(buf) ^ _shift(0xFFFFFFFF, buf.size) ^ 0xFFFFFFFF


def masked(crc: int) -> int:
    """TensorFlow's and LevelDB's stored form of a CRC (rotated and offset, so CRCs of CRCs stay strong)."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# protobuf wire format and LevelDB's varints
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at pos."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise _Corrupt("a varint runs past the end of its block")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Corrupt("a varint is longer than 10 bytes")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _fields(msg: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) for each field of a protobuf message: ints for varints and fixed
    widths, bytes for length-delimited fields (sub-messages, strings, packed arrays)."""
    pos = 0
    while pos < len(msg):
        key, pos = _varint(msg, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(msg, pos)
        elif wire == 1:
            value, pos = int.from_bytes(msg[pos:pos + 8], "little"), pos + 8
        elif wire == 5:
            value, pos = int.from_bytes(msg[pos:pos + 4], "little"), pos + 4
        elif wire == 2:
            length, pos = _varint(msg, pos)
            value, pos = msg[pos:pos + length], pos + length
        else:
            raise _Corrupt(f"protobuf wire type {wire} is not used by tensor bundles")
        if pos > len(msg):
            raise _Corrupt("a protobuf field runs past the end of its message")
        yield number, value


def _shape(msg: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated Dim dim = 2 (Dim: int64 size = 1); unknown_rank = 3."""
    dims = []
    for number, value in _fields(msg):
        if number == 2:
            dims.append(_signed64(next((v for n, v in _fields(value) if n == 1), 0)))
        elif number == 3 and value:
            raise _Corrupt("a tensor has unknown rank")
    if any(d < 0 for d in dims):
        raise _Corrupt(f"a tensor has an unknown dimension in shape {dims}")
    return tuple(dims)


def _entry(name: str, msg: bytes) -> TensorEntry:
    """BundleEntryProto: dtype 1, shape 2, shard_id 3, offset 4, size 5, crc32c 6 (fixed32), slices 7."""
    f = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": None}
    for number, value in _fields(msg):
        if number == 1:
            f["dtype"] = value
        elif number == 2:
            f["shape"] = _shape(value)
        elif number in (3, 4, 5):
            f[("shard_id", "offset", "size")[number - 3]] = _signed64(value)
        elif number == 6:
            f["crc32c"] = value
        elif number == 7:
            raise UserError(f"tensor {name!r} is saved in slices (a partitioned variable); scratchllm reads only "
                            f"whole tensors")
    return TensorEntry(name, **f)


# --------------------------------------------------------------------------------------------
# the SSTable
def _block(data: bytes, handle: bytes | tuple[int, int]) -> bytes:
    """The contents of the block at a handle (offset, size), its checksum verified."""
    if isinstance(handle, bytes):
        offset, pos = _varint(handle, 0)
        size, _ = _varint(handle, pos)
    else:
        offset, size = handle
    end = offset + size
    if end + TRAILER_SIZE > len(data):
        raise _Corrupt(f"a block at byte {offset} runs past the end of the file")
    contents, kind = data[offset:end], data[end]
    stored = int.from_bytes(data[end + 1:end + TRAILER_SIZE], "little")
    if masked(crc32c(data[offset:end + 1])) != stored:
        raise _Corrupt(f"the block at byte {offset} fails its checksum (a damaged file)")
    if kind not in COMPRESSION:
        raise _Corrupt(f"the block at byte {offset} has unknown compression type {kind}")
    if COMPRESSION[kind]:
        raise UserError(f"its blocks are {COMPRESSION[kind]}-compressed; scratchllm reads only uncompressed "
                        f"tables (what TensorFlow's checkpoint writer produces)")
    return contents


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of each entry of a block: key = the previous key's first `shared` bytes + new bytes."""
    if len(block) < 4:
        raise _Corrupt("a block is shorter than its restart count")
    n_restarts = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 - 4 * n_restarts
    if end < 0:
        raise _Corrupt("a block's restart array is longer than the block")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + length > end:
            raise _Corrupt("a block entry does not fit its block")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + length]
        pos += length


def _table(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of an SSTable's bytes, in order."""
    if len(data) < FOOTER_SIZE or int.from_bytes(data[-8:], "little") != TABLE_MAGIC:
        raise _Corrupt("it does not end with the table magic number")
    footer = data[-FOOTER_SIZE:]
    _, pos = _varint(footer, 0)  # meta-index offset
    _, pos = _varint(footer, pos)  # meta-index size (the meta-index is empty in tensor bundles)
    index_offset, pos = _varint(footer, pos)
    index_size, _ = _varint(footer, pos)
    for _, handle in _block_entries(_block(data, (index_offset, index_size))):
        yield from _block_entries(_block(data, handle))


def read_index(prefix: str | os.PathLike) -> Bundle:
    """The bundle at `prefix` (the path without `.index`, e.g. folder/model.ckpt): its header and entries."""
    path = Path(f"{prefix}.index")
    if not path.is_file():
        raise UserError(f"{path} not found; a TensorFlow checkpoint `P` is the two files P.index and P.data-*")
    data = path.read_bytes()
    header: dict[int, int | bytes] = {}
    entries: dict[str, TensorEntry] = {}
    try:
        for key, value in _table(data):
            if key == b"":
                header = dict(_fields(value))
            else:
                name = key.decode("utf-8", "replace")
                entries[name] = _entry(name, value)
    except _Corrupt as e:
        raise UserError(f"{path} is not a readable TensorFlow checkpoint index (an SSTable): {e}") from None
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    if not header:
        raise UserError(f"{path} has no bundle header; is it a TensorFlow checkpoint index (TF 1.x Saver V2 or "
                        f"later)?")
    big_endian = header.get(2, 0) == 1  # BundleHeaderProto.endianness: 0 little, 1 big
    return Bundle(Path(prefix), int(header.get(1, 1)), big_endian, entries)


def _dtype(bundle: Bundle, entry: TensorEntry) -> np.dtype:
    if entry.dtype not in DTYPES:
        kind = DT_NAMES.get(entry.dtype, f"type {entry.dtype}")
        raise UserError(f"{bundle.index_file}: tensor {entry.name!r} is a {kind} tensor; scratchllm reads only "
                        f"numeric tensors")
    return np.dtype(DTYPES[entry.dtype]).newbyteorder(">" if bundle.big_endian else "<")


def read_tensors(bundle: Bundle, names: Iterable[str] | None = None, *, verify: bool = True) -> dict[str, np.ndarray]:
    """The named tensors (default: all) as numpy arrays in native byte order (bfloat16 widened to float32).

    Each size must match its shape and dtype and fit in its data file; `verify` also checks each
    tensor's CRC-32C (on by default: a damaged download is caught here, not as odd text later)."""
    names = list(bundle.entries) if names is None else list(names)
    for name in names:
        if name not in bundle.entries:
            raise UserError(f"{bundle.index_file} has no tensor {name!r}")
    out: dict[str, np.ndarray] = {}
    by_shard: dict[int, list[TensorEntry]] = {}
    for name in names:
        e = bundle.entries[name]
        by_shard.setdefault(e.shard_id, []).append(e)
    for shard, entries in sorted(by_shard.items()):
        path = bundle.data_file(shard)
        if not path.is_file():
            raise UserError(f"{path} not found; it holds tensor {entries[0].name!r} of {bundle.index_file}")
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            for e in sorted(entries, key=lambda e: e.offset):
                dtype = _dtype(bundle, e)
                count = int(np.prod(e.shape, dtype=np.int64))
                if e.size != count * dtype.itemsize:
                    raise UserError(f"{bundle.index_file}: tensor {e.name!r} has {e.size} bytes, but shape "
                                    f"{list(e.shape)} of {dtype.name} needs {count * dtype.itemsize}; the index "
                                    f"is damaged")
                if e.offset < 0 or e.offset + e.size > file_size:
                    raise UserError(f"{path} is truncated: tensor {e.name!r} needs bytes {e.offset}.."
                                    f"{e.offset + e.size} but the file has {file_size}; download it again")
                arr = np.empty(count, dtype=dtype)
                f.seek(e.offset)
                if f.readinto(memoryview(arr).cast("B")) != e.size:
                    raise UserError(f"{path} is truncated at tensor {e.name!r}; download it again")
                if verify and e.crc32c is not None and masked(crc32c(arr)) != e.crc32c:
                    raise UserError(f"{path}: tensor {e.name!r} fails its CRC-32C check (a damaged file); "
                                    f"download it again")
                if e.dtype == DT_BFLOAT16:
                    arr = (arr.astype(np.uint32) << np.uint32(16)).view(np.float32)
                out[e.name] = arr.astype(arr.dtype.newbyteorder("="), copy=False).reshape(e.shape)
    return {name: out[name] for name in names}


def read_bundle(prefix: str | os.PathLike, *, verify: bool = True) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint at `prefix`, by name (see `read_index` and `read_tensors`)."""
    return read_tensors(read_index(prefix), verify=verify)
