"""Reading a TensorFlow checkpoint without TensorFlow: the ``.index`` file is an SSTable (LevelDB's table format)
whose keys are variable names and whose values are ``BundleEntryProto`` messages (dtype, shape, data shard,
offset, size); the tensors are raw little-endian bytes in the ``.data-NNNNN-of-NNNNN`` shards. A checkpoint is
given as its prefix (``model.ckpt``), its ``.index`` file, the folder holding it, or a model-zoo ``.tar.gz``.

Facts from TensorFlow's ``tensor_bundle.proto`` and LevelDB's ``table_format.md``; no TensorFlow code is used.
"""
from __future__ import annotations

import struct
import tarfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from .wire import LENGTH, WireError, fields, read_varint

TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB's table magic number, the footer's last 8 bytes
FOOTER_SIZE = 48
BLOCK_TRAILER = 5  # compression type (1 byte) + CRC (4 bytes) after every block
# TensorFlow's DataType enum -> numpy (little-endian); types a DeepLab checkpoint does not hold are left out.
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 19: "<f2"}


class CheckpointFormatError(ValueError):
    """A file that is not the TF checkpoint it should be."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one variable's bytes are: ``shard`` ``offset`` ``size``, and their ``dtype`` (TF enum) and ``shape``."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int


def _blocks(index: memoryview, handle: tuple[int, int], what: str) -> memoryview:
    offset, size = handle
    if offset + size + BLOCK_TRAILER > len(index):
        raise CheckpointFormatError(f"{what} points past the end of the file (truncated?)")
    if index[offset + size] != 0:
        raise CheckpointFormatError(f"{what} is compressed (type {index[offset + size]}); TensorFlow writes "
                                    f"checkpoint indexes uncompressed: not a TF checkpoint index")
    return index[offset:offset + size]


def _block_entries(block: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """(key, value) of each entry of one table block (keys prefix-compressed against the previous key)."""
    if len(block) < 4:
        raise CheckpointFormatError("a table block is shorter than its restart count")
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 * (restarts + 1)
    if end < 0:
        raise CheckpointFormatError("a table block declares more restart points than it holds")
    pos, key = 0, b""
    while pos < end:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        size, pos = read_varint(block, pos)
        key = key[:shared] + bytes(block[pos:pos + unshared])
        pos += unshared
        yield key, block[pos:pos + size]
        pos += size


def _handle(value: memoryview) -> tuple[int, int]:
    offset, pos = read_varint(value, 0)
    size, _ = read_varint(value, pos)
    return offset, size


def _shape(message: memoryview) -> tuple[int, ...]:
    dims = []
    for number, _, dim in fields(message):
        if number == 2:  # TensorShapeProto.dim
            size = next((v for n, _, v in fields(dim) if n == 1), 0)
            dims.append(int(size) - (1 << 64) if size >= 1 << 63 else int(size))  # int64 (-1: unknown)
    return tuple(dims)


def _entry(name: str, value: memoryview) -> TensorEntry:
    dtype = shard = offset = size = 0
    shape: tuple[int, ...] = ()
    for number, kind, item in fields(value):
        if number == 1:
            dtype = item
        elif number == 2 and kind == LENGTH:
            shape = _shape(item)
        elif number == 3:
            shard = item
        elif number == 4:
            offset = item
        elif number == 5:
            size = item
        elif number == 7:
            raise CheckpointFormatError(f"variable {name} is stored in slices (a partitioned variable), which "
                                        f"DeepLab checkpoints do not use")
    return TensorEntry(name, int(dtype), shape, int(shard), int(offset), int(size))


def read_index(data: bytes) -> tuple[int, dict[str, TensorEntry]]:
    """The number of data shards and every variable's :class:`TensorEntry`, from the bytes of a ``.index`` file."""
    index = memoryview(data)
    if len(index) < FOOTER_SIZE or struct.unpack_from("<Q", index, len(index) - 8)[0] != TABLE_MAGIC:
        raise CheckpointFormatError("no SSTable footer (not a TF checkpoint .index, or truncated)")
    footer = index[len(index) - FOOTER_SIZE:]
    _, pos = read_varint(footer, 0)  # the metaindex handle: unused
    _, pos = read_varint(footer, pos)
    index_offset, pos = read_varint(footer, pos)
    index_size, _ = read_varint(footer, pos)
    shards, entries = 1, {}
    for _, handle in _block_entries(_blocks(index, (index_offset, index_size), "the index block")):
        for key, value in _block_entries(_blocks(index, _handle(handle), "a data block")):
            if key == b"":  # BundleHeaderProto: num_shards (1), endianness (2: 0 little, 1 big)
                header = {n: v for n, _, v in fields(value)}
                shards = int(header.get(1, 1))
                if header.get(2, 0) != 0:
                    raise CheckpointFormatError("the checkpoint was written big-endian; read it on a "
                                                "little-endian machine with TensorFlow and save it again")
            else:
                name = key.decode()
                entries[name] = _entry(name, value)
    return shards, entries


def _from_files(index: Path) -> tuple[bytes, Callable[[int, int], IO[bytes]]]:
    prefix = str(index)[:-len(".index")]

    def shard(number: int, total: int) -> IO[bytes]:
        path = Path(f"{prefix}.data-{number:05d}-of-{total:05d}")
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: a TF checkpoint is its .index and every .data-* shard "
                                    f"(copy them together)")
        return open(path, "rb")

    return index.read_bytes(), shard


def _from_tar(archive: Path, stack: ExitStack) -> tuple[bytes, Callable[[int, int], IO[bytes]], str]:
    tar = stack.enter_context(tarfile.open(archive, "r:*"))
    members = {m.name: m for m in tar.getmembers() if m.isfile()}
    indexes = sorted(name for name in members if name.endswith(".index"))
    if len(indexes) != 1:
        raise CheckpointFormatError(f"{archive} holds {len(indexes) or 'no'} TF checkpoint indexes "
                                    f"({', '.join(indexes) or 'no *.index file'}); pass an archive of one "
                                    f"checkpoint (a model-zoo .tar.gz) or its extracted prefix")
    prefix = indexes[0][:-len(".index")]

    def shard(number: int, total: int) -> IO[bytes]:
        name = f"{prefix}.data-{number:05d}-of-{total:05d}"
        if name not in members:
            raise CheckpointFormatError(f"{archive} has {indexes[0]} but not {name}: the archive is incomplete")
        return tar.extractfile(members[name])  # type: ignore[return-value]

    return tar.extractfile(members[indexes[0]]).read(), shard, f"{archive}:{prefix}"  # type: ignore[union-attr]


def checkpoint_index(path: str | Path) -> Path:
    """The ``.index`` file of a checkpoint given as a prefix, an index file or a folder holding one checkpoint."""
    path = Path(path)
    if path.is_dir():
        indexes = sorted(path.glob("*.index"))
        if len(indexes) != 1:
            raise CheckpointFormatError(f"{path} holds {len(indexes) or 'no'} TF checkpoint indexes; pass the "
                                        f"checkpoint prefix (e.g. {path}/model.ckpt)")
        return indexes[0]
    index = path if path.name.endswith(".index") else Path(f"{path}.index")
    if not index.is_file():
        raise FileNotFoundError(f"{index} does not exist: pass a TF checkpoint prefix (model.ckpt, beside "
                                f"model.ckpt.index and model.ckpt.data-00000-of-00001), its folder or the "
                                f"model zoo's .tar.gz")
    return index


def read_tf_checkpoint(path: str | Path, keep: Callable[[str], bool] = lambda name: True
                       ) -> tuple[dict[str, np.ndarray], dict[str, TensorEntry], str]:
    """The variables of a TF checkpoint whose names ``keep`` accepts, as numpy arrays (TF's layout: convolutions
    [kh, kw, in, out]), every variable's entry (kept or not), and a description of where they came from.
    ``path``: a checkpoint prefix, its ``.index``, its folder or a ``.tar.gz`` holding one checkpoint."""
    path = Path(path)
    with ExitStack() as stack:
        if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
            data, open_shard, where = _from_tar(path, stack)
        else:
            index = checkpoint_index(path)
            data, open_shard = _from_files(index)
            where = str(index)[:-len(".index")]
        try:
            shards, entries = read_index(data)
        except WireError as err:
            raise CheckpointFormatError(f"{where}.index is not a TF checkpoint index: {err}") from err
        wanted = sorted((e for e in entries.values() if keep(e.name)), key=lambda e: (e.shard, e.offset))
        tensors: dict[str, np.ndarray] = {}
        files: dict[int, IO[bytes]] = {}
        for entry in wanted:  # in offset order: a .tar.gz member is read forwards only
            if entry.dtype not in DTYPES:
                raise CheckpointFormatError(f"variable {entry.name} has TF dtype {entry.dtype}, which no DeepLab "
                                            f"checkpoint uses")
            if entry.shard not in files:
                files[entry.shard] = stack.enter_context(open_shard(entry.shard, shards))
            dtype = np.dtype(DTYPES[entry.dtype])
            expected = int(np.prod(entry.shape, dtype=np.int64)) * dtype.itemsize
            if entry.size != expected:
                raise CheckpointFormatError(f"variable {entry.name}: {entry.size} bytes stored for shape "
                                            f"{list(entry.shape)} ({expected} expected)")
            f = files[entry.shard]
            f.seek(entry.offset)
            raw = f.read(entry.size)
            if len(raw) != entry.size:
                raise CheckpointFormatError(f"{where}.data-{entry.shard:05d}-of-{shards:05d} ends before variable "
                                            f"{entry.name} (truncated download?)")
            tensors[entry.name] = np.frombuffer(raw, dtype=dtype).reshape(entry.shape).copy()
    return tensors, entries, where
