"""`p2pgolf publish RUN_DIR_OR_RECORD_FILE`: sign a local result and deliver it to peers.

Input: a run directory from `p2pgolf train` (its result.json is signed with this node's key;
runs whose status is not "ok" are refused), a result.json itself, or a file of signed records
(raw envelope bytes, a .msgpack stream as `p2pgolf pool export` writes, or JSON lines).
Delivery: through the running node's control socket if one runs with this home; otherwise a
short-lived node stores the records, dials the known peers (config.toml, remembered peers,
--bootstrap), publishes, lets them sync, and exits. Either way the records are in the local
pool first, so nothing is lost if no peer is reachable. It prints how many peers confirmed
that they hold each record. A run directory's artifact is kept in the home's blob store, so the
node serves it to peers who want to re-evaluate the claim (`p2pgolf verify`). Exit code 0 when
every record reached at least one peer; 1 with one line on stderr when a record reached none (no
peer known, or none answered), the records still kept in the local pool. libp2p's own log lines
are shown only with -vv.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from p2pgolf.node.cli import BadInput, UserError, verbosity
from p2pgolf.node.home import Home


@click.command("publish")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--bootstrap", multiple=True, metavar="ADDR", help="Peer multiaddr to deliver to when no node is running; repeatable.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1.0, max=120.0), default=15.0, show_default=True, help="Seconds to wait for peers to confirm.")
@click.option("--bench", "bench_names", multiple=True, metavar="NAME", help="Benchmark of the records (NAME or NAME@SECONDSs) when a record file is for a non-default budget.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def publish(home: Home, source: Path, bootstrap, timeout_s: float, bench_names, as_json: bool) -> None:
    """Sign a local result and deliver it to peers."""
    from p2pgolf.node.control import ControlError, NotRunning, request
    from p2pgolf.protocol.errors import ProtocolError
    from p2pgolf.protocol.identity import KeyFileError, load_identity

    from p2pgolf.node.host import parse_peer_addr

    _quiet_logging(verbosity())
    try:
        for addr in bootstrap:
            parse_peer_addr(addr)
    except ProtocolError as exc:
        raise BadInput(str(exc)) from None
    try:
        identity = load_identity(home.key_file)
    except KeyFileError as exc:
        raise UserError(str(exc)) from None
    try:
        raws = records_from_path(source, identity)
        benches = _benchmarks(source, bench_names)
    except ProtocolError as exc:
        raise UserError(f"{source}: {exc}") from None
    keep_run_artifact(home, source)
    try:
        reply = request(home.control_socket, {"op": "publish", "records": [r.hex() for r in raws], "confirm_s": min(timeout_s, 60.0)}, timeout=timeout_s + 30)
        results, via = reply["results"], "the running node"
    except NotRunning:
        results, via = _publish_short_lived(home, identity, raws, bootstrap, timeout_s, benches), "a short-lived node"
    except ControlError as exc:
        raise UserError(str(exc)) from None
    failed = [r for r in results if "error" in r]
    if as_json:
        click.echo(json.dumps({"via": via, "results": results}))
    else:
        for r in results:
            if "error" in r:
                click.echo(f"not published: {r['error']}", err=True)
            elif "peers" in r:
                click.echo(f"published {r['id']} ({r['verdict']}) via {via}: {r['peers']} peer(s) received it")
            else:
                click.echo(f"published {r['id']} ({r['verdict']}) via {via}: sent to {r['subscribed']} subscribed peer(s)")
    if failed:
        raise SystemExit(1)
    unreached = [r for r in results if r.get("peers", r.get("subscribed", 0)) == 0]
    if unreached:
        raise UserError(
            f"no peer received {len(unreached)} of {len(results)} record(s) (none connected, or none answered within {timeout_s:g} s);"
            f" they are kept in the local pool ({home.pool_db}) and spread when a peer syncs with you"
        )


def _quiet_logging(verbose: int) -> None:
    """As join's: our warnings on stderr, libp2p's only with -vv. At the default verbosity
    the command's own last line says whether a peer was reached, so dial warnings are muted."""
    import logging

    from p2pgolf.node.commands.join_cmd import _configure_logging

    _configure_logging(verbose)
    if verbose == 0:
        logging.getLogger("p2pgolf.node.discovery").setLevel(logging.ERROR)


def keep_run_artifact(home: Home, source: Path) -> str | None:
    """Copy a run directory's artifact into the home's blob store (checked against the digest
    its result.json names); returns the digest, or None when there is none to keep."""
    from p2pgolf.node.publishing import RESULT_FILE, read_run
    from p2pgolf.pool.blobs import BlobError, BlobStore
    from p2pgolf.trainer.runner import ARTIFACT_NAME

    if not source.is_dir() or not (source / ARTIFACT_NAME).is_file() or not (source / RESULT_FILE).is_file():
        return None
    sha = read_run(source).get("artifact_sha256")
    if not isinstance(sha, str):
        return None
    try:
        return BlobStore(home.blobs_dir).put_file(source / ARTIFACT_NAME, kind="artifact", sha=sha)
    except BlobError as exc:
        raise UserError(f"{source}: the artifact cannot be kept for peers: {exc}") from None


def records_from_path(path: Path, identity) -> list[bytes]:
    """Envelope bytes to publish from a run directory, a result.json, or a record file."""
    from p2pgolf.node.publishing import RESULT_FILE, read_run, sign_run, sign_run_dir
    from p2pgolf.protocol.errors import ProtocolError
    from p2pgolf.protocol.signing import MAX_RECORD_BYTES, decode_record

    if path.is_dir():
        if not (path / RESULT_FILE).exists():
            raise ProtocolError(f"no {RESULT_FILE} in this directory; is it a run directory from `p2pgolf train`?")
        return [sign_run_dir(path, identity).raw]  # the same record however often it is published
    if path.name == RESULT_FILE:
        return [sign_run_dir(path.parent, identity).raw]
    data = path.read_bytes()
    text = _json_text(data)
    if text is not None:
        stripped = text.strip()
        try:
            whole = json.loads(stripped) if stripped.startswith("{") else None
        except ValueError:
            whole = None
        if isinstance(whole, dict) and "status" in whole:
            return [sign_run(read_run(path), identity).raw]
        return _json_lines(stripped)
    try:
        return [decode_record(data).raw]
    except ProtocolError as whole_error:
        stream = _msgpack_stream(data, MAX_RECORD_BYTES)
        if stream is None:
            raise ProtocolError(f"not a signed record ({whole_error}) nor a msgpack stream of records") from None
        return [decode_record(raw).raw for raw in stream]


def _json_text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.lstrip().startswith("{") else None


def _json_lines(text: str) -> list[bytes]:
    from p2pgolf.pool.transfer import decode_json_line
    from p2pgolf.protocol.errors import ProtocolError

    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(decode_json_line(line).raw)
        except ProtocolError as exc:
            raise ProtocolError(f"line {number}: {exc}") from None
    if not out:
        raise ProtocolError("no records in this file")
    return out


def _msgpack_stream(data: bytes, max_len: int) -> list[bytes] | None:
    import msgpack

    unpacker = msgpack.Unpacker(raw=False, max_bin_len=max_len, max_str_len=max_len, max_array_len=16, max_map_len=16, max_ext_len=0)
    unpacker.feed(data)
    items = []
    try:
        for item in unpacker:
            if type(item) is not bytes:
                return None
            items.append(item)
    except Exception:
        return None
    return items or None


def _benchmarks(source: Path, names) -> list:
    """Benchmarks the records may be for: the defaults, --bench, and a run's own bench_name."""
    from p2pgolf.node.publishing import RESULT_FILE, read_run
    from p2pgolf.protocol.benchmarks import BENCHMARKS, benchmark

    out = list(BENCHMARKS.values()) + [benchmark(n) for n in names]
    run_file = source / RESULT_FILE if source.is_dir() else source
    if run_file.suffix == ".json" and run_file.exists():
        try:
            name = read_run(run_file).get("bench_name")
        except Exception:
            name = None
        if isinstance(name, str):
            try:
                out.append(benchmark(name))
            except Exception:
                pass  # a custom benchmark: only its id is known, and sign_run already checked it
    return out


def _publish_short_lived(home: Home, identity, raws: list[bytes], bootstrap, timeout_s: float, candidates: list) -> list[dict]:
    import trio

    from p2pgolf.node.config import load_config, load_known_peers
    from p2pgolf.node.node import Node, NodeOptions
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore
    from p2pgolf.protocol.errors import ProtocolError
    from p2pgolf.protocol.signing import decode_record

    try:
        config = load_config(home)
    except ProtocolError as exc:
        raise UserError(str(exc)) from None
    peers = list(dict.fromkeys([*bootstrap, *config.bootstrap, *load_known_peers(home)]))
    records = [decode_record(r) for r in raws]
    known = {b.id: b for b in candidates}
    benches = []
    for rec in records:
        bench = known.get(rec.bench)
        if bench is None:
            raise UserError(f"record {rec.id[:12]} is for benchmark {rec.bench[:12]}..., which is not a default one; name it with --bench NAME@SECONDSs")
        if bench not in benches:
            benches.append(bench)
    store = PoolStore(home.pool_db)
    try:
        node = Node(identity, store, TrustStore(store), NodeOptions(benches=tuple(benches), bootstrap=tuple(peers), limits=config.limits, sync_interval_s=3600.0, home=home))
        # Stored before any peer connects, so each peer's first sync with us already finds them.
        first = {}
        for rec in records:
            verdict = node.admission.admit_signed(rec) if rec.author == identity.public_hex else node.admission.admit(rec.raw, None)
            first[rec.id] = verdict.value
        if not peers:
            raise UserError(f"no peer received the record(s): no node is running and no peers are known (give --bootstrap ADDR); they are kept in the local pool ({home.pool_db}) and spread when you `p2pgolf join` with --bootstrap")
        try:
            results = trio.run(_deliver, node, raws, timeout_s)
        except (Exception, BaseExceptionGroup) as exc:
            from p2pgolf.node.commands.join_cmd import user_error_in

            found = user_error_in(exc)
            if found is None:
                raise
            raise UserError(f"the short-lived node failed: {found}") from None
        for r in results:
            if "id" in r:
                r["verdict"] = first.get(r["id"], r["verdict"])
        return results
    finally:
        store.close()


async def _deliver(node, raws: list[bytes], timeout_s: float) -> list[dict]:
    import trio

    from p2pgolf.protocol.errors import ProtocolError

    results: list[dict] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        deadline = trio.current_time() + timeout_s
        with trio.move_on_at(deadline):
            while not node.connected_peers():
                await trio.sleep(0.05)
        for raw in raws:
            try:
                signed, verdict, subscribed = await node.publish(raw)
            except ProtocolError as exc:
                results.append({"error": str(exc)})
                continue
            results.append({"id": signed.id, "verdict": verdict.value, "subscribed": subscribed})
        for r in results:
            if "id" in r:
                r["peers"] = await node.peers_holding(r["id"], within_s=max(0.5, deadline - trio.current_time()))
        node.stop()
    return results
