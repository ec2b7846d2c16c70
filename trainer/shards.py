"""The Parameter Golf challenge's token shard format: read, check and write.

A shard is 256 little-endian int32 header words (1,024 bytes) - word 0 the magic 20240520,
word 1 the version 1, word 2 the token count - followed by exactly that many little-endian
uint16 tokens. Guarantees: `read_shard` returns a read-only memory map and never a shard whose
header, version or size is wrong (it raises `ShardError` naming the file and the fault);
`write_shard` writes atomically (a reader never sees half a shard) and refuses tokens that do
not fit uint16.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
HEADER_WORDS = 256
HEADER_BYTES = HEADER_WORDS * 4
TOKEN_DTYPE = np.dtype("<u2")


class ShardError(ValueError):
    """A file that is not a valid shard; the message names the file and what is wrong."""


def check_header(header: bytes, file_size: int, name: str | os.PathLike) -> int:
    """Validate a shard's first 1,024 bytes against its total size; returns the token count."""
    if len(header) < HEADER_BYTES:
        raise ShardError(f"{name}: {file_size} bytes is shorter than the {HEADER_BYTES}-byte shard header")
    words = np.frombuffer(header[:HEADER_BYTES], dtype="<i4")
    magic, version, count = int(words[0]), int(words[1]), int(words[2])
    if magic != SHARD_MAGIC:
        raise ShardError(f"{name}: bad magic {magic} in shard header (expected {SHARD_MAGIC}); not a token shard")
    if version != SHARD_VERSION:
        raise ShardError(f"{name}: unsupported shard version {version} (expected {SHARD_VERSION})")
    if count < 0:
        raise ShardError(f"{name}: negative token count {count} in shard header")
    expected = HEADER_BYTES + 2 * count
    if file_size != expected:
        raise ShardError(
            f"{name}: file is {file_size} bytes but its header says {count} tokens "
            f"({expected} bytes); truncated or corrupt"
        )
    return count


def shard_token_count(path: str | os.PathLike) -> int:
    """The token count of a shard after checking its header and size (reads 1 KB only)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            header = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise ShardError(f"{path}: shard file not found") from None
    return check_header(header, size, path)


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """The tokens of a shard as a read-only little-endian uint16 memory map (checked first)."""
    path = Path(path)
    count = shard_token_count(path)
    if count == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(count,))


def write_shard(path: str | os.PathLike, tokens: np.ndarray | Iterable[int]) -> int:
    """Write tokens as a shard, atomically (temp file, fsync, rename); returns the token count."""
    path = Path(path)
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ShardError(f"{path}: tokens must be a 1-D array, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "ui":
        raise ShardError(f"{path}: tokens must be integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 0xFFFF):
        raise ShardError(f"{path}: token ids must be in [0, 65535], got [{int(arr.min())}, {int(arr.max())}]")
    if arr.size > np.iinfo(np.int32).max:
        raise ShardError(f"{path}: {arr.size} tokens do not fit an int32 header count")
    header = np.zeros(HEADER_WORDS, dtype="<i4")
    header[0], header[1], header[2] = SHARD_MAGIC, SHARD_VERSION, arr.size
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tmp.open("wb") as f:
            f.write(header.tobytes())
            f.write(arr.astype(TOKEN_DTYPE, copy=False).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return int(arr.size)
