"""What checking a claim costs: fetch + re-evaluate its artifact from a peer, against reproducing it.

On the smoke benchmark (default 60 s budget, CPU), in one run:
1. node A trains the claim (a real `trainer.api.run_experiment`, the same child process and
   evaluation as the research loop); its wall time is `reproduce_s`, what another node pays to
   reproduce the claim on the same hardware (the same experiment run again);
2. A signs the result and keeps the artifact; node B, connected on loopback, fetches it over the
   blob exchange (`fetch_s`) and re-evaluates it (`reeval_s`: node.verification.verify_artifact,
   the re-evaluation child included) and checks that the measured val_bpb matches the claim;
3. `ratio` = reproduce_s / (fetch_s + reeval_s), the headline; the goal is >= 10;
4. `fetch_16mb_s`: 16,000,000 random bytes from A to B over the blob exchange, and the same
   through py-libp2p's Bitswap (`bitswap_16mb_s`, MerkleDag over two BitswapClients) as the
   baseline the exchange was measured against.

    .venv/bin/python benchmarks/verify_claims.py [--budget 60] [--device cpu] [--json]
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import click
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_RATIO = 10.0
BIG = 16_000_000


@click.command()
@click.option("--budget", type=click.FloatRange(min=1.0), default=60.0, show_default=True, help="training budget of the smoke benchmark (s)")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--eval-tokens", type=click.IntRange(min=0), default=0, show_default=True, help="validation tokens scored (0: all)")
@click.option("--no-bitswap", is_flag=True, help="skip the Bitswap baseline of the 16 MB fetch")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object instead of the table")
def main(budget: float, device: str, eval_tokens: int, no_bitswap: bool, as_json: bool) -> None:
    from p2pgolf.protocol.benchmarks import benchmark
    from p2pgolf.trainer.hardware import detect_hardware

    bench = benchmark("smoke" if budget == 60.0 else f"smoke@{budget:g}s")
    root = Path(tempfile.mkdtemp(prefix="verify-claims-"))
    claim = _train_claim(bench, root, device, eval_tokens)
    result = trio.run(_exchange, bench, root, claim, device, not no_bitswap)
    result = {
        "machine": {"hw": detect_hardware(device if device != "auto" else None).key, "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {"bench": bench.name, "budget_s": bench.budget_s, "device": device, "eval_tokens": eval_tokens or "all", "candidate": "smoke-tiny"},
        **result,
        "reproduce_s": round(claim["seconds"], 3),
    }
    result["ratio"] = round(result["reproduce_s"] / (result["fetch_s"] + result["reeval_s"]), 2)
    result["goal_ratio"] = GOAL_RATIO
    result["goal_met"] = result["ratio"] >= GOAL_RATIO
    if as_json:
        click.echo(json.dumps(result))
        return
    _table(result)


def _train_claim(bench, root: Path, device: str, eval_tokens: int) -> dict:
    from p2pgolf.trainer.api import run_experiment

    started = time.perf_counter()
    outcome = run_experiment(bench.name, "smoke-tiny", {}, out_dir=root / "claim", device=device, eval_token_cap=eval_tokens, seed=1337)
    seconds = time.perf_counter() - started
    if not outcome.ok:
        raise SystemExit(f"training the claim failed: {outcome.error}")
    return {"run_dir": outcome.run_dir, "result": outcome.result, "seconds": seconds}


async def _exchange(bench, root: Path, claim: dict, device: str, bitswap: bool) -> dict:
    from p2pgolf.node.host import parse_peer_addr, peer_info
    from p2pgolf.node.node import Node, NodeOptions
    from p2pgolf.node.publishing import sign_run
    from p2pgolf.node.verification import verify_artifact
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore
    from p2pgolf.protocol.identity import Identity

    nodes = []
    for name in ("a", "b"):
        store = PoolStore(root / f"{name}.sqlite")
        nodes.append(Node(Identity.generate(), store, TrustStore(store), NodeOptions(benches=(bench,), sync_interval_s=3600.0, blobs_dir=root / f"{name}-blobs")))
    a, b = nodes
    signed = sign_run(claim["result"], a.identity)
    a.keep_artifact(Path(claim["run_dir"]) / "model.p2pgolf", signed.record.artifact)
    big = os.urandom(BIG)
    big_sha = a.blobs.put(big, kind="artifact")
    out: dict = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        await b.host.connect(peer_info(parse_peer_addr(a.addrs[0])))
        started = time.perf_counter()
        path = await b.fetch_blob(signed.record.artifact, author=signed.author)
        out["fetch_s"] = round(time.perf_counter() - started, 3)
        out["artifact_file_bytes"] = path.stat().st_size
        outcome = await trio.to_thread.run_sync(lambda: verify_artifact(signed, path, bench, b.identity, device=device))
        out["reeval_s"] = round(outcome.reeval_s, 3)
        out["reeval_eval_only_s"] = round(outcome.reeval.eval_seconds, 3)
        out["claimed_val_bpb"] = outcome.claimed
        out["measured_val_bpb"] = outcome.measured
        out["verdict"] = outcome.verdict
        started = time.perf_counter()
        got = await b.fetch_blob(big_sha)
        out["fetch_16mb_s"] = round(time.perf_counter() - started, 3)
        assert hashlib.sha256(got.read_bytes()).hexdigest() == big_sha
        a.stop()
        b.stop()
    if bitswap:
        try:
            out["bitswap_16mb_s"] = round(await _bitswap(big), 3)
        except Exception as exc:  # a baseline that fails is reported, not fatal
            out["bitswap_16mb_s"] = None
            out["bitswap_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


async def _bitswap(data: bytes) -> float:
    """Seconds for py-libp2p's Bitswap (MerkleDag) to move `data` between two hosts on loopback."""
    import logging

    import multiaddr
    from libp2p.bitswap import BitswapClient, MemoryBlockStore
    from libp2p.bitswap.dag import MerkleDag

    from p2pgolf.node.host import full_addrs, make_host, parse_peer_addr, peer_info
    from p2pgolf.protocol.identity import Identity

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # its notifee logs a traceback at shutdown
    a, b = (make_host(Identity.generate(), ["/ip4/127.0.0.1/tcp/0"]) for _ in range(2))
    listen = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    async with a.run([listen]), b.run([listen]):
        async with trio.open_nursery() as nursery:
            clients = [BitswapClient(h, MemoryBlockStore()) for h in (a, b)]
            for c in clients:
                c.set_nursery(nursery)
                await c.start()
            root = await MerkleDag(clients[0]).add_bytes(data)
            await b.connect(peer_info(parse_peer_addr(full_addrs(a)[0])))
            started = time.perf_counter()
            with trio.fail_after(120):
                got, _ = await MerkleDag(clients[1]).fetch_file(root, peer_id=a.get_id(), timeout=30)
            seconds = time.perf_counter() - started
            if got != data:
                raise RuntimeError("Bitswap returned other bytes")
            nursery.cancel_scope.cancel()
        await a.close()
        await b.close()
    return seconds


def _table(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"machine: {r['machine']['hw']}, {r['machine']['cpus']} cpus, python {r['machine']['python']}")
    console.print(f"settings: {r['settings']}")
    t = Table("measure", "value", "baseline / goal", "ratio")
    t.add_row("fetch artifact from a peer (loopback)", f"{r['fetch_s']:.3f} s", f"{r['artifact_file_bytes']:,} bytes", "")
    t.add_row("re-evaluate (child process)", f"{r['reeval_s']:.3f} s", f"evaluation alone {r['reeval_eval_only_s']:.3f} s", "")
    t.add_row("verify = fetch + re-evaluate", f"{r['fetch_s'] + r['reeval_s']:.3f} s", f"reproduce {r['reproduce_s']:.3f} s", f"{r['ratio']:.1f}x cheaper (goal {r['goal_ratio']:g}x)")
    t.add_row("claim checked", r["verdict"], f"claimed {r['claimed_val_bpb']:.6f}", f"measured {r['measured_val_bpb']:.6f}")
    bitswap = r.get("bitswap_16mb_s")
    t.add_row("fetch 16,000,000 bytes", f"{r['fetch_16mb_s']:.3f} s", f"Bitswap {bitswap:.3f} s" if bitswap else "Bitswap not measured", f"{bitswap / r['fetch_16mb_s']:.1f}x faster" if bitswap else "")
    console.print(t)


if __name__ == "__main__":
    main()
