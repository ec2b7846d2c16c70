"""`p2pgolf status`, `peers` and `stop`: ask the running node over its control socket.

If no node runs with this home they say so in one line and exit 1. `--json` prints one JSON
object (the node's NodeStatus, with the experiment in progress and the latest finished ones;
`peers --json` prints only the peers). Tables fold long values, so they fit 80 columns.
Trusted peers' runs in progress (their running announcements) show as "peer running" rows.
`stop` asks the node to stop as a Ctrl-C would (finishing the run in progress by default, or
abandoning it with --abandon) and returns once the node has stopped.
"""

from __future__ import annotations

import json

import click

from p2pgolf.node.cli import UserError
from p2pgolf.node.home import Home


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def status(home: Home, as_json: bool) -> None:
    """Show the running node's status."""
    st = _fetch(home)
    if as_json:
        click.echo(json.dumps(st.to_json()))
        return
    from rich.table import Table

    from p2pgolf.node.views.plain_console import plain_console

    table = Table(show_header=False, box=None)
    table.add_column("field", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("peer id", st.peer_id)
    for addr in st.addrs:
        table.add_row("address", addr)
    relayed = f", {len(st.relayed_peers)} peer(s) through a relay" if st.relayed_peers else ""
    table.add_row("reachable", f"{st.reachability}{' (serving as a relay)' if st.relaying else ''}{relayed}")
    table.add_row("benchmarks", ", ".join(st.benches))
    table.add_row("peers", str(len(st.peers)))
    table.add_row("pool records", str(st.pool_records))
    table.add_row("records in", str(st.records_in))
    table.add_row("records out", str(st.records_out))
    table.add_row("rejected", str(st.rejected))
    table.add_row("syncs", str(st.syncs))
    for sync in st.syncing:
        share = f" ({sync['fetched'] / sync['expected']:.0%})" if sync["expected"] else ""
        table.add_row("syncing", f"{sync['fetched']} of ~{sync['expected']} records from {sync['peer'][:16]}{share}, {sync['added']} added")
    if st.quota:
        table.add_row("unknown keys", f"{st.quota['unknown_bytes']} of {st.quota['quota_bytes']} bytes ({st.quota['unknown_records']} records)")
    table.add_row("worker", st.worker)
    table.add_row("uptime", f"{st.uptime_s:.0f} s")
    exp = st.experiment
    if exp is not None:
        diff = " ".join(f"{k}={v}" for k, v in exp["diff"].items()) or "(no diff)"
        table.add_row("experiment", f"{exp['n']}: {exp['operator']} {exp['candidate'][:12]} = {exp['base']} {diff}")
        table.add_row("progress", f"{exp['phase']}, step {exp['step']}, {exp['training_s']:.0f} s of {exp['budget_s']:.0f} s trained ({exp['remaining']})")
    for run in st.peers_running:  # trusted peers' announcements (node/running_announcements.py)
        diff = " ".join(f"{k}={v}" for k, v in run["diff"].items()) or "(no diff)"
        table.add_row("peer running", f"{run['peer_id'][:20]} on {run['hw']}: {run['candidate'][:12]} = {run['base']} {diff} ({run['running_s']:.0f} s in, ends within {run['expires_in_s']:.0f} s)")
    for done in st.finished[-5:]:
        score = f"val_bpb {done['val_bpb']:.4f}, {done['steps']} steps" if done.get("val_bpb") is not None else done["status"] + (f" ({done['note']})" if done.get("note") else "")
        table.add_row(f"finished {done['n']}", f"{done['candidate'][:12]} {score}")
    plain_console().print(table)


@click.command("peers")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def peers(home: Home, as_json: bool) -> None:
    """List the peers of the running node."""
    st = _fetch(home)
    if as_json:
        click.echo(json.dumps({"peer_id": st.peer_id, "peers": [p for p in st.to_json()["peers"]]}))
        return
    if not st.peers:
        click.echo("no peers connected")
        return
    from rich.table import Table

    from p2pgolf.node.views.plain_console import plain_console

    table = Table("peer id", "benchmarks", "invalid sent", "addresses")
    for column in table.columns:
        column.overflow = "fold"
    for p in st.peers:
        table.add_row(p.peer_id, ", ".join(p.topics) or "-", str(p.invalid), "\n".join(p.addrs) or "-")
    plain_console().print(table)


@click.command("stop")
@click.option("--abandon", is_flag=True, help="Drop the run in progress at once instead of finishing it (as SIGTERM does).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=0, show_default=True, help="Give up waiting after this many seconds (0: wait until the node has stopped).")
@click.pass_obj
def stop(home: Home, abandon: bool, timeout_s: float) -> None:
    """Stop the running node and wait until it has stopped."""
    import time

    from p2pgolf.node.control import ControlError, NotRunning, request

    try:
        reply = request(home.control_socket, {"op": "stop", "abandon": abandon})
    except NotRunning:
        raise UserError(f"no node is running with home {home.root}") from None
    except ControlError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"node {reply.get('pid', '?')}: {reply.get('stopping', 'stopping')}; waiting for it to stop")
    deadline = time.monotonic() + timeout_s if timeout_s else None
    # The node removes its control socket as it shuts down, then its process ends.
    while home.control_socket.exists() or _alive(reply.get("pid")):
        if deadline is not None and time.monotonic() > deadline:
            raise UserError(f"the node is still stopping after {timeout_s:g} s (it finishes its run first; `p2pgolf stop --abandon` drops it)")
        time.sleep(0.2)
    click.echo("stopped")


def _alive(pid) -> bool:
    import psutil

    if not isinstance(pid, int):
        return False
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _fetch(home: Home):
    from p2pgolf.node.control import ControlError, NotRunning, request
    from p2pgolf.node.status import NodeStatus

    try:
        reply = request(home.control_socket, {"op": "status"})
    except NotRunning:
        raise UserError(f"no node is running with home {home.root} (start one with `p2pgolf join`)") from None
    except ControlError as exc:
        raise UserError(str(exc)) from None
    return NodeStatus.from_json(reply["status"])
