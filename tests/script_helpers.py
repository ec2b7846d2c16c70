"""Shared pieces of the script-candidate tests: the small scripts, their wrapped form, byte shards."""

from __future__ import annotations

import base64
import lzma
from pathlib import Path

import numpy as np

from conftest import REPO_ROOT, SHARED_DATA

SCRIPTS = REPO_ROOT / "tests" / "scripts"
SAMPLE = SHARED_DATA / "fineweb_edu_sample.txt"


def script_bytes(name: str) -> bytes:
    return (SCRIPTS / name).read_bytes()


def wrapped(source: bytes) -> bytes:
    """The self-extracting form many records use: lzma + base85 handed to exec."""
    payload = base64.b85encode(lzma.compress(source)).decode()
    return f'import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("{payload}")))\n'.encode()


def sample_byte_shards(directory: Path, train_bytes: int = 200_000, val_bytes: int = 16_384) -> Path:
    """Byte-level challenge-format shards of the FineWeb-Edu sample (train first, val after)."""
    from p2pgolf.trainer.shards import write_shard

    data = SAMPLE.read_bytes()
    tokens = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
    write_shard(directory / "fineweb_train_000000.bin", tokens[:train_bytes])
    write_shard(directory / "fineweb_val_000000.bin", tokens[train_bytes : train_bytes + val_bytes])
    return directory
