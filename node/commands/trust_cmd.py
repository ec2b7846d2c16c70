"""`p2pgolf trust ...`: pin, unpin, block, unblock and list author keys.

KEY is a 64-hex public key, a 12D3KooW... peer id, or the label of an existing entry. Every change says what the key was before, so a block that overrides a pin
is visible. Refused changes (pinning the own key, pinning a blocked key) end in one line.
"""

from __future__ import annotations

import json

import click

from p2pgolf.node.cli import UserError
from p2pgolf.node.commands.pool_cmd import open_pool, open_trust, resolve_key
from p2pgolf.node.home import Home


@click.group("trust")
def trust() -> None:
    """Pin, unpin, block and list peer keys."""


@trust.command("pin")
@click.argument("key")
@click.option("--label", default="", help="A name for this key, shown instead of it.")
@click.pass_obj
def pin(home: Home, key: str, label: str) -> None:
    """Count KEY's records fully."""
    _change(home, "pin", key, label)


@trust.command("unpin")
@click.argument("key")
@click.pass_obj
def unpin(home: Home, key: str) -> None:
    """Return a pinned KEY to unknown."""
    _change(home, "unpin", key)


@trust.command("block")
@click.argument("key")
@click.option("--label", default="", help="A name for this key (default: keep its label).")
@click.pass_obj
def block(home: Home, key: str, label: str) -> None:
    """Ignore KEY's records (weight 0). Overrides a pin."""
    _change(home, "block", key, label)


@trust.command("unblock")
@click.argument("key")
@click.pass_obj
def unblock(home: Home, key: str) -> None:
    """Return a blocked KEY to unknown."""
    _change(home, "unblock", key)


@trust.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def list_(home: Home, as_json: bool) -> None:
    """List own, pinned and blocked keys and the weight of every other key."""
    with open_pool(home) as store:
        ts = open_trust(store)
        entries, unknown = ts.entries(), ts.unknown_weight
        counts = dict(store.authors())
    if as_json:
        click.echo(json.dumps({
            "unknown_weight": unknown,
            "entries": [
                {"key": e.key, "peer_id": e.peer_id, "status": e.status, "label": e.label, "since_ms": e.since_ms, "weight": _weight(e.status, unknown), "records": counts.get(e.key, 0)}
                for e in entries
            ],
        }))
        return
    from rich.console import Console
    from rich.table import Table

    # Borderless, key over peer id in one folding cell: fits 80 columns with both shown whole.
    table = Table(title=f"trust (every other key weighs {unknown:g})", title_justify="left", box=None, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("status", no_wrap=True)
    table.add_column("label", overflow="fold", max_width=16)
    table.add_column("key / peer id", overflow="fold", ratio=1)
    table.add_column("weight", justify="right", no_wrap=True)
    table.add_column("records", justify="right", no_wrap=True)
    for e in entries:
        table.add_row(e.status, e.label, f"{e.key}\n{e.peer_id}", f"{_weight(e.status, unknown):g}", str(counts.get(e.key, 0)))
    Console().print(table)


@trust.command("default-weight")
@click.argument("value", required=False)
@click.pass_obj
def default_weight(home: Home, value: str | None) -> None:
    """Show, or set to VALUE (strictly between 0 and 1), the weight of unknown keys."""
    from p2pgolf.pool.trust import TrustError

    with open_pool(home) as store:
        ts = open_trust(store)
        if value is None:
            click.echo(f"{ts.unknown_weight:g}")
            return
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"default weight must be a number strictly between 0 and 1, got {value!r}") from None
        try:
            ts.unknown_weight = number
        except TrustError as exc:
            raise UserError(str(exc)) from None
        click.echo(f"unknown keys now weigh {number:g}")


def _change(home: Home, action: str, key: str, label: str = "") -> None:
    from p2pgolf.pool.trust import TrustError

    with open_pool(home) as store:
        ts = open_trust(store)
        hex_key = resolve_key(ts, key)
        try:
            if action == "pin":
                before = ts.pin(hex_key, label)
            elif action == "block":
                before = ts.block(hex_key, label)
            else:
                before = getattr(ts, action)(hex_key)
        except TrustError as exc:
            raise UserError(str(exc)) from None
        entry = ts.entry(hex_key)
    name = f"{hex_key[:16]}..." + (f" ({entry.label})" if entry and entry.label else "")
    done = {"pin": "pinned", "unpin": "unpinned", "block": "blocked", "unblock": "unblocked"}[action]
    if action == "block" and before == "pinned":
        click.echo(f"blocked {name}: it was pinned; a block overrides a pin, so its records now count 0")
    elif before == ("pinned" if action == "pin" else "blocked" if action == "block" else None):
        click.echo(f"{name} was already {done}" + (f"; label set to {label!r}" if label else ""))
    else:
        click.echo(f"{done} {name} (was {before})")


def _weight(status: str, unknown: float) -> float:
    return {"own": 1.0, "pinned": 1.0, "blocked": 0.0}.get(status, unknown)
