"""Blobs between in-process nodes on loopback: a node serves what it keeps, and a peer serving at
a crawl does not stall the node (it keeps answering while it drops the crawler for another)."""

from __future__ import annotations

import hashlib
import os

import multiaddr
import pytest
import trio

from p2pgolf.node.blob_exchange import BlobServer, ExchangeSettings
from p2pgolf.node.host import full_addrs, make_host, parse_peer_addr, peer_info
from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.pool.blobs import BlobStore
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity

pytestmark = pytest.mark.timeout(60)
BENCH = benchmark("smoke")


def _node(tmp_path, name: str) -> Node:
    store = PoolStore(tmp_path / f"{name}.sqlite")
    return Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(BENCH,), sync_interval_s=3600.0, blobs_dir=tmp_path / f"{name}-blobs"))


def test_a_crawling_holder_does_not_stall_the_node_and_another_holder_supplies_the_blob(tmp_path):
    data = os.urandom(3 << 20)
    sha = hashlib.sha256(data).hexdigest()
    crawler_id = Identity.generate()
    # serves its first 1 MiB chunk at once (its burst), then 2 KiB/s: the next chunk would take minutes
    crawl = ExchangeSettings(serve_bytes_per_s=2048, serve_burst=1 << 20)

    async def main():
        me, honest = _node(tmp_path, "me"), _node(tmp_path, "honest")
        honest.blobs.put(data, kind="artifact")
        async with trio.open_nursery() as nursery:
            await nursery.start(me.run)
            await nursery.start(honest.run)
            crawler = make_host(crawler_id, ["/ip4/127.0.0.1/tcp/0"])
            async with crawler.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                store = BlobStore(tmp_path / "crawler-blobs")
                store.put(data, kind="artifact")
                BlobServer(store, crawl).attach(crawler)
                for addr in (full_addrs(crawler)[0], honest.addrs[0]):
                    await me.host.connect(peer_info(parse_peer_addr(addr)))
                got: dict = {}

                async def fetch():
                    started = trio.current_time()
                    got["path"] = await me.fetch_blob(sha, author=crawler_id.public_hex)  # the crawler is asked first
                    got["seconds"] = trio.current_time() - started

                nursery.start_soon(fetch)
                answered = 0
                with trio.fail_after(30):
                    while "path" not in got:
                        with trio.fail_after(2):  # the node answers its control requests throughout
                            reply = await me.control({"op": "status"})
                        assert reply["ok"]
                        answered += 1
                        await trio.sleep(0.2)
                assert got["path"].read_bytes() == data
                assert answered >= 5  # the crawler's chunk deadline (4 s) passed meanwhile
                assert got["seconds"] < 20
                await crawler.close()
            me.stop()
            honest.stop()

    trio.run(main)


def test_control_fetch_reports_a_blob_nobody_holds_in_one_line(tmp_path):
    async def main():
        me, other = _node(tmp_path, "me"), _node(tmp_path, "other")
        async with trio.open_nursery() as nursery:
            await nursery.start(me.run)
            await nursery.start(other.run)
            await me.host.connect(peer_info(parse_peer_addr(other.addrs[0])))
            reply = await me.control({"op": "fetch", "sha": "cd" * 32, "timeout_s": 5})
            assert not reply["ok"] and "does not hold it" in reply["error"]
            reply = await me.control({"op": "fetch", "sha": "not-a-digest"})
            assert not reply["ok"] and "not a SHA-256 digest" in reply["error"]
            me.stop()
            other.stop()

    trio.run(main)
