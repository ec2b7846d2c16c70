"""`p2pgolf join`: run this node until Ctrl-C or SIGTERM, then shut down cleanly.

It prints the multiaddr others dial, then a live status line (a rewritten line on a terminal,
plain periodic lines otherwise). Listening defaults to /ip4/127.0.0.1/tcp/0 (this machine
only); to be reachable from other machines pass --listen /ip4/0.0.0.0/tcp/4001. Without
--no-train it runs the research loop (node.research_loop.run_research_loop) as the node's
worker; where that is not available the node serves as a relay and pool node. On shutdown
any child process still running (a training run) is terminated, so nothing outlives `join`.
"""

from __future__ import annotations

import logging
import sys

import click

from node.cli import UserError
from node.home import Home


@click.command("join")
@click.option("--bench", "bench_names", multiple=True, default=("parameter-golf/sp1024-10min",), show_default=True, help="Benchmark to gossip (NAME or NAME@SECONDSs); repeat for several.")
@click.option("--bootstrap", multiple=True, metavar="ADDR", help="Peer multiaddr to dial (/ip4/HOST/tcp/PORT/p2p/12D3KooW...); repeatable; added to config.toml's.")
@click.option("--listen", multiple=True, metavar="ADDR", help="Listen multiaddr; repeatable. Default /ip4/127.0.0.1/tcp/0; use /ip4/0.0.0.0/tcp/4001 to be reachable by others.")
@click.option("--no-train", is_flag=True, help="Only relay and pool records; do not run the research loop.")
@click.option("--mdns", is_flag=True, default=None, help="Find peers on the local network by mDNS.")
@click.option("--status-every", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds between status lines when stdout is not a terminal.")
@click.option("--sync-every", type=click.FloatRange(min=1.0), default=30.0, show_default=True, help="Seconds between anti-entropy syncs with every peer.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) on stderr.")
@click.pass_obj
def join(home: Home, bench_names, bootstrap, listen, no_train, mdns, status_every, sync_every, verbose) -> None:
    """Run a node: gossip, sync and (by default) the research loop."""
    import trio

    from node.config import load_config
    from node.host import parse_listen, parse_peer_addr
    from node.node import Node, NodeOptions
    from pool.store import PoolStore
    from pool.trust import TrustStore
    from protocol.benchmarks import benchmark
    from protocol.errors import ProtocolError
    from protocol.identity import KeyFileError, load_identity

    _configure_logging(verbose)
    if not home.key_file.exists():
        # First run: `join` is the one command a new user types after installing.
        from node.commands.identity_cmd import initialise

        created = initialise(home)
        click.echo(f"created a new identity {created.peer_id} in {home.root} (key file {home.key_file}, mode 0600)")
    try:
        identity = load_identity(home.key_file)
    except KeyFileError as exc:
        raise UserError(str(exc)) from None
    try:
        config = load_config(home)
        benches = tuple(dict.fromkeys(benchmark(n) for n in bench_names))
        listen_addrs = tuple(listen) or config.listen
        for addr in listen_addrs:
            parse_listen(addr)
        peers = tuple(dict.fromkeys([*config.bootstrap, *bootstrap]))
        for addr in peers:
            parse_peer_addr(addr)
    except ProtocolError as exc:
        raise UserError(str(exc)) from None

    worker = None
    worker_note = "serving as a relay and pool node (--no-train)"
    if not no_train:
        worker, worker_note = _research_loop()

    store = PoolStore(home.pool_db)
    trust = TrustStore(store)
    options = NodeOptions(
        benches=benches,
        listen=listen_addrs,
        bootstrap=peers,
        mdns=config.mdns if mdns is None else mdns,
        limits=config.limits,
        sync_interval_s=sync_every,
        control_socket=home.control_socket,
        home=home,
    )
    node = Node(identity, store, trust, options, worker=worker)
    try:
        trio.run(_main, node, worker_note, status_every)
    except Exception as exc:
        found = user_error_in(exc)
        if found is None:
            raise
        raise UserError(str(found)) from None
    finally:
        store.close()
        _reap_children()


async def _main(node, worker_note: str, status_every: float) -> None:
    import signal

    import trio

    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        out = sys.stdout
        out.write(f"p2pgolf node {node.peer_id} on {', '.join(b.name for b in node.options.benches)}\n")
        for addr in node.addrs:
            out.write(f"listening: {addr}\n")
        if any("/ip4/127.0.0.1/" in a or "/ip6/::1/" in a for a in node.options.listen):
            out.write("(loopback only: to be reachable from other machines pass --listen /ip4/0.0.0.0/tcp/4001)\n")
        out.write(f"{worker_note}\n")
        out.flush()
        nursery.start_soon(_status_lines, node, status_every)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                out.write(f"\nreceived {signal.Signals(signum).name}; shutting down\n")
                out.flush()
                break
        node.stop()
        nursery.cancel_scope.cancel()
    sys.stdout.write(f"stopped: {node.status().line()}\n")
    sys.stdout.flush()


async def _status_lines(node, every: float) -> None:
    import trio

    tty = sys.stdout.isatty()
    while True:
        await trio.sleep(1.0 if tty else every)
        line = node.status().line()
        if tty:
            sys.stdout.write("\r\x1b[2K" + line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _reap_children(grace_s: float = 5.0) -> None:
    """Stop any child process still running (a training run the worker left behind when it was
    cancelled): SIGTERM to its process group, then SIGKILL after `grace_s`. Only our own
    children, found by parent PID, never by name."""
    import os
    import signal

    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    if not children:
        return
    own_group = os.getpgrp()
    for child in children:
        try:
            group = os.getpgid(child.pid)
            if group == child.pid and group != own_group:
                os.killpg(group, signal.SIGTERM)  # a trainer runs in its own group (torchrun workers)
            else:
                child.terminate()
        except (OSError, psutil.Error):
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)


def _research_loop():
    try:
        from node.research_loop import run_research_loop
    except ModuleNotFoundError as exc:
        if exc.name == "node.research_loop":
            return None, "the research loop is not available yet: serving as a relay and pool node"
        raise
    return run_research_loop, "running the research loop"


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import libp2p  # noqa: F401  # its import resets the "libp2p" logger, so configure it after

    lib = logging.getLogger("libp2p")
    if verbose >= 2:
        lib.propagate = True  # through our handler and format
        lib.setLevel(logging.DEBUG)
    else:
        # py-libp2p logs every failed re-dial of an absent peer at ERROR, and some of its modules
        # set their own levels; those lines are about peers, not us, so they go nowhere.
        lib.propagate = False
        lib.addHandler(logging.NullHandler())


def user_error_in(exc: BaseException):
    """The first error a user can act on (a socket in use, a node already running, a bad
    address) in `exc` or, through trio's exception groups, inside it; None if there is none."""
    from node.control import ControlError
    from protocol.errors import ProtocolError

    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = user_error_in(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, (ControlError, ProtocolError, OSError)) else None
