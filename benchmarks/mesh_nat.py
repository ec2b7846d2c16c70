"""Do records get between two nodes behind NATs, through a relay and after hole punching?

Per scenario, a fresh NAT lab (tests/netns_lab.py: network namespaces, Linux MASQUERADE routers)
and three `p2pgolf join --no-train` processes: a public node (the relay; it runs another
benchmark, so it neither stores nor forwards the others' records) and nodes A and B, each
behind its own NAT, bootstrapped from the public node. Measured from control sockets and pool
files (one machine, one clock):
- seconds from start until AutoNAT says private and a relay slot is reserved (both NATed nodes),
  until A and B are connected through the relay, and until that connection is direct (DCUtR);
- delivery and p50/p99 latency of `--records` records published at A and at B (alternately),
  gossip only (periodic sync off), with the connection as it then is.

Scenarios:
- `firewall`: routers drop unsolicited packets (a home router); hole punching allowed.
- `firewall-relay-only`: the same with `--no-hole-punch` on A and B: records go over the relay.
- `reset`: routers answer unsolicited SYNs with a reset (plain Linux NAT); hole punching allowed.
- `symmetric`: as `firewall`, but every mapping gets a random port (a symmetric NAT).
The ratio is relayed p99 over direct p99, both from this run. Goal: delivery 100% everywhere.
Needs root, `ip` and `iptables`.

    sudo .venv/bin/python benchmarks/mesh_nat.py [--records 40] [--json]
"""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gossip_bench import delivery, make_record, percentile, received_ms  # noqa: E402
from netns_lab import PUBLIC_IP, NatLab, missing_requirements  # noqa: E402
from node_procs import NodeProc, make_home  # noqa: E402

from p2pgolf.protocol.identity import Identity  # noqa: E402
from p2pgolf.protocol.signing import decode_record  # noqa: E402

PORT = 4001
SCENARIOS = {"firewall": (True, True, False), "firewall-relay-only": (True, False, False), "reset": (False, True, False), "symmetric": (True, True, True)}  # name: (drop unsolicited, hole punch, random ports)


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def until(predicate, timeout: float, start: float) -> float | None:
    """Seconds since `start` when `predicate` first held (polled), or None by `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return round(time.monotonic() - start, 1)
        except Exception:
            pass
        time.sleep(0.2)
    return None


def run_scenario(name: str, records: int, root: Path) -> dict:
    drop, punch, random_ports = SCENARIOS[name]
    author = Identity.generate()
    with NatLab(prefix=f"p2gb{os.getpid()}", drop_unsolicited=drop, random_ports=random_ports) as lab:
        homes = {n: make_home(root / name, n) for n in ("pub", "a", "b")}
        pub = NodeProc(*homes["pub"], port=PORT, ip="0.0.0.0", wrap=lab.exec_args("pub"), bench="smoke@30s")
        a = NodeProc(*homes["a"], port=PORT, ip="0.0.0.0", wrap=lab.exec_args("a"))
        b = NodeProc(*homes["b"], port=PORT, ip="0.0.0.0", wrap=lab.exec_args("b"))
        nodes = [pub, a, b]
        relay = f"/ip4/{PUBLIC_IP}/tcp/{PORT}/p2p/{homes['pub'][1].peer_id}"
        extra = ["--sync-every", "3600", *([] if punch else ["--no-hole-punch"])]
        try:
            start = time.monotonic()
            pub.start([], "--sync-every", "3600")
            a.start([relay], *extra)
            b.start([relay], *extra)
            for node in nodes:
                node.wait_ready(60)
            a_id, b_id = homes["a"][1].peer_id, homes["b"][1].peer_id
            reserved = until(lambda: all(n.status()["reachability"] == "private" and n.status()["relays"] for n in (a, b)), 60, start)
            relayed = until(lambda: b_id in a.status()["met_through_relay"] or a_id in b.status()["met_through_relay"], 60, start)
            direct = until(lambda: b_id in a.status()["upgraded_to_direct"] and b_id not in a.status()["relayed_peers"], 20 if punch else 3, start)
            link = "direct" if direct is not None else ("relayed" if b_id in a.status()["relayed_peers"] else "none")
            progress(f"{name}: reserved {reserved} s, relayed {relayed} s, direct {direct} s, link {link}")
            origin: dict[str, int] = {}
            for k in range(records):
                raw = make_record(author, seed=k)
                at = k % 2  # 0: A, 1: B
                [a, b][at].publish([raw])
                origin[decode_record(raw).id] = at
                time.sleep(0.05)
            ids = set(origin)
            until(lambda: all(len(received_ms(n, ids)) == len(ids) for n in (a, b)), 30, time.monotonic())
            got, expected, lat = delivery(origin, [received_ms(a, ids), received_ms(b, ids)])
            relay_held = len(received_ms(pub, ids))
        finally:
            for node in nodes:
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGTERM)
            for node in nodes:
                try:
                    node.stop()
                except AssertionError:
                    node.kill()
    return {
        "scenario": name,
        "nat": ("random ports, " if random_ports else "") + ("drops unsolicited" if drop else "resets unsolicited"),
        "hole_punch": punch,
        "reserved_s": reserved,
        "relayed_s": relayed,
        "direct_s": direct,
        "link": link,
        "delivery": round(got / expected, 4) if expected else None,
        "p50_s": percentile(lat, 0.5),
        "p99_s": percentile(lat, 0.99),
        "records_on_relay": relay_held,
    }


@click.command()
@click.option("--records", default=40, show_default=True, type=click.IntRange(2, 400))
@click.option("--scenario", "names", multiple=True, type=click.Choice(list(SCENARIOS)), help="Run only these (repeatable); default all.")
@click.option("--json", "as_json", is_flag=True)
def main(records: int, names: tuple[str, ...], as_json: bool) -> None:
    why = missing_requirements()
    if why is not None:
        raise click.ClickException(f"mesh_nat {why}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the finally blocks still clean up
    rows = []
    with tempfile.TemporaryDirectory(prefix="mesh-nat-") as tmp:
        for name in names or SCENARIOS:
            rows.append(run_scenario(name, records, Path(tmp)))
    by = {r["scenario"]: r for r in rows}
    direct_p99 = next((r["p99_s"] for r in rows if r["link"] == "direct" and r["p99_s"]), None)
    relayed_p99 = next((r["p99_s"] for r in rows if r["link"] == "relayed" and r["p99_s"]), None)
    out = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        "records_per_scenario": records,
        "scenarios": by,
        "delivery_min": min(r["delivery"] or 0 for r in rows),
        "p99_ratio_relayed_vs_direct": round(relayed_p99 / direct_p99, 2) if direct_p99 and relayed_p99 else None,
        "goal_delivery": 1.0,
    }
    if as_json:
        click.echo(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"two nodes behind NATs and a public relay ({out['machine']}; {records} records each)")
    for col in ("scenario", "NAT", "DCUtR", "reserved s", "relayed s", "direct s", "link", "delivery", "p50 s", "p99 s", "on relay"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["scenario"], r["nat"], "on" if r["hole_punch"] else "off", *(str(r[k]) for k in ("reserved_s", "relayed_s", "direct_s", "link")), f"{r['delivery']:.1%}" if r["delivery"] is not None else "-", str(r["p50_s"]), str(r["p99_s"]), str(r["records_on_relay"]))
    console = Console(width=max(Console().width, 150))
    console.print(table)
    console.print(f"p99 relayed / direct: {out['p99_ratio_relayed_vs_direct']}   goal: delivery 100% in every scenario (min {out['delivery_min']:.1%})")


if __name__ == "__main__":
    main()
