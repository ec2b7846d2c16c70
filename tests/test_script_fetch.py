"""Scripts travel between nodes: a node holding records of a script it lacks fetches the bytes from
the author's node, verified by hash, tells the user, and still does not run it until approved; a
corrupted transfer is refused and nothing is kept."""

from __future__ import annotations

import hashlib
import logging

import multiaddr
import pytest
import trio

import recordgen as g
from p2pgolf.node.blob_exchange import BlobServer
from p2pgolf.node.host import full_addrs, make_host, parse_peer_addr, peer_info
from p2pgolf.node.node import Node, NodeOptions
from p2pgolf.node.script_fetch import fetch_new_scripts
from p2pgolf.node.scripts import ScriptStore
from node_procs import make_home
from p2pgolf.pool.blobs import BlobStore
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.candidates import script_base
from p2pgolf.protocol.records import Result
from p2pgolf.protocol.signing import sign_record
from script_helpers import SCRIPTS, script_bytes

pytestmark = pytest.mark.timeout(90)
BENCH = benchmark("smoke")


def _node(root, name):
    home, identity = make_home(root, name)
    store = PoolStore(home.pool_db)
    return Node(identity, store, TrustStore(store), NodeOptions(benches=(BENCH,), sync_interval_s=3600.0, home=home, fetch_scripts=False)), home


def _record(author, sha: str, bpb: float):
    r = Result(bench=BENCH.id, author=author.public_hex, created_ms=g.T0, base=script_base(sha), diff={"LR": 0.004}, tokenizer="byte256",
               hw=g.CPU, budget_s=BENCH.budget_s, seed=1, metrics=g.metrics(bpb), trainer="script/0")
    return sign_record(r, author.signing_key)


class TamperingServer(BlobServer):
    def read_chunk(self, sha, offset, length):
        data = bytearray(super().read_chunk(sha, offset, length))
        data[len(data) // 2] ^= 0x01  # same length, one bit wrong
        return bytes(data)


def test_a_script_named_by_records_is_fetched_verified_announced_and_not_approved(tmp_path, caplog):
    sha = hashlib.sha256(script_bytes("tiny_golf.py")).hexdigest()

    async def main():
        (author, a_home), (me, b_home) = _node(tmp_path, "author"), _node(tmp_path, "me")
        ScriptStore(a_home).add_path(SCRIPTS / "tiny_golf.py")  # the author's node holds (and serves) it
        me.store.add(_record(author.identity, sha, 1.234).raw)  # as gossip would have delivered it
        async with trio.open_nursery() as nursery:
            await nursery.start(author.run)
            await nursery.start(me.run)
            await me.host.connect(peer_info(parse_peer_addr(author.addrs[0])))
            with caplog.at_level(logging.WARNING, logger="p2pgolf.node.script_fetch"):
                fetched = await fetch_new_scripts(me, ScriptStore(b_home))
            assert [f.usage.sha for f in fetched] == [sha] and fetched[0].usage.best_bpb == 1.234
            assert await fetch_new_scripts(me, ScriptStore(b_home)) == []  # held now: not fetched again
            author.stop()
            me.stop()
        mine = ScriptStore(b_home)
        entry = mine.entry(sha)
        assert entry.origin == "fetched" and entry.source == author.identity.peer_id
        assert not entry.approved and not mine.runnable(sha)  # fetching never approves
        assert mine.read_bytes(sha) == script_bytes("tiny_golf.py")
        message = " ".join(r.getMessage() for r in caplog.records)
        assert f"new script in use: {sha[:12]}, 1 result(s) by {author.identity.peer_id[:16]}, best val_bpb 1.2340" in message
        assert "will not run here until you read it" in message

    trio.run(main)


def test_a_corrupted_script_transfer_is_refused_and_nothing_is_kept(tmp_path):
    data = script_bytes("tiny_golf.py")
    sha = hashlib.sha256(data).hexdigest()
    liar = g.identity(31)

    async def main():
        me, home = _node(tmp_path, "me")
        me.store.add(_record(liar, sha, 0.5).raw)
        async with trio.open_nursery() as nursery:
            await nursery.start(me.run)
            host = make_host(liar, ["/ip4/127.0.0.1/tcp/0"])
            async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                store = BlobStore(tmp_path / "liar-blobs")
                store.put(data, kind="script")
                TamperingServer(store).attach(host)
                await me.host.connect(peer_info(parse_peer_addr(full_addrs(host)[0])))
                skip: set[str] = set()
                assert await fetch_new_scripts(me, ScriptStore(home), timeout_s=20, skip=skip) == []
                assert skip == {sha}
                await host.close()
            me.stop()
        mine = ScriptStore(home)
        assert not mine.has(sha) and not mine.blobs.has(sha) and mine.entries() == []

    trio.run(main)
