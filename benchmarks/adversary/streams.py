"""One peer opening 10,000 libp2p streams to a real `p2pgolf join` process on loopback (issue 20).

The attacker is one py-libp2p host (its own stream limits lifted) that opens `streams` bare
Yamux streams to the victim at once and never names a protocol on them: py-libp2p's host waits
up to 30 s for each one's multistream negotiation, holding a task and one of the 10,000 stream
slots that every peer shares. A stream the victim has not reset after 3 s counts as held. While
they are held, an honest peer opens 5 ping streams (/ipfs/ping/1.0.0) one after another. Two victims in the same run:

- "per-peer bound": the default `[limits] max_libp2p_streams_per_peer` (64);
- "no per-peer bound": the same set above the stream count, which is how main behaves (py-libp2p
  0.8.1's only bound is 10,000 streams for all peers together, after which new streams wait).

Figures per victim: streams the attacker held, , the victim's peak RSS growth, the
longest time the honest peer took to open a stream and get its ping answered (or that it could
not within 20 s), and the victim's CPU
seconds during the attack.

    .venv/bin/python benchmarks/adversary/streams.py [--streams 10000] [--json]
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
HOLD_CHECK_S = 3.0  # a stream the victim has not reset after this long is one it holds


async def _attack(target: str, streams: int, out: dict) -> None:
    from contextlib import AsyncExitStack

    import multiaddr
    from libp2p.custom_types import TProtocol
    from libp2p.host.ping import ID as PING
    from libp2p.peer.id import ID

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

        opened: list = []

        async def one() -> None:
            # a bare muxer stream that never names a protocol: the victim waits for its
            # negotiation (py-libp2p: up to 30 s) unless it refuses the stream at once
            try:
                with trio.fail_after(60):
                    stream = await attacker.get_network().new_stream(pid)
            except Exception as exc:
                out["refused"] += 1
                if len(out["attack_errors"]) < 3:
                    out["attack_errors"].append(f"{type(exc).__name__}: {exc}"[:300])
                return
            opened.append(stream)
            held.append(stream)
            try:
                while await stream.read(64):  # the victim's multistream header, then nothing until it gives up
                    pass
            except Exception:
                pass
            held.remove(stream)

        async with trio.open_nursery() as nursery:
            started = time.monotonic()
            for _ in range(streams):
                nursery.start_soon(one)
            while time.monotonic() - started < 180 and len(opened) + out["refused"] < streams:
                await trio.sleep(0.1)
            out["attack_s"] = time.monotonic() - started
            await trio.sleep(HOLD_CHECK_S)
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
        "streams_held_by_one_peer": bounded["held"], "streams_held_by_one_peer_baseline": unbounded["held"],
        "rss_mb_under_streams": bounded["rss_growth_mb"], "rss_mb_under_streams_baseline": unbounded["rss_growth_mb"],
        "victim_cpu_s_under_streams": bounded["victim_cpu_s"], "victim_cpu_s_under_streams_baseline": unbounded["victim_cpu_s"],
        "honest_streams_s": bounded["honest_s"], "honest_streams_s_baseline": unbounded["honest_s"],
        "per_peer_bound": bounded, "no_per_peer_bound": unbounded,
    }  # fmt: skip


def _table(r: dict) -> None:
    m = r["machine"]
    print(f"adversary/streams: {m['platform']}, {m['cpus']} CPUs, load {m['load_avg_1m']:.1f}; one peer opens {r['streams_attempted']:,} ping streams to a join process")
    print(f"{'figure':<34} {'per-peer bound (64)':>22} {'no per-peer bound (main)':>26}")
    b, u = r["per_peer_bound"], r["no_per_peer_bound"]

    def honest(x):
        return f"{x['honest_s']:.2f} s" if x["honest_s"] is not None else f"{x['honest_opened']}/{HONEST_STREAMS} in {HONEST_WAIT_S:g} s"

    rows = [
        ("streams the victim held", f"{b['held']:,}", f"{u['held']:,}"),
        ("streams still held after the honest peer", f"{b['held_at_end']:,}", f"{u['held_at_end']:,}"),
        ("time to open them (s)", f"{b['attack_s']:.1f}", f"{u['attack_s']:.1f}"),
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
