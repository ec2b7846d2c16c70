"""The network edge under attack, against real `p2pgolf join` processes on loopback (issue 20).

Each figure is measured with the attack and without it in the same run:

- `honest_p99_under_flood_s`: an honest node H gossips records at 2/s to the victim V (both join
  processes) while a validator-less gossipsub host writes signed pubsub messages carrying
  records from fresh unknown keys at 10,000/s to V (100 per RPC); latency = V's received_ms
  minus H's (one clock). Baseline: no flood.
- `honest_p99_under_sybil_flood_s`: the same 10,000 records/s spread over 250 fresh peer ids,
  40/s each (under V's per-peer rate of 50/s), each writing RPCs on its own gossipsub stream; H,
  whose key V pins, publishes alternately records of its own key (this figure) and by a key V
  does not know (`unknown_honest_*`), and V's unknown-key records and bytes kept are reported
  beside them.
  An honest record not at V 60 s after the last was published counts as not delivered.
- `rss_mb_under_frames`: growth of V's resident memory while a peer sends hostile sync frames
  (8 MiB of empty maps, and of nested empty lists, on 8 streams at once). Baseline: the same
  number of honest summary requests.
- `unknown_disk_bytes`: bytes V holds from unknown keys after syncing a peer that serves a whole
  season from unknown keys, with a quota set below it (config.toml `unknown_quota_bytes`).
  Baseline: the quota.
- `catchup_100k_s`: a late joiner (a join process) fetches a season of records (100,000; 10,000
  with --quick) from one join process, every record verified; time from its listening (it
  dials the peer next) to holding all of them (its process start-up is reported beside it), with
  the progress `p2pgolf status` showed on the way. Baseline: the Ed25519 floor
  (single-core verification time of the same records divided by the cores).

    .venv/bin/python benchmarks/adversary/edge.py [--quick] [--floods-only | --catchup-only] [--json]
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import psutil
import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gossip_bench import cpu_seconds  # noqa: E402
from node_procs import NodeProc, make_home, stop_all, wait_until  # noqa: E402

from p2pgolf.protocol.benchmarks import benchmark  # noqa: E402
from p2pgolf.protocol.identity import Identity  # noqa: E402
from p2pgolf.protocol.records import HardwareClass, Metrics, Result  # noqa: E402
from p2pgolf.protocol.signing import SignedRecord, sign_record  # noqa: E402

BENCH = benchmark("smoke")
GOALS = {"honest_p99_under_flood_s": 2.0, "rss_mb_under_frames": 200.0, "catchup_100k_s": 15.0}
FLOOD_RATE = 10_000.0
SYBIL_PEERS = 250  # 40 records/s each: under the per-peer rate of 50/s, 10,000/s together
SEASON_DAYS = 30


def make_records(n: int, keys: list[Identity], *, spread_ms: int, seed0: int = 0) -> list[SignedRecord]:
    now = int(time.time() * 1000) - 60_000
    out = []
    for i in range(n):
        key = keys[i % len(keys)]
        result = Result(
            bench=BENCH.id, author=key.public_hex, created_ms=now - (i * spread_ms) // max(n, 1), base="smoke-tiny", diff={},
            tokenizer=BENCH.tokenizer, hw=HardwareClass("cpu", "Bench CPU", 1, 8192), budget_s=BENCH.budget_s, seed=seed0 + i,
            metrics=Metrics(val_bpb=2.5, val_loss=1.7, steps=100, train_tokens=409600, artifact_bytes=123456, eval_tokens=65536), trainer="bench/0",
        )
        out.append(sign_record(result, key.signing_key))
    return out


def _sign_chunk(args: tuple[int, int, int, int]) -> list[bytes]:
    n, n_keys, spread_ms, seed0 = args
    keys = [Identity.generate() for _ in range(n_keys)]
    return [r.raw for r in make_records(n, keys, spread_ms=spread_ms, seed0=seed0)]


def signed_raws(n: int, n_keys: int, spread_ms: int) -> list[bytes]:
    """n records by n_keys fresh keys, signed on every core."""
    import concurrent.futures

    cores = max(1, os.cpu_count() or 1)
    per = -(-n // cores)
    jobs = [(min(per, n - i * per), max(1, n_keys // cores), spread_ms, i * per) for i in range(cores) if n - i * per > 0]
    with concurrent.futures.ProcessPoolExecutor(cores) as pool:
        return [raw for chunk in pool.map(_sign_chunk, jobs) for raw in chunk]


def _store_raws(home, raws: list[bytes]) -> None:
    from p2pgolf.pool.store import PoolStore

    with PoolStore(home.pool_db) as store:
        for i in range(0, len(raws), 5000):
            store.add_many(raws[i : i + 5000])


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


class RssWatch:
    """Peak RSS of a process, sampled every 20 ms in a thread while active."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, _rss_mb(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, _rss_mb(self.pid))
            except psutil.Error:
                return
            time.sleep(0.02)


# --- catch-up and quota ------------------------------------------------------------------------


def catchup(root: Path, raws: list[bytes]) -> dict:
    from p2pgolf.node.verify_pool import workers
    from p2pgolf.protocol.signing import decode_record

    home_a, id_a = make_home(root, "season")
    _store_raws(home_a, raws)
    a = NodeProc(home_a, id_a)
    home_b, id_b = make_home(root, "late")
    b = NodeProc(home_b, id_b)
    progress: list[tuple[float, int, int]] = []
    try:
        a.start([], "--sync-every", "3600", "--no-peer-exchange").wait_ready(60)
        launched = time.monotonic()
        b.start([a.addr], "--sync-every", "3600", "--no-peer-exchange")
        b.wait_ready(60)
        started = time.monotonic()  # listening: it dials A next (the process's start-up is reported apart)
        startup = started - launched
        while True:
            st = b.status()
            fetched = sum(s["fetched"] for s in st.get("syncing", ()))
            progress.append((time.monotonic() - started, st["pool_records"], fetched))
            if st["pool_records"] >= len(raws) or time.monotonic() - started > 300:
                break
            time.sleep(0.2)
        took = time.monotonic() - started
        held = b.status()["pool_records"]
        cpu = {"late joiner": cpu_seconds([b.proc.pid]), "its verifying processes": cpu_seconds([c.pid for c in psutil.Process(b.proc.pid).children(recursive=True)]), "server": cpu_seconds([a.proc.pid])}
    finally:
        stop_all([b, a])
    sample = raws[: min(2000, len(raws))]
    t = time.process_time()
    for raw in sample:
        decode_record(raw)
    per_record = (time.process_time() - t) / len(sample)
    shown = [p for p in progress if p[2] > 0]
    return {
        "catchup_records": len(raws), "catchup_held": held, "catchup_s": took, "catchup_startup_s": startup,
        "catchup_floor_s": per_record * len(raws) / workers(), "verify_us_per_record": per_record * 1e6,
        "catchup_cpu_s": cpu, "catchup_load_avg_1m": os.getloadavg()[0],
        "catchup_progress_shown": len(shown), "catchup_progress_sample": shown[len(shown) // 2] if shown else None,
        "home_a": home_a,
    }


def quota_attack(root: Path, home_a, id_a, raws: list[bytes], quota_bytes: int) -> dict:
    """V, with `quota_bytes` for unknown keys, syncs the season server A (all keys unknown to V)."""
    from p2pgolf.pool.store import PoolStore

    home_v, id_v = make_home(root, "quota")
    home_v.config_file.write_text(f"[limits]\nunknown_quota_bytes = {quota_bytes}\n")
    a, v = NodeProc(home_a, id_a), NodeProc(home_v, id_v)
    try:
        a.start([], "--sync-every", "3600", "--no-peer-exchange").wait_ready(60)
        v.start([a.addr], "--sync-every", "3600", "--no-peer-exchange").wait_ready(60)
        last, still = -1, 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and still < 10:  # until the pool stops growing for 2 s
            n = v.pool_count()
            still = still + 1 if n == last else 0
            last = n
            time.sleep(0.2)
    finally:
        stop_all([v, a])
    with PoolStore(home_v.pool_db) as store:
        used, records = store.untrusted_usage(id_v.public_hex)
    offered = sum(len(r) for r in raws)
    return {"unknown_disk_bytes": used, "unknown_records_kept": records, "unknown_quota_bytes": quota_bytes, "unknown_offered_bytes": offered}


# --- hostile frames ------------------------------------------------------------------------------


async def _send_frames(target: str, frames: list[bytes], streams: int) -> int:
    """Open `streams` sync streams to `target` at once and send every frame on each; returns how
    many streams could be opened."""
    from contextlib import AsyncExitStack

    import multiaddr
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    from p2pgolf.node.host import make_host, parse_peer_addr, peer_info
    from p2pgolf.node.sync import SYNC_PROTOCOL

    host = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    opened = 0
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
        try:
            peer = parse_peer_addr(target)
            await host.connect(peer_info(peer))

            async def one() -> None:
                nonlocal opened
                try:
                    with trio.fail_after(30):
                        stream = await host.new_stream(ID.from_base58(peer.peer_id), [TProtocol(SYNC_PROTOCOL)])
                        opened += 1
                        for frame in frames:
                            await stream.write(frame)
                            await stream.read(4)  # its reply (or the end: it hung up)
                except Exception:
                    pass

            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    nursery.start_soon(one)
        finally:
            with trio.CancelScope(shield=True):
                await host.close()
    return opened


def frames_attack(root: Path, quick: bool) -> dict:
    import struct

    from p2pgolf.node.sync import MAX_FRAME
    from p2pgolf.protocol import canonical

    size = MAX_FRAME - 16
    maps = b"\x81\xa3ids\xdd" + (size - 9).to_bytes(4, "big") + b"\x80" * (size - 9)
    inner = b"\xdc\xff\xff" + b"\x90" * 65535
    lists = b"\xdc" + (size // len(inner)).to_bytes(2, "big") + inner * (size // len(inner))
    hostile = [struct.pack(">I", len(f)) + f for f in (maps, lists)]
    honest = [struct.pack(">I", len(f)) + f for f in [canonical.encode({"op": "summary", "bench": BENCH.id, "after": -1})] * 2]
    streams = 4 if quick else 8
    home_v, id_v = make_home(root, "frames")
    v = NodeProc(home_v, id_v)
    out = {}
    try:
        v.start([], "--no-peer-exchange").wait_ready(60)
        time.sleep(1.0)
        for name, frames in (("honest", honest), ("hostile", hostile)):
            before = _rss_mb(v.proc.pid)
            with RssWatch(v.proc.pid) as watch:
                opened = trio.run(_send_frames, v.addr, frames, streams)
                time.sleep(0.5)
            out[name] = {"rss_growth_mb": watch.peak - before, "streams": opened, "alive": v.proc.poll() is None}
    finally:
        stop_all([v])
    return {"rss_mb_under_frames": out["hostile"]["rss_growth_mb"], "rss_mb_honest_frames": out["honest"]["rss_growth_mb"], "frames_streams": streams, "frames_victim_alive": out["hostile"]["alive"]}


# --- flood ---------------------------------------------------------------------------------------


async def _flood(target: str, raws: list[bytes], rate: float, duration: float, sent: list[float]) -> None:
    """Write `raws` to `target` at `rate` for `duration`; sent = [messages, seconds until the
    victim dropped us (or the whole duration)]."""
    from contextlib import AsyncExitStack

    import multiaddr
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    from p2pgolf.node.gossip import raise_library_limits
    from p2pgolf.node.host import make_host, parse_peer_addr, peer_info

    raise_library_limits(65536)
    host = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    router = GossipSub([PROTOCOL_ID_V11], 6, 4, 12, heartbeat_interval=1, spam_protection_enabled=False)
    pubsub = Pubsub(host, router)
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(router))
        await stack.enter_async_context(host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
        try:
            await pubsub.wait_until_ready()
            await pubsub.subscribe(BENCH.topic)
            target_peer = parse_peer_addr(target)
            with trio.fail_after(15):
                await host.connect(peer_info(target_peer))
                while not any(p.to_base58() == target_peer.peer_id for p in pubsub.peer_topics.get(BENCH.topic, ())):
                    await trio.sleep(0.05)
            # Messages are signed up front and written raw, 100 to an RPC: publishing one by one
            # through py-libp2p reaches only ~1,000 messages/s on this machine.
            from libp2p.peer.id import ID
            from libp2p.pubsub.pb import rpc_pb2
            from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX

            key, public = host.get_private_key(), host.get_public_key().serialize()
            messages = []
            for i, raw in enumerate(raws):
                msg = rpc_pb2.Message(data=raw, topicIDs=[BENCH.topic], from_id=host.get_id().to_bytes(), seqno=(time.time_ns() + i).to_bytes(8, "big"))
                msg.signature = key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
                msg.key = public
                messages.append(msg)
            stream = pubsub.peers[ID.from_base58(target_peer.peer_id)]
            start = trio.current_time()
            sent[1] = duration
            for i in range(0, len(messages), 100):
                now = trio.current_time()
                if now - start > duration:
                    break
                ahead = sent[0] / rate - (now - start)
                if ahead > 0:
                    await trio.sleep(ahead)
                if not await pubsub.write_msg(stream, rpc_pb2.RPC(publish=messages[i : i + 100])):
                    sent[1] = trio.current_time() - start  # shut out: the victim dropped us
                    break
                sent[0] += len(messages[i : i + 100])
        finally:
            with trio.CancelScope(shield=True):
                await host.close()


async def _sybil_flood(target: str, raws: list[bytes], peers: int, rate: float, duration: float, sent: list[float]) -> None:
    """Write `raws` to `target` from `peers` hosts (a fresh peer id each), each at rate/peers
    (under the victim's per-peer rate), together at `rate`, for `duration`; sent = [messages,
    seconds, peers that got a gossip stream]. Each host writes pubsub RPCs on its own meshsub
    stream (it runs no pubsub service: it only reads and discards what the victim sends it)."""
    from contextlib import AsyncExitStack

    import multiaddr
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX
    from libp2p.utils import encode_varint_prefixed

    from p2pgolf.node.host import make_host, parse_peer_addr, peer_info

    async def discard(stream) -> None:
        try:
            while await stream.read(65536):
                pass
        except Exception:
            pass

    target_peer = parse_peer_addr(target)
    pid = ID.from_base58(target_peer.peer_id)
    hosts = [make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) for _ in range(peers)]
    per_host = [raws[i::peers] for i in range(peers)]
    frames: list[list[bytes]] = []  # per host: its RPCs, each one tick's messages, signed up front
    tick = 0.5
    per_tick = max(1, int(round(rate / peers * tick)))
    for host, mine in zip(hosts, per_host):
        key, public, me = host.get_private_key(), host.get_public_key().serialize(), host.get_id().to_bytes()
        msgs = []
        for i, raw in enumerate(mine):
            msg = rpc_pb2.Message(data=raw, topicIDs=[BENCH.topic], from_id=me, seqno=(time.time_ns() + i).to_bytes(8, "big"))
            msg.signature = key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
            msg.key = public
            msgs.append(msg)
        frames.append([encode_varint_prefixed(rpc_pb2.RPC(publish=msgs[j : j + per_tick]).SerializeToString()) for j in range(0, len(msgs), per_tick)])
    subscribe = encode_varint_prefixed(rpc_pb2.RPC(subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=BENCH.topic)]).SerializeToString())
    async with AsyncExitStack() as stack:
        streams: list = [None] * peers
        for host in hosts:
            host.set_stream_handler(TProtocol(PROTOCOL_ID_V11), discard)
            await stack.enter_async_context(host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
        try:
            limiter = trio.CapacityLimiter(16)

            async def join(i: int) -> None:
                async with limiter:
                    try:
                        with trio.fail_after(30):
                            await hosts[i].connect(peer_info(target_peer))
                            streams[i] = await hosts[i].new_stream(pid, [TProtocol(PROTOCOL_ID_V11)])
                            await streams[i].write(subscribe)
                    except Exception:
                        streams[i] = None

            async with trio.open_nursery() as nursery:
                for i in range(peers):
                    nursery.start_soon(join, i)
            sent[2] = sum(1 for st in streams if st is not None)
            await trio.sleep(1.0)  # the victim opens its own streams back
            start = trio.current_time()

            async def pump(i: int) -> None:
                for n, frame in enumerate(frames[i]):
                    due = start + (n + i / peers) * tick  # spread over the tick
                    if due - start > duration:
                        return
                    await trio.sleep_until(due)
                    try:
                        await streams[i].write(frame)
                    except Exception:
                        return
                    sent[0] += per_tick

            async with trio.open_nursery() as nursery:
                for i in range(peers):
                    if streams[i] is not None:
                        nursery.start_soon(pump, i)
            sent[1] = trio.current_time() - start
        finally:
            with trio.CancelScope(shield=True):
                for host in hosts:
                    with trio.move_on_after(5):
                        await host.close()


def _received(home, ids: set[str]) -> dict[str, int]:
    import sqlite3

    conn = sqlite3.connect(f"file:{home.pool_db}?mode=ro", uri=True, timeout=30)
    try:
        return {i: ms for i, ms in conn.execute("SELECT id, received_ms FROM records").fetchall() if i in ids}
    finally:
        conn.close()


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]


def flood_attack(root: Path, flood_raws: list[bytes], duration: float) -> dict:
    honest_key = Identity.generate()
    out = {}
    for name in ("baseline", "flood"):
        home_v, id_v = make_home(root, f"victim-{name}")
        home_h, id_h = make_home(root, f"honest-{name}")
        v, h = NodeProc(home_v, id_v), NodeProc(home_h, id_h)
        sent = [0, 0.0]
        try:
            v.start([], "--sync-every", "3600", "--no-peer-exchange").wait_ready(60)
            h.start([v.addr], "--sync-every", "3600", "--no-peer-exchange").wait_ready(60)
            wait_until(lambda: len(v.status()["peers"]) == 1, 20, what="H to connect to V")
            time.sleep(1.5)  # the mesh forms
            honest = [r.raw for r in make_records(int(duration * 2) + 2, [honest_key], spread_ms=1000, seed0=10**6 + len(out) * 1000)]
            ids: list[str] = []

            def publish_honest() -> None:
                for raw in honest:
                    ids.extend(r["id"] for r in h.publish([raw]) if "id" in r)
                    time.sleep(0.5)

            publisher = threading.Thread(target=publish_honest, daemon=True)
            publisher.start()
            if name == "flood":
                trio.run(_flood, v.addr, flood_raws, FLOOD_RATE, duration, sent)
            publisher.join(duration + 30)
            time.sleep(3.0)
            at_h, at_v = _received(home_h, set(ids)), _received(home_v, set(ids))
        finally:
            stop_all([h, v])
        lat = [(at_v[i] - at_h[i]) / 1000 for i in ids if i in at_v and i in at_h]
        out[name] = {"p99_s": _p99(lat), "delivered": len(lat), "published": len(ids), "flood_sent": sent[0], "flood_s": sent[1], "flood_rate": sent[0] / sent[1] if sent[1] else 0.0}
    return {
        "honest_p99_under_flood_s": out["flood"]["p99_s"], "honest_p99_no_flood_s": out["baseline"]["p99_s"],
        "honest_delivered_under_flood": f"{out['flood']['delivered']}/{out['flood']['published']}",
        "honest_delivered_no_flood": f"{out['baseline']['delivered']}/{out['baseline']['published']}",
        "flood_sent": out["flood"]["flood_sent"], "flood_rate_achieved": out["flood"]["flood_rate"], "flood_shut_out_after_s": out["flood"]["flood_s"] if out["flood"]["flood_s"] < duration else None,
    }


def sybil_flood_attack(root: Path, flood_raws: list[bytes], duration: float, peers: int, *, shared_budget: bool = True) -> dict:
    """The flood spread over `peers` fresh peer ids, each under V's per-peer rate. H publishes,
    alternately, records by a key V pins and by a key V does not know; both are measured.
    `shared_budget=False`: V's budget for all peers together is set out of reach (as on main)."""
    from p2pgolf.pool.trust import TrustStore

    stranger_key = Identity.generate()
    home_v, id_v = make_home(root, f"victim-sybil-{shared_budget}")
    if not shared_budget:
        home_v.config_file.write_text("[limits]\nunknown_pushed_per_s = 1e9\nunknown_pushed_burst = 1000000000\n")
    home_h, id_h = make_home(root, f"honest-sybil-{shared_budget}")
    pinned_key = id_h  # V pins the honest peer: its node key, which signs its own records
    with TrustStore(home_v.pool_db) as trust:
        trust.pin(pinned_key.public_hex, "honest")
    v, h = NodeProc(home_v, id_v), NodeProc(home_h, id_h)
    sent = [0, 0.0, 0]
    n = int(duration) + 2
    honest = [r.raw for pair in zip(make_records(n, [pinned_key], spread_ms=1000, seed0=3 * 10**6), make_records(n, [stranger_key], spread_ms=1000, seed0=4 * 10**6)) for r in pair]
    pinned_raws = set(honest[0::2])
    ids: list[tuple[str, bool]] = []
    try:
        v.start([], "--sync-every", "3600", "--no-peer-exchange").wait_ready(60)
        h.start([v.addr], "--sync-every", "3600", "--no-peer-exchange").wait_ready(60)
        wait_until(lambda: len(v.status()["peers"]) == 1, 20, what="H to connect to V")
        time.sleep(1.5)
        publisher_go = threading.Event()

        def publish_honest() -> None:
            publisher_go.wait(120)
            for raw in honest:
                ids.extend((r["id"], raw in pinned_raws) for r in h.publish([raw]) if "id" in r)
                time.sleep(0.5)

        publisher = threading.Thread(target=publish_honest, daemon=True)
        publisher.start()
        rss_before = _rss_mb(v.proc.pid)
        cpu_before = cpu_seconds([v.proc.pid])

        async def attack() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_sybil_flood, v.addr, flood_raws, peers, FLOOD_RATE, duration, sent)
                while sent[2] == 0 and sent[0] == 0:  # the sybils are connected: H starts with the flood
                    await trio.sleep(0.05)
                await trio.sleep(1.0)
                publisher_go.set()

        with RssWatch(v.proc.pid) as watch:
            trio.run(attack)
            publisher_go.set()
            publisher.join(duration + 30)
            # honest records still on the way (V works through what it buffered): up to 60 s more
            wanted = {i for i, _ in ids}
            try:
                wait_until(lambda: len(wanted & set(_received(home_v, wanted))) == len(wanted), 60, interval=0.5, what="honest records")
            except AssertionError:
                pass  # what has not arrived by then counts as not delivered
        status = v.status()
        ids_only = {i for i, _ in ids}
        at_h, at_v = _received(home_h, ids_only), _received(home_v, ids_only)
        victim_cpu = cpu_seconds([v.proc.pid]) - cpu_before
    finally:
        stop_all([h, v])
    from p2pgolf.pool.store import PoolStore

    with PoolStore(home_v.pool_db) as store:
        used, kept = store.untrusted_usage(id_v.public_hex)
    lat = {True: [], False: []}
    for i, is_pinned in ids:
        if i in at_v and i in at_h:
            lat[is_pinned].append((at_v[i] - at_h[i]) / 1000)
    published = {k: sum(1 for _, p in ids if p == k) for k in (True, False)}
    return {
        "sybil_peers": peers, "sybil_peers_connected": sent[2], "sybil_flood_sent": sent[0],
        "sybil_flood_rate_achieved": sent[0] / sent[1] if sent[1] else 0.0,
        "honest_p99_under_sybil_flood_s": _p99(lat[True]),
        "honest_delivered_under_sybil_flood": f"{len(lat[True])}/{published[True]}",
        "unknown_honest_p99_under_sybil_flood_s": _p99(lat[False]),
        "unknown_honest_delivered_under_sybil_flood": f"{len(lat[False])}/{published[False]}",
        "sybil_flood_unknown_records_kept": kept, "sybil_flood_unknown_disk_bytes": used,
        "sybil_flood_rss_growth_mb": watch.peak - rss_before, "sybil_flood_victim_cpu_s": victim_cpu,
        "sybil_flood_victim_status_peers": len(status.get("peers", ())),
    }  # fmt: skip


# --- all of it -----------------------------------------------------------------------------------


def measure_catchup(quick: bool = False) -> dict:
    """`catchup_100k_s` alone (`--catchup-only`): the season signed, served and fetched as in `measure`."""
    season = 10_000 if quick else 100_000
    result: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "settings": {"season_records": season, "season_keys": 20, "quick": quick, "catchup_only": True},
    }
    t = time.monotonic()
    raws = signed_raws(season, 20, SEASON_DAYS * 86_400_000)
    result["settings"]["signing_s"] = time.monotonic() - t
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        cu = catchup(Path(tmp), raws)
        cu.pop("home_a")
        result.update(cu)
    result["catchup_100k_s"] = result["catchup_s"] * (100_000 / season)  # scaled when --quick
    result["catchup_100k_goal_met"] = result["catchup_100k_s"] < GOALS["catchup_100k_s"]
    return result


def measure(quick: bool = False) -> dict:
    """Every edge figure, with its no-attack baseline, from one run (see the module docstring)."""
    season = 10_000 if quick else 100_000
    duration = 5.0 if quick else 10.0
    result: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "settings": {"season_records": season, "season_keys": 20, "flood_rate_target": FLOOD_RATE, "flood_duration_s": duration, "quick": quick},
    }
    t = time.monotonic()
    raws = signed_raws(season, 20, SEASON_DAYS * 86_400_000)
    flood = signed_raws(int(FLOOD_RATE * duration), 2000, 600_000)
    result["settings"]["signing_s"] = time.monotonic() - t
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        root = Path(tmp)
        cu = catchup(root, raws)
        home_a = cu.pop("home_a")
        result.update(cu)
        from p2pgolf.protocol.identity import load_identity

        quota = sum(len(r) for r in raws) // 4
        result.update(quota_attack(root, home_a, load_identity(home_a.key_file), raws, quota))
        result.update(frames_attack(root, quick))
        result.update(flood_attack(root, flood, duration))
        result.update(sybil_flood_attack(root, flood, duration, SYBIL_PEERS))
    result["catchup_100k_s"] = result["catchup_s"] * (100_000 / season)  # scaled when --quick
    result["unknown_disk_within_quota"] = result["unknown_disk_bytes"] <= result["unknown_quota_bytes"]
    return result


def measure_floods(quick: bool = False) -> dict:
    """Only the two floods (one peer, and 250 sybil peer ids), each with its no-attack baseline,
    in one run: the `flood` part of benchmarks/adversary_bench.py."""
    duration = 5.0 if quick else 10.0
    result: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "settings": {"flood_rate_target": FLOOD_RATE, "flood_duration_s": duration, "sybil_peers": SYBIL_PEERS, "quick": quick},
    }
    flood = signed_raws(int(FLOOD_RATE * duration), 2000, 600_000)
    with tempfile.TemporaryDirectory(prefix="edge-flood-") as tmp:
        root = Path(tmp)
        result.update(flood_attack(root, flood, duration))
        result["load_avg_1m_after_single_flood"] = os.getloadavg()[0]
        result.update(sybil_flood_attack(root, flood, duration, SYBIL_PEERS))
    result["load_avg_1m_after_sybil_flood"] = os.getloadavg()[0]
    return result


def _flood_table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m, s = r["machine"], r["settings"]
    console = Console()
    console.print(f"machine: {m['platform']}, {m['cpus']} CPUs, load {m['load_avg_1m']:.1f} at start, {r['load_avg_1m_after_single_flood']:.1f} after the single-peer flood, "
                  f"{r['load_avg_1m_after_sybil_flood']:.1f} after the sybil flood; python {m['python']}", markup=False)
    console.print(f"settings: flood target {s['flood_rate_target']:,.0f} rec/s for {s['flood_duration_s']:g} s; {s['sybil_peers']} sybil peer ids; join processes on loopback", markup=False)
    t = Table("measure", "under attack", "no attack (same run)", "goal")

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f} s"

    t.add_row("honest p99, flood from one peer", f"{fmt(r['honest_p99_under_flood_s'])} ({r['honest_delivered_under_flood']})", f"{fmt(r['honest_p99_no_flood_s'])} ({r['honest_delivered_no_flood']})", "< 2 s")
    t.add_row(f"honest p99, flood over {r['sybil_peers']} peer ids (pinned peer)", f"{fmt(r['honest_p99_under_sybil_flood_s'])} ({r['honest_delivered_under_sybil_flood']})", fmt(r["honest_p99_no_flood_s"]), "< 2 s")
    t.add_row(f"honest p99, flood over {r['sybil_peers']} peer ids (unknown key)", f"{fmt(r['unknown_honest_p99_under_sybil_flood_s'])} ({r['unknown_honest_delivered_under_sybil_flood']})", "", "")
    t.add_row("sybil flood: sent, kept", f"{r['sybil_flood_sent']:,} ({r['sybil_flood_rate_achieved']:,.0f}/s), {r['sybil_flood_unknown_records_kept']:,} kept ({r['sybil_flood_unknown_disk_bytes']:,} B)", "0", "")
    t.add_row("sybil flood: victim RSS growth, CPU", f"{r['sybil_flood_rss_growth_mb']:.1f} MB, {r['sybil_flood_victim_cpu_s']:.1f} s", "", "")
    console.print(t)


def _table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m, s = r["machine"], r["settings"]
    console.print(f"machine: {m['platform']}, {m['cpus']} CPUs, load {m['load_avg_1m']:.1f}, python {m['python']}", markup=False)
    flood = "catch-up only" if s.get("catchup_only") else f"flood target {s['flood_rate_target']:,.0f} rec/s for {s['flood_duration_s']:g} s"
    console.print(
        f"settings: season {s['season_records']:,} records by {s['season_keys']} keys; {flood}; "
        f"join processes on loopback{' (quick)' if s['quick'] else ''}",
        markup=False,
    )
    t = Table("measure", "under attack", "no attack (same run)", "ratio", "goal")
    if s.get("catchup_only"):
        _catchup_rows(t, r)
        console.print(t)
        return

    def ratio(a, b):
        return f"{a / b:.2f}x" if a is not None and b not in (None, 0) else ""

    def fmt(v, f):
        return "n/a" if v is None else f.format(v)

    t.add_row("honest gossip p99", fmt(r["honest_p99_under_flood_s"], "{:.3f} s"), fmt(r["honest_p99_no_flood_s"], "{:.3f} s"), ratio(r["honest_p99_under_flood_s"], r["honest_p99_no_flood_s"]), "< 2 s")
    t.add_row("honest records delivered", r["honest_delivered_under_flood"], r["honest_delivered_no_flood"], "", "all")
    cut = f", shut out after {r['flood_shut_out_after_s']:.1f} s" if r["flood_shut_out_after_s"] is not None else ", never shut out"
    t.add_row("flood sent (rate while connected)", f"{r['flood_sent']:,} ({r['flood_rate_achieved']:,.0f}/s{cut})", "0", "", "")
    sp = f"{r['sybil_peers']} peer ids"
    t.add_row(f"honest p99, flood over {sp} (pinned key)", fmt(r["honest_p99_under_sybil_flood_s"], "{:.3f} s") + f" ({r['honest_delivered_under_sybil_flood']})", fmt(r["honest_p99_no_flood_s"], "{:.3f} s"), "", "< 2 s")
    t.add_row(f"honest p99, flood over {sp} (unknown key)", fmt(r["unknown_honest_p99_under_sybil_flood_s"], "{:.3f} s") + f" ({r['unknown_honest_delivered_under_sybil_flood']})", "", "", "")
    t.add_row(f"flood over {sp}: sent, kept", f"{r['sybil_flood_sent']:,} ({r['sybil_flood_rate_achieved']:,.0f}/s), {r['sybil_flood_unknown_records_kept']:,} kept ({r['sybil_flood_unknown_disk_bytes']:,} B)", "0", "", "within quota")
    t.add_row(f"flood over {sp}: victim RSS growth, CPU", f"{r['sybil_flood_rss_growth_mb']:.1f} MB, {r['sybil_flood_victim_cpu_s']:.1f} s", "", "", "")
    t.add_row("victim RSS growth, sync frames", f"{r['rss_mb_under_frames']:.1f} MB", f"{r['rss_mb_honest_frames']:.1f} MB", ratio(r["rss_mb_under_frames"], r["rss_mb_honest_frames"]), "< 200 MB")
    t.add_row("unknown-key bytes kept", f"{r['unknown_disk_bytes']:,}", f"quota {r['unknown_quota_bytes']:,}", ratio(r["unknown_disk_bytes"], r["unknown_quota_bytes"]), "<= quota")
    _catchup_rows(t, r)
    console.print(t)


def _catchup_rows(t, r: dict) -> None:
    m = r["machine"]

    def ratio(a, b):
        return f"{a / b:.2f}x" if a is not None and b not in (None, 0) else ""

    t.add_row(f"catch-up of {r['catchup_records']:,} records", f"{r['catchup_s']:.1f} s ({r['catchup_held']:,} held)", f"Ed25519 floor {r['catchup_floor_s']:.1f} s", ratio(r["catchup_s"], r["catchup_floor_s"]), "< 15 s per 100k")
    t.add_row("catch-up, per 100,000", f"{r['catchup_100k_s']:.1f} s", f"process start-up {r['catchup_startup_s']:.1f} s (not counted)", "", "< 15 s")
    cpu = r["catchup_cpu_s"]
    t.add_row("catch-up CPU seconds", " + ".join(f"{name} {v:.1f}" for name, v in cpu.items()), f"load avg {r['catchup_load_avg_1m']:.1f} on {m['cpus']} CPUs", "", "")
    t.add_row("status showed sync progress", f"{r['catchup_progress_shown']} polls", str(r["catchup_progress_sample"]), "", "> 0")


@click.command()
@click.option("--quick", is_flag=True, help="10,000-record season and a 5 s flood (for a quick look).")
@click.option("--floods-only", is_flag=True, help="Only the single-peer and the sybil floods (no catch-up, frames or quota).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--catchup-only", is_flag=True, help="Only catchup_100k_s (the late joiner's catch-up), without the attacks.")
def main(quick: bool, floods_only: bool, as_json: bool, catchup_only: bool) -> None:
    if floods_only and catchup_only:
        raise click.UsageError("--floods-only and --catchup-only exclude each other")
    result = measure_floods(quick) if floods_only else measure_catchup(quick) if catchup_only else measure(quick)
    if as_json:
        click.echo(json.dumps(result))
    else:
        (_flood_table if floods_only else _table)(result)


if __name__ == "__main__":
    random.seed(0)
    main()
