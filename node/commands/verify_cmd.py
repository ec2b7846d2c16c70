"""`p2pgolf verify RECORD` and `p2pgolf pool fetch RECORD`: get a record's artifact from the peers
that hold it, and check the claim by re-evaluating it.

Fetching goes through the running node (its control socket, op "fetch"): it is already connected
to the peers, applies their rate limits, and a second libp2p host with the same key would be a
second peer with one peer id. A blob this home already holds needs no node.

verify: the artifact's digest and size are checked against the record, it is scored with the
benchmark's fixed evaluation in a child process (trainer.reeval: the same harness and byte
accounting as training), and a signed `reeval` attestation with the measured metrics is published
through the running node (or, with none running, stored in the pool, to spread at the next
`join`). The estimator then lowers a claim that disagrees beyond the tolerance, and its author.
Script candidates cannot be re-evaluated (only their script loads their artifact): verify says so
and exits 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from p2pgolf.node.cli import UserError
from p2pgolf.node.home import Home

FETCH_TIMEOUT_S = 300.0


@click.command("verify")
@click.argument("record_id")
@click.option("--bench", "bench_names", multiple=True, metavar="NAME", help="Benchmark of the record (NAME@SECONDSs) when it is not a default one nor served by the running node.")
@click.option("--backend", type=click.Choice(["auto", "torch", "mlx"]), default="auto", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Benchmark data (default: HOME/data).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1.0, max=3600.0), default=FETCH_TIMEOUT_S, show_default=True, help="Seconds to wait for the artifact.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def verify(home: Home, record_id: str, bench_names, backend: str, device: str, data_dir: Path | None, timeout_s: float, as_json: bool) -> None:
    """Re-evaluate a record's artifact and publish a signed reeval attestation."""
    from p2pgolf.node.commands.pool_cmd import open_pool, resolve_record_id
    from p2pgolf.node.verification import VerifyError, not_reevaluable, verify_artifact
    from p2pgolf.protocol.identity import KeyFileError, load_identity

    try:
        identity = load_identity(home.key_file)
    except KeyFileError as exc:
        raise UserError(str(exc)) from None
    with open_pool(home) as store:
        signed = store.get(resolve_record_id(store, record_id))
    reason = not_reevaluable(signed)
    if reason:
        raise UserError(reason)
    bench = bench_of(signed, bench_names, home)
    path, fetched = artifact_path(home, signed, timeout_s)
    try:
        outcome = verify_artifact(signed, path, bench, identity, data_dir=data_dir or home.data_dir, backend=backend, device=device)
    except VerifyError as exc:
        raise UserError(str(exc)) from None
    via, peers = _deliver(home, outcome.attestation)
    doc = {
        "record": signed.id,
        "verdict": outcome.verdict,
        "claimed": outcome.claimed,
        "measured": outcome.measured,
        "difference": outcome.measured - outcome.claimed,
        "tolerance": outcome.tolerance,
        "fetch_s": fetched.get("seconds", 0.0),
        "reeval_s": outcome.reeval_s,
        "eval_s": outcome.reeval.eval_seconds,
        "artifact_bytes": outcome.reeval.artifact_bytes,
        "attestation": outcome.attestation.id,
        "published_via": via,
        "peers": peers,
    }
    if as_json:
        click.echo(json.dumps(doc))
        return
    click.echo(
        f"{signed.id[:12]}: claimed val_bpb {outcome.claimed:.6f}, measured {outcome.measured:.6f} "
        f"({outcome.measured - outcome.claimed:+.6f}; tolerance {outcome.tolerance:.4f}): {outcome.verdict.upper()}"
    )
    click.echo(f"re-evaluated in {outcome.reeval_s:.1f} s on {outcome.reeval.device}; attestation {outcome.attestation.id[:12]} {via}")


@click.command("fetch")
@click.argument("record_id")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1.0, max=3600.0), default=FETCH_TIMEOUT_S, show_default=True, help="Seconds to wait for the artifact.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def fetch(home: Home, record_id: str, timeout_s: float, as_json: bool) -> None:
    """Get a record's artifact from whichever peers have it (through the running node)."""
    from p2pgolf.node.commands.pool_cmd import open_pool, resolve_record_id

    with open_pool(home) as store:
        signed = store.get(resolve_record_id(store, record_id))
    if not signed.record.artifact:
        raise UserError(f"record {signed.id[:12]} names no artifact")
    path, reply = artifact_path(home, signed, timeout_s)
    doc = {"record": signed.id, "artifact": signed.record.artifact, "path": str(path), "size": path.stat().st_size, "held": reply.get("held", True), "seconds": reply.get("seconds", 0.0)}
    if as_json:
        click.echo(json.dumps(doc))
    elif doc["held"]:
        click.echo(f"artifact {signed.record.artifact[:12]} is held here: {path} ({doc['size']:,} bytes)")
    else:
        click.echo(f"fetched artifact {signed.record.artifact[:12]} ({doc['size']:,} bytes) in {doc['seconds']:.2f} s: {path}")


def artifact_path(home: Home, signed: Any, timeout_s: float) -> tuple[Path, dict]:
    """The record's artifact in this home's blob store, fetched through the running node if it
    is not held. UserError naming the problem otherwise."""
    from p2pgolf.node.control import ControlError, NotRunning, request
    from p2pgolf.pool.blobs import BlobError, BlobStore

    sha = signed.record.artifact
    try:
        return BlobStore(home.blobs_dir).verified_path(sha), {"held": True, "seconds": 0.0}
    except BlobError:
        pass
    try:
        reply = request(home.control_socket, {"op": "fetch", "sha": sha, "kind": "artifact", "author": signed.author, "timeout_s": timeout_s}, timeout=timeout_s + 30)
    except NotRunning:
        raise UserError(f"artifact {sha[:12]} is not held here and no node is running to fetch it; start `p2pgolf join` and try again") from None
    except ControlError as exc:
        raise UserError(f"cannot fetch artifact {sha[:12]}: {exc}") from None
    return Path(reply["path"]), reply


def bench_of(signed: Any, names, home: Home) -> Any:
    """The benchmark whose id the record names: a default one, one given by name, one the running
    node serves, or a default task at the record's budget."""
    from p2pgolf.node.control import ControlError, request
    from p2pgolf.protocol.benchmarks import BENCHMARKS, benchmark
    from p2pgolf.protocol.errors import ProtocolError

    tried = list(names)
    try:
        tried += request(home.control_socket, {"op": "status"}, timeout=10)["status"]["benches"]
    except (ControlError, KeyError, OSError):
        pass
    budget = getattr(signed.record, "budget_s", None)
    for name in BENCHMARKS:
        tried.append(name)
        if budget is not None:
            tried.append(f"{name}@{budget:g}s")
    for name in dict.fromkeys(tried):
        try:
            bench = benchmark(name)
        except ProtocolError:
            continue
        if bench.id == signed.bench:
            return bench
    raise UserError(f"record {signed.id[:12]} is for benchmark {signed.bench[:12]}..., which this node does not know; name it with --bench NAME@SECONDSs")


def _deliver(home: Home, attestation: Any) -> tuple[str, int]:
    """Publish through the running node, else store in the local pool. (how, peers reached)"""
    from p2pgolf.node.commands.pool_cmd import open_pool
    from p2pgolf.node.control import ControlError, NotRunning, request

    try:
        reply = request(home.control_socket, {"op": "publish", "records": [attestation.raw.hex()], "confirm_s": 3.0}, timeout=60)
    except NotRunning:
        with open_pool(home) as store:
            store.add_signed(attestation)
        return "stored in the local pool (no node is running; it spreads at the next `p2pgolf join`)", 0
    except ControlError as exc:
        raise UserError(f"the attestation was made but not published: {exc}") from None
    result = reply["results"][0]
    if "error" in result:
        raise UserError(f"the attestation was made but not published: {result['error']}")
    peers = int(result.get("peers", result.get("subscribed", 0)))
    return f"published via the running node to {peers} peer(s)", peers
