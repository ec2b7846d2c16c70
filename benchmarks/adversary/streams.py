"""One peer opening 10,000 libp2p streams to a real `p2pgolf join` process on loopback (issue 20).

The attacker is one py-libp2p host (its own stream limits lifted) that opens `streams`
gossipsub streams (/meshsub/1.1.0, libp2p's own protocol) to the victim and sends nothing on
them: the victim's pubsub keeps a read loop on each for as long as it stays open, holding a
task and one of the 10,000 stream slots that every peer shares (py-libp2p 0.8.1's only stream
bound). A stream counts as held from its negotiation until the victim resets it. The attacker
negotiates 256 at a time (py-libp2p's own side fails when all start at once). 60 s into the
attack, while they are held, an honest peer opens 5 ping streams (/ipfs/ping/1.0.0) one after
another. Two victims in the same run:

- "per-peer bound": the default `[limits] max_libp2p_streams_per_peer` (64);
- "no per-peer bound": the same set above the stream count, which is how main behaves (py-libp2p
  0.8.1's only bound is 10,000 streams for all peers together, after which new streams wait).

Figures per victim: streams negotiated and held (at 60 s and at their peak), the victim's peak
RSS growth and CPU seconds during the attack, and the longest time the honest peer took to open
a stream and get its ping answered (or how many it could open within 20 s).

    .venv/bin/python benchmarks/adversary/streams.py [--streams 10000] [--quick] [--json]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import click
import psutil
import trio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge import RssWatch, _rss_mb  # noqa: E402
from node_procs import NodeProc, make_home, stop_all  # noqa: E402

from p2pgolf.protocol.identity import Identity  # noqa: E402

HONEST_STREAMS = 5
HONEST_WAIT_S = 20.0
ATTACK_S = 60.0  # how long the attacker opens streams before the honest peer tries


async def _attack(target: str, streams: int, out: dict) -> None:
    from contextlib import AsyncExitStack

    import multiaddr
    from libp2p.custom_types import TProtocol
    from libp2p.host.ping import ID as PING
    from libp2p.peer.id import ID
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11

    from p2pgolf.node.host import make_host, parse_peer_addr, peer_info

    peer = parse_peer_addr(target)
    pid = ID.from_base58(peer.peer_id)
    attacker, honest = make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]), make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"])
    attacker.get_network().set_resource_manager(None)  # the attacker's own side has no stream limit
    held: list = []
    async with AsyncExitStack() as stack:
        for host in (attacker, honest):
            await stack.enter_async_context(host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]))
            await host.connect(peer_info(peer))
        await trio.sleep(0.5)
        for conn in attacker.get_network().get_connections(pid):
            # py-libp2p's yamux lets its own side open 256 streams per connection at once; an
            # attacker's muxer need not (the victim's side sets no such bound)
            conn.muxed_conn.stream_backlog_semaphore = trio.Semaphore(streams + 1)
            conn.muxed_conn.stream_backlog_limit = streams + 1

        opened: list = []
        opening = trio.CapacityLimiter(256)

        async def one() -> None:
            # a gossipsub stream that never carries an RPC: the victim's pubsub reads it for as
            # long as it stays open, unless the victim resets it before negotiation
            try:
                async with opening:  # 256 negotiations at a time: py-libp2p's own side chokes on 10,000 at once
                    with trio.fail_after(30):
                        stream = await attacker.new_stream(pid, [TProtocol(PROTOCOL_ID_V11)])
            except Exception as exc:
                out["refused"] += 1
                if len(out["attack_errors"]) < 3:
                    out["attack_errors"].append(f"{type(exc).__name__}: {exc}"[:300])
                return
            opened.append(stream)
            held.append(stream)
            try:
                while await stream.read(64):
                    pass
            except Exception:
                pass
            held.remove(stream)

        async with trio.open_nursery() as nursery:
            started = time.monotonic()
            peak = [0]

            async def sample() -> None:
                while True:
                    peak[0] = max(peak[0], len(held))
                    await trio.sleep(0.25)

            nursery.start_soon(sample)
            for _ in range(streams):
                nursery.start_soon(one)
            await trio.sleep(ATTACK_S)  # the attacker opens and holds what it can meanwhile
            out["held"] = len(held)
            # an honest peer opens streams one after another while the attacker holds its own
            waits = []
            for _ in range(HONEST_STREAMS):
                t = time.monotonic()
                try:
                    with trio.fail_after(HONEST_WAIT_S):
                        stream = await honest.new_stream(pid, [TProtocol(str(PING))])
                        await _ping(stream)
                        await stream.close()
                    waits.append(time.monotonic() - t)
                except BaseException as exc:  # noqa: BLE001 (trio.TooSlowError included)
                    out["honest_errors"].append(f"{type(exc).__name__}: {exc}"[:200])
            out["honest_opened"] = len(waits)
            out["honest_s"] = max(waits) if len(waits) == HONEST_STREAMS else None
            out["held_at_end"] = len(held)
            out["held_peak"] = max(peak[0], len(held))
            out["opened"] = len(opened)
            nursery.cancel_scope.cancel()
        for host in (attacker, honest):
            with trio.CancelScope(shield=True), trio.move_on_after(10):
                await host.close()


async def _ping(stream) -> None:
    payload = os.urandom(32)
    await stream.write(payload)
    got = b""
    while len(got) < 32:
        chunk = await stream.read(32 - len(got))
        if not chunk:
            raise ConnectionError("stream closed")
        got += chunk
    if got != payload:
        raise ConnectionError("wrong echo")


def run_victim(root: Path, name: str, bound: int, streams: int) -> dict:
    home, ident = make_home(root, name)
    home.config_file.write_text(f"[limits]\nmax_libp2p_streams_per_peer = {bound}\n")
    v = NodeProc(home, ident)
    out = {"bound": bound, "refused": 0, "honest_errors": [], "attack_errors": []}
    try:
        v.start([], "--sync-every", "3600", "--no-peer-exchange").wait_ready(60)
        time.sleep(1.0)
        before = _rss_mb(v.proc.pid)
        cpu0 = psutil.Process(v.proc.pid).cpu_times()
        with RssWatch(v.proc.pid) as watch:
            trio.run(_attack, v.addr, streams, out)
        cpu1 = psutil.Process(v.proc.pid).cpu_times()
        out["rss_growth_mb"] = watch.peak - before
        out["victim_cpu_s"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        out["victim_alive"] = v.proc.poll() is None
    finally:
        stop_all([v])
    return out


def measure(quick: bool = False, streams: int | None = None) -> dict:
    """Both victims' figures (module docstring); `quick`: 1,000 streams."""
    streams = streams or (1_000 if quick else 10_000)
    with tempfile.TemporaryDirectory(prefix="streams-bench-") as tmp:
        bounded = run_victim(Path(tmp), "bounded", 64, streams)
        unbounded = run_victim(Path(tmp), "unbounded", streams * 10, streams)
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "streams_attempted": streams,
        "streams_held_by_one_peer": bounded["held_peak"], "streams_held_by_one_peer_baseline": unbounded["held_peak"],
        "rss_mb_under_streams": bounded["rss_growth_mb"], "rss_mb_under_streams_baseline": unbounded["rss_growth_mb"],
        "victim_cpu_s_under_streams": bounded["victim_cpu_s"], "victim_cpu_s_under_streams_baseline": unbounded["victim_cpu_s"],
        "honest_streams_s": bounded["honest_s"], "honest_streams_s_baseline": unbounded["honest_s"],
        "per_peer_bound": bounded, "no_per_peer_bound": unbounded,
    }  # fmt: skip


def _table(r: dict) -> None:
    m = r["machine"]
    print(f"adversary/streams: {m['platform']}, {m['cpus']} CPUs, load {m['load_avg_1m']:.1f}; one peer opens {r['streams_attempted']:,} gossipsub streams to a join process")
    print(f"{'figure':<34} {'per-peer bound (64)':>22} {'no per-peer bound (main)':>26}")
    b, u = r["per_peer_bound"], r["no_per_peer_bound"]

    def honest(x):
        return f"{x['honest_s']:.2f} s" if x["honest_s"] is not None else f"{x['honest_opened']}/{HONEST_STREAMS} in {HONEST_WAIT_S:g} s"

    rows = [
        ("streams negotiated", f"{b['opened']:,}", f"{u['opened']:,}"),
        (f"streams the victim held at {ATTACK_S:g} s", f"{b['held']:,}", f"{u['held']:,}"),
        ("streams held, peak", f"{b['held_peak']:,}", f"{u['held_peak']:,}"),
        ("victim peak RSS growth (MB)", f"{b['rss_growth_mb']:.1f}", f"{u['rss_growth_mb']:.1f}"),
        ("victim CPU seconds", f"{b['victim_cpu_s']:.1f}", f"{u['victim_cpu_s']:.1f}"),
        (f"honest peer opens {HONEST_STREAMS} streams", honest(b), honest(u)),
        ("victim alive", str(b["victim_alive"]), str(u["victim_alive"])),
    ]
    for name, x, y in rows:
        print(f"{name:<34} {x:>22} {y:>26}")


@click.command()
@click.option("--streams", default=10_000, show_default=True)
@click.option("--quick", is_flag=True, help="1,000 streams")
@click.option("--json", "as_json", is_flag=True)
def main(streams: int, quick: bool, as_json: bool) -> None:
    r = measure(quick, None if quick else streams)
    print(json.dumps(r)) if as_json else _table(r)


if __name__ == "__main__":
    main()
