"""Verifying many records at once, in worker processes, so a late joiner's catch-up is bounded
by the machine's Ed25519 rate on every core rather than by one interpreter.

`verify_batch(raws, in_processes=True)` decodes and verifies a batch (`node.limits.verify_all`:
canonical decoding, validation, signature) in a pool of spawned processes, one per core, made on
first use and kept for the life of the node; small batches (or `in_processes=False`) run in a
worker thread instead, where starting processes would cost more than it saves. The result is a
list with, per envelope in order, what the pool stores of it (a `pool.store.Row`, flat so that
it crosses processes cheaply, and sent back without the envelope, which the caller already
holds; from a thread, the `SignedRecord` itself) or None (invalid). Workers are
spawned, not forked: the node has threads (libp2p, SQLite) that a fork would copy mid-flight;
and each leaves within a second of its node, however the node ended.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import logging
import multiprocessing
import os
import threading
import time

import trio

from p2pgolf.node.limits import verify_all
from p2pgolf.pool.store import Row
from p2pgolf.protocol.signing import SignedRecord

log = logging.getLogger(__name__)

_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)))


def process_pool() -> concurrent.futures.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers(), mp_context=multiprocessing.get_context("spawn"), initializer=_exit_with_parent, initargs=(os.getpid(),)
            )
        return _pool


def _exit_with_parent(parent: int) -> None:
    """In a worker: leave as soon as the node is gone (even after kill -9, which runs no clean-up)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def warm() -> None:
    """Start the worker processes now (a sync about to fetch many records calls this first, so
    spawning overlaps the summary and id exchange instead of delaying the first batch)."""
    try:
        pool = process_pool()
        for _ in range(workers()):
            pool.submit(verify_rows, [])
    except Exception:
        log.exception("cannot start the verification processes")


def verify_rows(raws: list[bytes]) -> list[Row | None]:
    """`verify_all`, flattened to the rows the pool stores, without their envelopes (runs in a
    worker process): the caller holds the very bytes it sent, so they need not travel back."""
    return [None if rec is None else Row.of(rec)._replace(raw=b"") for rec in verify_all(raws)]


async def verify_batch(raws: list[bytes], *, in_processes: bool = True) -> list[SignedRecord | Row | None]:
    if not in_processes:
        return await trio.to_thread.run_sync(verify_all, raws)
    try:
        future = process_pool().submit(verify_rows, raws)
    except Exception:  # a broken pool (a worker was killed): verify here rather than not at all
        log.exception("verification processes unavailable; verifying in a thread")
        return await trio.to_thread.run_sync(verify_all, raws)
    try:
        rows = await trio.to_thread.run_sync(future.result, abandon_on_cancel=True)
        return [None if row is None else row._replace(raw=raw) for row, raw in zip(rows, raws)]
    except concurrent.futures.process.BrokenProcessPool:
        global _pool
        with _pool_lock:
            _pool = None  # the next large batch starts a fresh pool
        log.warning("a verification process died; verifying this batch in a thread")
        return await trio.to_thread.run_sync(verify_all, raws)
