"""`p2pgolf init` and `p2pgolf id`: create this node's identity and show it.

`init` makes the data directory (mode 0700), the identity key file (0600) and an empty pool
with the new key set as the trust store's own key. It refuses to run where an identity
already exists, so a key is never replaced by accident. `id` refuses a key file that other
users can read, as `protocol.identity.load_identity` does.
"""

from __future__ import annotations

import json

import click

from p2pgolf.node.cli import UserError
from p2pgolf.node.home import Home


@click.command("init")
@click.pass_obj
def init(home: Home) -> None:
    """Create this node's identity key and data directory."""
    if home.key_file.exists():
        raise UserError(f"an identity already exists at {home.key_file}; this node is initialised (see `p2pgolf id`)")
    identity = initialise(home)
    click.echo(f"initialised {home.root}")
    click.echo(f"peer id:    {identity.peer_id}")
    click.echo(f"public key: {identity.public_hex}")
    click.echo(f"key file:   {home.key_file} (keep it private; it signs your results)")


def initialise(home: Home):
    """Create the data directory (0700), a new identity key (0600) and the pool with that key as
    our own. Raises UserError if an identity appeared meanwhile (another `init` won the race)."""
    from p2pgolf.pool.trust import TrustStore
    from p2pgolf.protocol.identity import KeyFileError, create_identity

    home.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        identity = create_identity(home.key_file)
    except KeyFileError as exc:
        raise UserError(str(exc)) from None
    with TrustStore(home.pool_db) as trust:
        trust.set_own(identity.public_hex)
    return identity


@click.command("id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_obj
def show_id(home: Home, as_json: bool) -> None:
    """Print this node's peer id, public key, the addresses others can dial, and one
    p2pgolf://... share string carrying them all (`join --bootstrap` takes it)."""
    from p2pgolf.protocol.identity import KeyFileError, load_identity

    try:
        identity = load_identity(home.key_file)
    except KeyFileError as exc:
        raise UserError(str(exc)) from None
    running = _running_status(home)
    if running is not None:  # the node's own list: observed public address and relays included
        addrs, reachability = list(running["addrs"]), running.get("reachability", "unknown")
    else:
        from p2pgolf.node.addresses import usable_addrs
        from p2pgolf.node.config import dialable_addrs
        from p2pgolf.protocol.errors import ProtocolError

        try:
            addrs, reachability = usable_addrs(identity.peer_id, dialable_addrs(home, identity.peer_id)), "unknown"
        except ProtocolError as exc:
            raise UserError(str(exc)) from None
    from p2pgolf.node.share_string import MAX_ADDRS, encode

    share = encode(identity.peer_id, addrs[:MAX_ADDRS]) if addrs else None  # what `join --bootstrap` takes
    if as_json:
        click.echo(json.dumps({"peer_id": identity.peer_id, "public_key": identity.public_hex, "home": str(home.root), "addrs": addrs, "share": share,
                               "reachability": reachability, "running": running is not None}))  # fmt: skip
        return
    click.echo(f"peer id:    {identity.peer_id}")
    click.echo(f"public key: {identity.public_hex}")
    click.echo(f"home:       {home.root}")
    for addr in addrs:  # 0.0.0.0 stands for every address of this machine
        click.echo(f"address:    {addr}")
    if not addrs:
        click.echo("address:    none yet (the first `join` picks a port and keeps it)")
    else:
        click.echo(f"share:      {share}")  # all of the above in one string, for join --bootstrap
    if running is not None:
        click.echo(f"reachable:  {reachability} (from the running node; 'private': only the relay addresses work from outside)")


def _running_status(home: Home) -> dict | None:
    """The running node's status (over its control socket), or None when none runs."""
    from p2pgolf.node.control import ControlError, request

    try:
        return request(home.control_socket, {"op": "status"}, timeout=5)["status"]
    except (ControlError, OSError, KeyError):
        return None
