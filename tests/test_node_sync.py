"""Sync between real in-process nodes on loopback: only what is missing moves, records pass the
same gate as gossip, and the periodic pass heals a partition."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from records_factory import signed_result

from p2pgolf.node.host import parse_peer_addr, peer_info
from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.node.sync import sync_with
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(60)
BENCH = benchmark("smoke")
HOUR = 3_600_000


def _records(n: int, *, author: Identity | None = None, hours: int = 24) -> list[bytes]:
    """n records spread over `hours` hour buckets ending now, by `author` or by one new author
    per 100 records (an unknown author may have at most 1000 records stored)."""
    import time

    authors = [author] if author else [Identity.generate() for _ in range((n + 99) // 100)]
    now = int(time.time() * 1000)
    return [signed_result(authors[i % len(authors)], seed=i, created_ms=now - (i % hours) * HOUR - i).raw for i in range(n)]


def _node(path: Path, **options) -> tuple[Node, PoolStore]:
    store = PoolStore(path)
    options.setdefault("sync_interval_s", 3600.0)
    return Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(BENCH,), **options)), store


async def _connected_pair(nursery, a: Node, b: Node) -> None:
    await nursery.start(a.run)
    await nursery.start(b.run)
    await b.host.connect(peer_info(parse_peer_addr(a.addrs[0])))


def test_sync_fetches_exactly_the_missing_records_and_then_nothing(tmp_path):
    records = _records(2000)

    async def main() -> None:
        a, store_a = _node(tmp_path / "a.sqlite")
        b, store_b = _node(tmp_path / "b.sqlite")
        store_a.add_many(records)
        store_b.add_many(records[:1500])  # b lacks 500, spread over every bucket
        async with trio.open_nursery() as nursery:
            await _connected_pair(nursery, a, b)
            with trio.fail_after(15):  # b syncs with a as soon as they are connected
                while not b.sync_reports:
                    await trio.sleep(0.05)
            report = b.sync_reports[-1]
            assert report.ids_compared == 2000  # every hour bucket differed, so all its ids were compared
            assert report.fetched == 500
            assert report.added == 500
            assert store_b.count() == 2000
            again = await sync_with(b.host, a.peer_id, BENCH.id, store_b, b.admission)
            assert (again.buckets_differing, again.ids_compared, again.fetched) == (0, 0, 0)
            a.stop()
            b.stop()

    trio.run(main)


def test_records_arriving_by_sync_pass_the_same_gate_as_gossip(tmp_path):
    blocked = Identity.generate()
    unknown = Identity.generate()
    good = _records(5, author=unknown)
    bad = _records(7, author=blocked)

    async def main() -> None:
        a, store_a = _node(tmp_path / "a.sqlite")
        b, store_b = _node(tmp_path / "b.sqlite")
        TrustStore(store_b).block(blocked.public_hex)
        b.admission.limits = type(b.admission.limits)(unknown_key_cap=3)
        store_a.add_many(good + bad)
        async with trio.open_nursery() as nursery:
            await _connected_pair(nursery, a, b)
            with trio.fail_after(10):
                while not b.sync_reports:
                    await trio.sleep(0.05)
            report = b.sync_reports[-1]
            assert report.verdicts == {"added": 3, "blocked": 7, "over-cap": 2}
            assert store_b.count(author=blocked.public_hex) == 0
            assert store_b.count(author=unknown.public_hex) == 3
            a.stop()
            b.stop()

    trio.run(main)


def test_periodic_sync_heals_records_that_gossip_never_carried(tmp_path):
    async def main() -> None:
        a, store_a = _node(tmp_path / "a.sqlite", sync_interval_s=1.0)
        b, store_b = _node(tmp_path / "b.sqlite", sync_interval_s=1.0)
        async with trio.open_nursery() as nursery:
            await _connected_pair(nursery, a, b)
            with trio.fail_after(10):
                while b.syncs == 0 or a.syncs == 0:
                    await trio.sleep(0.05)
            # Written straight into each pool while connected, as if gossip had lost them.
            store_a.add_many(_records(30))
            store_b.add_many(_records(20))
            with trio.fail_after(10):
                while not (store_a.count() == store_b.count() == 50):
                    await trio.sleep(0.1)
            assert a.synced_in == 20 and b.synced_in == 30
            a.stop()
            b.stop()

    trio.run(main)
