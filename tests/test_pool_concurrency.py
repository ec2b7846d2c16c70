"""Several real processes on one pool file: nothing lost, nothing corrupted, even under kill -9."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import msgpack
import pytest

import recordgen as g
from p2pgolf.pool.store import BUCKET_MS, PoolStore, bucket_digest

REPO = Path(__file__).resolve().parents[1]


def _writer(path: str, raws: list[bytes], start, use_batches: bool) -> None:
    start.wait(timeout=30)
    with PoolStore(path) as store:
        if use_batches:
            for i in range(0, len(raws), 7):
                store.add_many(raws[i : i + 7])
        else:
            for raw in raws:
                store.add(raw)


def test_two_processes_writing_one_pool_lose_nothing(tmp_path):
    path = str(tmp_path / "pool.sqlite")
    shared = g.batch(60, who=g.identity(3), start=500)
    mine = [r.raw for r in g.batch(150, who=g.identity(1))] + [r.raw for r in shared]
    theirs = [r.raw for r in shared] + [r.raw for r in g.batch(150, who=g.identity(2), start=200)]
    expected = {r for r in mine} | {r for r in theirs}
    PoolStore(path).close()  # create the schema once, so both start on equal terms

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [
        ctx.Process(target=_writer, args=(path, mine, start, False)),
        ctx.Process(target=_writer, args=(path, theirs, start, True)),
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    with PoolStore(path) as store:
        assert store.count() == len(expected) == 360
        assert set(store.raw_many(store.ids_between(g.SMOKE, 0, 2**62))) == expected
        for bucket in store.summary(g.SMOKE):
            assert bucket.digest == bucket_digest(store.ids_between(g.SMOKE, bucket.start_ms, bucket.start_ms + BUCKET_MS))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    conn.close()


# The writer reports each id only after its transaction has committed.
_KILLED_WRITER = textwrap.dedent(
    """
    import sys, msgpack
    from p2pgolf.pool.store import PoolStore
    path, source, mode = sys.argv[1:4]
    raws = msgpack.unpackb(open(source, "rb").read())
    with PoolStore(path) as store:
        if mode == "add":
            for raw in raws:
                print(store.add(raw).id, flush=True)
        else:
            for i in range(0, len(raws), 25):
                report = store.add_many(raws[i : i + 25])
                print("\\n".join(report.added), flush=True)
    """
)


@pytest.mark.parametrize("mode", ["add", "add_many"])
def test_writer_killed_mid_stream_loses_no_committed_record(tmp_path, mode):
    path = tmp_path / "pool.sqlite"
    already = g.batch(30, who=g.identity(4), start=900)
    with PoolStore(path) as store:
        store.add_many([r.raw for r in already])
    records = g.batch(1500, who=g.identity(1))
    source = tmp_path / "records.msgpack"
    source.write_bytes(msgpack.packb([r.raw for r in records]))
    kill_after = random.Random(f"kill-{mode}").randint(40, 120)

    writer = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path), str(source), mode],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        committed = []
        while len(committed) < kill_after:
            line = writer.stdout.readline()
            assert line, "writer stopped before it could be killed"
            committed.append(line.strip())
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=30)
        writer.stdout.close()
    assert writer.returncode == -signal.SIGKILL

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with PoolStore(path) as store:
        assert store.missing(committed) == []
        assert store.missing(r.id for r in already) == []
        n = store.count()
        assert len(committed) + len(already) <= n < len(records) + len(already)  # killed mid-stream
        # The pool still takes writes, and its digests agree with its contents.
        assert store.add(records[-1].raw).added
        for bucket in store.summary(g.SMOKE):
            assert bucket.digest == bucket_digest(store.ids_between(g.SMOKE, bucket.start_ms, bucket.start_ms + BUCKET_MS))
