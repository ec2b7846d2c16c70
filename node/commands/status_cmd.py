"""`p2pgolf status` and `p2pgolf peers`: ask the running node over its control socket.

If no node runs with this home they say so in one line and exit 1. `--json` prints one JSON
object (the node's NodeStatus; `peers --json` prints only the peers).
"""

from __future__ import annotations

import json

import click

from node.cli import UserError
from node.home import Home


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def status(home: Home, as_json: bool) -> None:
    """Show the running node's status."""
    st = _fetch(home)
    if as_json:
        click.echo(json.dumps(st.to_json()))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_row("peer id", st.peer_id)
    for addr in st.addrs:
        table.add_row("address", addr)
    table.add_row("benchmarks", ", ".join(st.benches))
    table.add_row("peers", str(len(st.peers)))
    table.add_row("pool records", str(st.pool_records))
    table.add_row("records in", str(st.records_in))
    table.add_row("records out", str(st.records_out))
    table.add_row("rejected", str(st.rejected))
    table.add_row("syncs", str(st.syncs))
    table.add_row("worker", st.worker)
    table.add_row("uptime", f"{st.uptime_s:.0f} s")
    Console().print(table)


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
    from rich.console import Console
    from rich.table import Table

    table = Table("peer id", "benchmarks", "invalid sent", "addresses")
    for p in st.peers:
        table.add_row(p.peer_id, ", ".join(p.topics) or "-", str(p.invalid), "\n".join(p.addrs) or "-")
    Console().print(table)


def _fetch(home: Home):
    from node.control import ControlError, NotRunning, request
    from node.status import NodeStatus

    try:
        reply = request(home.control_socket, {"op": "status"})
    except NotRunning:
        raise UserError(f"no node is running with home {home.root} (start one with `p2pgolf join`)") from None
    except ControlError as exc:
        raise UserError(str(exc)) from None
    return NodeStatus.from_json(reply["status"])
