"""`p2pgolf join`: run this node until Ctrl-C or SIGTERM, then shut down cleanly.

It prints the multiaddr others dial, then a live status line (a rewritten line on a terminal,
plain periodic lines otherwise). Listening defaults to /ip4/127.0.0.1/tcp/0 (this machine
only); to be reachable from other machines pass --listen /ip4/0.0.0.0/tcp/4001. Without
--no-train it runs the research loop (node.research_loop.run_research_loop) as the node's
worker.

Ctrl-C while a training run is in progress (`--on-interrupt`, printed at start-up):
- finish (default): no new experiment starts; the run completes, is signed, stored and
  published, then the node stops. A second Ctrl-C abandons it.
- abandon: the run's trainer is stopped at once and the journal records it as abandoned (it is
  not trained again), then the node stops.
SIGTERM always abandons. With no run in progress, Ctrl-C just stops. Nothing outlives `join`:
the research loop stops its trainer when cancelled, and any child process still running at the
end is terminated as a last resort.
"""

from __future__ import annotations

import logging
import sys

import click

from node.cli import UserError
from node.home import Home

ON_INTERRUPT = ("finish", "abandon")


@click.command("join")
@click.option("--bench", "bench_names", multiple=True, default=("parameter-golf/sp1024-10min",), show_default=True, help="Benchmark to gossip (NAME or NAME@SECONDSs); repeat for several.")
@click.option("--bootstrap", multiple=True, metavar="ADDR", help="Peer multiaddr to dial (/ip4/HOST/tcp/PORT/p2p/12D3KooW...); repeatable; added to config.toml's.")
@click.option("--listen", multiple=True, metavar="ADDR", help="Listen multiaddr; repeatable. Default /ip4/127.0.0.1/tcp/0; use /ip4/0.0.0.0/tcp/4001 to be reachable by others.")
@click.option("--no-train", is_flag=True, help="Only relay and pool records; do not run the research loop.")
@click.option(
    "--on-interrupt",
    type=click.Choice(ON_INTERRUPT),
    default="finish",
    show_default=True,
    help="What Ctrl-C does to a training run in progress: 'finish' lets it complete and publishes it, then stops (a second Ctrl-C abandons it); 'abandon' stops it at once (it is not retrained). SIGTERM always abandons.",
)
@click.option("--eval-tokens", type=click.IntRange(min=0), default=0, show_default=True, help="Score each run on at most this many validation tokens (0: all); a capped score is marked partial. For quick tries.")
@click.option("--experiments", type=click.IntRange(min=1), default=None, help="Stop researching after this many experiments in this data directory (the node keeps relaying); knowing the number lets the bandit explore first and confirm its leader towards the end.")
@click.option("--mdns", is_flag=True, default=None, help="Find peers on the local network by mDNS.")
@click.option("--no-peer-exchange", is_flag=True, help="Connect only to the peers named (bootstrap, remembered): no DHT, no peers learned from peers. For fixed topologies.")
@click.option("--status-every", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds between status lines when stdout is not a terminal.")
@click.option("--sync-every", type=click.FloatRange(min=1.0), default=30.0, show_default=True, help="Seconds between anti-entropy syncs with every peer.")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug) on stderr.")
@click.pass_obj
def join(home: Home, bench_names, bootstrap, listen, no_train, on_interrupt, eval_tokens, experiments, mdns, no_peer_exchange, status_every, sync_every, verbose) -> None:
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

    worker = control = None
    worker_note = "serving as a relay and pool node (--no-train)"
    if not no_train:
        _ensure_training_data(home, benches[0])
        worker, control, worker_note = _research_loop(on_interrupt, eval_tokens, experiments)

    store = PoolStore(home.pool_db)
    trust = TrustStore(store)
    options = NodeOptions(
        benches=benches,
        listen=listen_addrs,
        bootstrap=peers,
        mdns=config.mdns if mdns is None else mdns,
        limits=config.limits,
        retention=config.retention,
        sync_interval_s=sync_every,
        control_socket=home.control_socket,
        home=home,
        peer_exchange=not no_peer_exchange,
    )
    node = Node(identity, store, trust, options, worker=worker)
    try:
        trio.run(_main, node, worker_note, status_every, control, on_interrupt)
    except Exception as exc:
        found = user_error_in(exc)
        if found is None:
            raise
        raise UserError(str(found)) from None
    finally:
        store.close()
        _reap_children()


async def _main(node, worker_note: str, status_every: float, control, on_interrupt: str) -> None:
    import signal

    import trio

    out = sys.stdout
    # The receiver stays open until the node has stopped, so a Ctrl-C during start-up or
    # shutdown is handled here instead of surfacing as a KeyboardInterrupt traceback.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stopping_during: list[int] = []  # the experiment in progress when the node was told to stop
        async with trio.open_nursery() as nursery:

            def stop() -> None:
                if control is not None and control.current is not None:
                    stopping_during.append(control.current.n)
                node.stop()
                nursery.cancel_scope.cancel()

            nursery.start_soon(_interrupts, signals, control, on_interrupt, stop)
            await nursery.start(node.run)
            out.write(f"p2pgolf node {node.peer_id} on {', '.join(b.name for b in node.options.benches)}\n")
            for addr in node.addrs:
                out.write(f"listening: {addr}\n")
            if any("/ip4/127.0.0.1/" in a or "/ip6/::1/" in a for a in node.options.listen):
                out.write("(loopback only: to be reachable from other machines pass --listen /ip4/0.0.0.0/tcp/4001)\n")
            out.write(f"{worker_note}\n")
            out.flush()
            nursery.start_soon(_status_lines, node, status_every, control)
            if control is not None:
                nursery.start_soon(_stop_when_finished, control, stop)
    end = control.last_end if control is not None else None
    if end is not None and end["status"] == "abandoned" and end["n"] in stopping_during:
        _say(f"experiment {end['n']} was abandoned; it will not be trained again")
    _say(f"stopped: {node.status().line()}")


async def _interrupts(signals, control, on_interrupt: str, stop) -> None:
    """Turn SIGINT / SIGTERM into finishing or abandoning the current run, then `stop()`."""
    import signal

    finishing = None
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and on_interrupt == "finish" and finishing is None and control is not None:
            finishing = control.finish()
            if finishing is not None:
                _say(
                    f"received SIGINT: finishing experiment {finishing.n} ({control.remaining()}), then shutting down;"
                    " no new experiment will start. Press Ctrl-C again to abandon it."
                )
                continue
        current = control.current if control is not None else None
        if current is not None:
            _say(f"received {name}: abandoning experiment {current.n}; shutting down")
        else:
            _say(f"received {name}; shutting down")
        stop()
        return


async def _stop_when_finished(control, stop) -> None:
    """After a Ctrl-C chose to finish, stop the node once the loop has published that run."""
    await control.stopped.wait()
    if not control.finishing:
        return  # the loop ended by itself (it failed): the node goes on as a relay and pool node
    end = control.last_end
    if end is not None:
        if end["status"] == "ok":
            what = f"finished and published (record {end['record'][:12]})" if end.get("record") else "finished"
        else:
            what = f"ended: {end['status']}" + (f" ({end['note']})" if end.get("note") else "")
        _say(f"experiment {end['n']} {what}; shutting down")
    stop()


async def _status_lines(node, every: float, control=None) -> None:
    import trio

    tty = sys.stdout.isatty()
    while True:
        await trio.sleep(1.0 if tty else every)
        line = node.status().line()
        if control is not None and control.finishing and control.current is not None:
            line += f"  finishing experiment {control.current.n}: {control.remaining()}"
        if tty:
            sys.stdout.write("\r\x1b[2K" + line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _say(text: str) -> None:
    """Print `text` on a line of its own; on a terminal, first clear the status line."""
    out = sys.stdout
    out.write(("\r\x1b[2K" if out.isatty() else "") + text + "\n")
    out.flush()


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


def _ensure_training_data(home: Home, bench) -> None:
    """Make sure the research loop can train on `bench` before the node starts: the challenge's
    data is downloaded once (as `p2pgolf data fetch` does, with a progress bar); anything else
    missing is one clear line, never a loop of failed experiments."""
    from trainer.datasets import DataError, load_benchmark_data

    try:
        load_benchmark_data(bench, home.data_dir)
        return
    except DataError as exc:
        missing = exc
    if bench.task != "parameter-golf":
        raise UserError(f"{missing} (or join with --no-train to relay only)")
    from trainer.fetch import FetchError, fetch_challenge_data

    click.echo(f"the challenge data is not in {home.data_dir} yet: downloading it once (as `p2pgolf data fetch` does)")
    try:
        fetch_challenge_data(home.data_dir, 1, progress=True)
        load_benchmark_data(bench, home.data_dir)
    except (FetchError, DataError) as exc:
        raise UserError(f"could not get the challenge data: {exc}; run `p2pgolf data fetch` when the Hub is reachable, or join with --no-train to relay only") from None


def _research_loop(on_interrupt: str, eval_tokens: int, experiments: int | None = None):
    """The node's worker, the handle join's Ctrl-C handling uses on it, and the start-up line."""
    import functools

    from node.research_loop import LoopControl, run_research_loop

    control = LoopControl()
    worker = functools.partial(run_research_loop, control=control, eval_token_cap=eval_tokens, max_experiments=experiments)
    if on_interrupt == "finish":
        note = "running the research loop; Ctrl-C finishes the current run, publishes it and stops (Ctrl-C twice abandons it)"
    else:
        note = "running the research loop; Ctrl-C abandons the current run and stops (--on-interrupt abandon)"
    return worker, control, note


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
