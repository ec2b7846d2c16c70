"""Retention keeps what it promises: this node's own results' artifacts and the current best
(best trusted result, best claim of anyone) are never pruned; the rest go least recently used
first, down to the configured number of blobs."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

from records_factory import make_result

from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.pool.blobs import BlobStore, Retention, protected_artifacts
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.signing import sign_record

BENCH = benchmark("smoke")


def _result_with_artifact(identity, blobs: BlobStore, val_bpb: float, seed: int, age_s: float):
    data = os.urandom(2000)
    sha = blobs.put(data, kind="artifact")
    t = time.time() - age_s
    os.utime(blobs.path(sha), (t, t))
    record = dataclasses.replace(make_result(identity, val_bpb=val_bpb, seed=seed), artifact=sha)
    return sign_record(record, identity.signing_key)


def test_retention_never_drops_own_artifacts_nor_the_current_best(tmp_path):
    me, pinned, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    store = PoolStore(tmp_path / "pool.sqlite")
    trust = TrustStore(store)
    trust.set_own(me.public_hex)
    trust.pin(pinned.public_hex)
    node = Node(me, store, trust, NodeOptions(benches=(BENCH,), blobs_dir=tmp_path / "blobs", retention=Retention(max_blobs=1)))
    blobs = node.blobs
    # oldest first: own runs are the oldest blobs, so LRU alone would drop them first
    own = [_result_with_artifact(me, blobs, v, i, age_s=1000 - i) for i, v in enumerate((4.0, 4.5))]
    best_claim = _result_with_artifact(stranger, blobs, 1.0, 10, age_s=900)
    best_trusted = _result_with_artifact(pinned, blobs, 2.5, 11, age_s=899)
    others = [_result_with_artifact(stranger, blobs, v, 20 + i, age_s=800 - i) for i, v in enumerate((2.0, 3.0, 3.5))]
    for signed in [*own, best_claim, best_trusted, *others]:
        store.add_signed(signed)

    keep = protected_artifacts(store, me.public_hex, {BENCH.id}, trust.status)
    assert keep == {own[0].record.artifact, own[1].record.artifact, best_claim.record.artifact, best_trusted.record.artifact}
    removed = node.retain()
    held = {b.sha for b in blobs.list()}
    assert keep <= held
    assert held - keep == {others[-1].record.artifact}  # max_blobs=1 besides the protected: the most recent
    assert set(removed) == {others[0].record.artifact, others[1].record.artifact}

    # a new run of ours is kept (and stays kept) even though it makes one too many
    run_file = tmp_path / "model.p2pgolf"
    run_file.write_bytes(os.urandom(3000))
    sha = hashlib.sha256(run_file.read_bytes()).hexdigest()
    assert node.keep_artifact(run_file, sha)
    store.add_signed(sign_record(dataclasses.replace(make_result(me, val_bpb=5.0, seed=99), artifact=sha), me.signing_key))
    node.retain()
    assert blobs.has(sha) and keep <= {b.sha for b in blobs.list()}
    # an artifact that does not hash to the digest its run names is refused, nothing else lost
    assert not node.keep_artifact(run_file, "ab" * 32)
    assert blobs.has(sha)
    store.close()


def test_retention_is_configured_in_config_toml_and_bad_values_are_named(tmp_path):
    import pytest

    from p2pgolf.node.config import load_config
    from p2pgolf.node.home import Home
    from p2pgolf.protocol.errors import ProtocolError

    home = Home(tmp_path)
    assert load_config(home).retention == Retention()
    home.config_file.write_text("[blobs]\nmax_blobs = 3\nmax_bytes = 1000000\n")
    assert load_config(home).retention == Retention(max_blobs=3, max_bytes=1_000_000)
    home.config_file.write_text("[blobs]\nmax_blobs = -1\n")
    with pytest.raises(ProtocolError, match="retention.max_blobs must be a whole number >= 0"):
        load_config(home)
    home.config_file.write_text("[blobs]\nkeep = 3\n")
    with pytest.raises(ProtocolError, match=r"unknown key\(s\) keep"):
        load_config(home)
