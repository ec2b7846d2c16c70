"""Shard format: round trip, and every malformed file rejected with the file named."""

from __future__ import annotations

import numpy as np
import pytest

from p2pgolf.trainer.shards import HEADER_BYTES, SHARD_MAGIC, ShardError, read_shard, shard_token_count, write_shard


def _raw_shard(tokens: list[int], *, magic: int = SHARD_MAGIC, version: int = 1, count: int | None = None) -> bytes:
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = magic, version, len(tokens) if count is None else count
    return header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes()


def test_written_shard_reads_back_identical_tokens_with_the_challenge_layout(tmp_path):
    tokens = np.array([1, 0, 65535, 1023, 7], dtype=np.uint16)
    path = tmp_path / "fineweb_val_000000.bin"
    assert write_shard(path, tokens) == 5
    raw = path.read_bytes()
    # Layout checked byte by byte against the format: int32 LE magic, version, count; uint16 LE tokens.
    assert raw[:12] == (20240520).to_bytes(4, "little") + (1).to_bytes(4, "little") + (5).to_bytes(4, "little")
    assert raw[12:HEADER_BYTES] == bytes(HEADER_BYTES - 12)
    assert raw[HEADER_BYTES:] == b"\x01\x00\x00\x00\xff\xff\xff\x03\x07\x00"
    back = read_shard(path)
    assert back.dtype == np.dtype("<u2") and list(back) == [1, 0, 65535, 1023, 7]
    assert not back.flags.writeable


def test_shard_written_by_hand_is_read(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(_raw_shard([5, 6, 7]))
    assert shard_token_count(path) == 3
    assert list(read_shard(path)) == [5, 6, 7]


@pytest.mark.parametrize(
    "raw, fault",
    [
        (_raw_shard([1, 2], magic=20240521), "bad magic 20240521"),
        (_raw_shard([1, 2], version=2), "unsupported shard version 2"),
        (_raw_shard([1, 2], count=3), "header says 3 tokens"),
        (_raw_shard([1, 2], count=1), "header says 1 tokens"),
        (_raw_shard([1, 2])[:-1], "truncated or corrupt"),
        (_raw_shard([1, 2])[:100], "shorter than the 1024-byte shard header"),
        (b"", "shorter than the 1024-byte shard header"),
    ],
)
def test_malformed_shard_is_rejected_naming_file_and_fault(tmp_path, raw, fault):
    path = tmp_path / "fineweb_train_000003.bin"
    path.write_bytes(raw)
    with pytest.raises(ShardError) as info:
        read_shard(path)
    assert str(path) in str(info.value) and fault in str(info.value)


def test_missing_shard_is_reported_by_name(tmp_path):
    with pytest.raises(ShardError, match="nope.bin: shard file not found"):
        read_shard(tmp_path / "nope.bin")


@pytest.mark.parametrize("tokens, fault", [([70000], "must be in \\[0, 65535\\]"), ([-1], "must be in"), ([[1, 2]], "1-D"), ([1.5], "integers")])
def test_tokens_that_do_not_fit_uint16_are_refused_and_nothing_is_written(tmp_path, tokens, fault):
    path = tmp_path / "x.bin"
    with pytest.raises(ShardError, match=fault):
        write_shard(path, np.asarray(tokens))
    assert list(tmp_path.iterdir()) == []


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=300, deadline=None)
@given(header_words=st.lists(st.integers(-(2**31), 2**31 - 1), min_size=3, max_size=3), body=st.binary(max_size=64),
       use_magic=st.booleans())
def test_arbitrary_bytes_give_tokens_or_a_shard_error_never_anything_else(tmp_path_factory, header_words, body, use_magic):
    words = np.zeros(256, dtype="<i4")
    words[:3] = header_words
    if use_magic:
        words[0], words[1] = SHARD_MAGIC, 1
    raw = words.tobytes() + body
    path = tmp_path_factory.mktemp("fuzz") / "f.bin"
    path.write_bytes(raw)
    try:
        tokens = read_shard(path)
    except ShardError as exc:
        assert str(path) in str(exc)
    else:
        assert len(raw) == HEADER_BYTES + 2 * len(tokens) and tokens.tobytes() == body
