"""The blob store: content-addressed, verified on put and on read, size-capped per kind, atomic,
resumable partials, and retention that never drops what it protects."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from p2pgolf.pool.blobs import BlobError, BlobStore, Retention, check_sha


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_stores_under_its_digest_and_get_returns_the_same_bytes(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    sha = store.put(b"weights", kind="artifact")
    assert sha == _sha(b"weights")
    assert store.path(sha) == tmp_path / "blobs" / sha[:2] / sha
    assert store.has(sha) and store.size(sha) == 7
    assert store.get(sha) == b"weights"
    assert store.put(b"weights", kind="artifact") == sha  # idempotent
    assert [b.sha for b in store.list()] == [sha]


def test_put_refuses_bytes_that_do_not_hash_to_the_expected_digest(tmp_path):
    store = BlobStore(tmp_path)
    with pytest.raises(BlobError, match="not to"):
        store.put(b"abc", kind="script", sha=_sha(b"abd"))
    assert store.list() == []


def test_each_kind_has_its_own_size_cap(tmp_path):
    store = BlobStore(tmp_path, caps={"artifact": 100, "script": 10})
    store.put(b"x" * 100, kind="artifact")
    with pytest.raises(BlobError, match="over the cap of 10 bytes"):
        store.put(b"x" * 11, kind="script")
    with pytest.raises(BlobError, match="over the cap of 100 bytes"):
        store.put(b"y" * 101, kind="artifact")
    with pytest.raises(BlobError, match="unknown blob kind"):
        store.put(b"z", kind="model")


def test_a_blob_damaged_on_disk_is_refused_on_read_and_removed(tmp_path):
    store = BlobStore(tmp_path)
    sha = store.put(b"good bytes", kind="artifact")
    store.path(sha).write_bytes(b"bad bytes!")
    with pytest.raises(BlobError, match="does not hash to its name"):
        store.get(sha)
    assert not store.has(sha)


def test_malformed_digests_are_named_in_the_error(tmp_path):
    store = BlobStore(tmp_path)
    for bad in ("ABC", "../../etc/passwd", "g" * 64, 5):
        with pytest.raises(BlobError, match="not a SHA-256 digest"):
            store.has(bad)
    assert check_sha("a" * 64) == "a" * 64


def test_partial_transfer_is_committed_only_when_whole_and_matching(tmp_path):
    store = BlobStore(tmp_path)
    data = os.urandom(5000)
    sha = _sha(data)
    with open(store.partial(sha), "ab") as f:
        f.write(data[:2000])
    assert store.partial_size(sha) == 2000 and not store.has(sha)
    with pytest.raises(BlobError, match="tampered or mixed"):
        store.commit_partial(sha, kind="artifact")  # 2000 bytes do not hash to the whole
    assert store.partial_size(sha) == 0  # discarded: the next fetch starts over
    with open(store.partial(sha), "ab") as f:
        f.write(data)
    assert store.commit_partial(sha, kind="artifact") == store.path(sha)
    assert store.get(sha) == data and store.partial_size(sha) == 0


def test_prune_keeps_protected_blobs_and_removes_the_least_recently_used(tmp_path):
    store = BlobStore(tmp_path)
    shas = [store.put(f"blob {i}".encode(), kind="artifact") for i in range(6)]
    for i, sha in enumerate(shas):  # ages: blob 0 oldest
        t = time.time() - 1000 + i
        os.utime(store.path(sha), (t, t))
    store.touch(shas[1])  # just used: kept over newer ones
    removed = store.prune(keep={shas[0]}, retention=Retention(max_blobs=2, max_bytes=10**9))
    assert set(removed) == {shas[2], shas[3], shas[4]}
    assert {b.sha for b in store.list()} == {shas[0], shas[1], shas[5]}  # protected + the 2 most recent
    # a byte budget too: protected blobs do not count against it and are never removed
    removed = store.prune(keep={shas[0]}, retention=Retention(max_blobs=100, max_bytes=0))
    assert {b.sha for b in store.list()} == {shas[0]}


def test_retention_settings_are_checked():
    with pytest.raises(BlobError, match="max_blobs"):
        Retention(max_blobs=-1)
