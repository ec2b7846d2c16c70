"""`p2pgolf join`: run this node until Ctrl-C or SIGTERM, then shut down cleanly.

It prints the multiaddr others dial, then on a terminal a live view redrawn in place
(node/views/live.py), otherwise plain status lines every --status-every seconds; --quiet prints
nothing on stdout, --log FILE appends every line with a timestamp (node/views/join_output.py).
Listening defaults to /ip4/127.0.0.1/tcp/0 (this machine only); to be reachable from other
machines pass --listen /ip4/0.0.0.0/tcp/4001. Without --no-train it runs the research loop
(node.research_loop.run_research_loop) as the node's worker.

Ctrl-C while a training run is in progress (`--on-interrupt`, printed at start-up):
- finish (default): no new experiment starts; the run completes, is signed, stored and
  published, then the node stops. A second Ctrl-C abandons it.
- abandon: the run's trainer is stopped at once and the journal records it as abandoned (it is
  not trained again), then the node stops.
SIGTERM always abandons. With no run in progress, Ctrl-C just stops. `p2pgolf stop` acts as a
Ctrl-C does (`stop --abandon` as SIGTERM). A second SIGINT within DUPLICATE_SIGINT_S of the
one before counts as the same Ctrl-C (a wrapper that forwards signals to the process group
delivers each twice); SIGINTs after the node decided to stop are acknowledged and change
nothing, so the node always ends with its `stopped:` line and exit code 0. Nothing outlives
`join`: the research loop stops its trainer when cancelled, and any child process still running
at the end is terminated as a last resort.

Plain lines (not only the status line) say what the node does: each experiment as it starts
(number, operator, candidate, base and diff, budget), and as it ends (val_bpb, steps, time,
record id, or why it failed). A --bootstrap peer that does not answer gives one warning line.
Logs go to stderr (and with --log, warnings also to FILE); the research journal and each run's
train.log are in the data directory, see README "Where things are".
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from p2pgolf.node.cli import BadInput, UserError, verbosity
from p2pgolf.node.home import Home
from p2pgolf.node.proposers.spec import DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT_S

ON_INTERRUPT = ("finish", "abandon")
DUPLICATE_SIGINT_S = 1.0  # a SIGINT this soon after the previous one is the same Ctrl-C
_OUTPUT = None  # node.views.join_output.JoinOutput of the running join: where lines go


@click.command("join")
@click.option("--bench", "bench_names", multiple=True, default=("parameter-golf/sp1024-10min",), show_default=True, help="Benchmark to gossip (NAME or NAME@SECONDSs); repeat for several.")
@click.option("--bootstrap", multiple=True, metavar="ADDR", help="Peer to dial: a multiaddr (/ip4/HOST/tcp/PORT/p2p/12D3KooW...) or the p2pgolf://... string its `p2pgolf id` prints; repeatable; added to config.toml's.")
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
@click.option("--max-degree", type=click.IntRange(1, 1000), default=None, metavar="N", help="Connections to keep at most (default 16; config.toml: [network] max_degree); above it the most redundant learned peers are closed, down to 8 (or N if lower).")
@click.option("--no-peer-exchange", is_flag=True, help="Connect only to the peers named (bootstrap, remembered): no DHT, no peers learned from peers. For fixed topologies.")
@click.option("--no-relay-service", is_flag=True, help="Never serve as a circuit relay for peers behind NAT (by default a reachable node does, within the limits below).")
@click.option("--relay-reservations", type=click.IntRange(min=0), default=None, metavar="N", help="Peers that may hold a slot on this relay at once (default 4; config.toml [relay] max_reservations).")
@click.option("--relay-circuits", type=click.IntRange(min=0), default=None, metavar="N", help="Relayed connections open at once per reservation (default 8; [relay] max_circuits).")
@click.option("--relay-circuit-bytes", type=click.IntRange(min=1), default=None, metavar="BYTES", help="Bytes one relayed connection may carry (default 64 MiB; [relay] circuit_bytes).")
@click.option("--relay-circuit-seconds", type=click.IntRange(min=1), default=None, metavar="SECONDS", help="Seconds one relayed connection may last (default 3600; [relay] circuit_duration_s).")
@click.option("--no-hole-punch", is_flag=True, help="Keep relayed connections relayed (no DCUtR upgrade to a direct connection).")
@click.option("--status-every", type=click.FloatRange(min=0.1), default=10.0, show_default=True, help="Seconds between status lines when stdout is not a terminal.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on stdout (no live view, no status lines); warnings and errors still go to stderr.")
@click.option("--log", "log_file", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Append every line (and a status line every --status-every seconds, and warnings) to FILE with UTC timestamps.")
@click.option("--sync-every", type=click.FloatRange(min=1.0), default=30.0, show_default=True, help="Seconds between anti-entropy syncs with every peer.")
@click.option(
    "--proposer", "proposers", multiple=True, metavar="NAME=COMMAND",
    help="An external proposer: COMMAND runs once per request, reads the situation as JSON on stdin and answers proposals (checked like a peer's); repeatable; added to config.toml's [proposers]. Its share of experiments follows its yield.",
)  # fmt: skip
@click.option("--proposer-timeout", type=float, default=DEFAULT_TIMEOUT_S, show_default=True, metavar="SECONDS", help="Seconds one request to a --proposer may take before it is killed (config.toml: timeout_s per proposer).")
@click.option("--proposer-max-output", type=int, default=DEFAULT_MAX_BYTES, show_default=True, metavar="BYTES", help="The most a --proposer may write per request; one that writes more is killed (config.toml: max_output_bytes).")
@click.pass_obj
def join(home: Home, bench_names, bootstrap, listen, no_train, on_interrupt, eval_tokens, experiments, mdns, max_degree, no_peer_exchange, no_relay_service, relay_reservations, relay_circuits, relay_circuit_bytes, relay_circuit_seconds, no_hole_punch, status_every, quiet, log_file, sync_every, proposers, proposer_timeout, proposer_max_output) -> None:
    """Run a node: gossip, sync and (by default) the research loop."""
    import signal

    from p2pgolf.node.views.join_output import JoinOutput

    import trio

    from p2pgolf.node.config import load_config
    from p2pgolf.node.host import parse_listen, parse_peer_addr
    from p2pgolf.node.node import Node, NodeOptions
    from p2pgolf.node.share_string import expand_peer_addrs
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore
    from p2pgolf.protocol.benchmarks import benchmark
    from p2pgolf.protocol.errors import ProtocolError
    from p2pgolf.protocol.identity import KeyFileError, load_identity

    _configure_logging(verbosity())
    global _OUTPUT
    try:
        _OUTPUT = JoinOutput(quiet=quiet, log_path=log_file)
    except OSError as exc:
        raise BadInput(f"--log {log_file}: cannot open it for appending: {exc.strerror}") from None
    # The command line is checked before anything is created: a typo costs nothing.
    try:
        benches = tuple(dict.fromkeys(benchmark(n) for n in bench_names))
        for addr in listen:
            parse_listen(addr)
        bootstrap = expand_peer_addrs(bootstrap)  # a p2pgolf:// share string gives its addresses
    except ProtocolError as exc:
        raise BadInput(str(exc)) from None
    if not home.key_file.exists():
        # First run: `join` is the one command a new user types after installing.
        from p2pgolf.node.commands.identity_cmd import initialise

        created = initialise(home)
        click.echo(f"created a new identity {created.peer_id} in {home.root} (key file {home.key_file}, mode 0600)")
    try:
        identity = load_identity(home.key_file)
    except KeyFileError as exc:
        raise UserError(str(exc)) from None
    try:
        config = load_config(home)
        listen_addrs = tuple(listen) or config.listen
        for addr in listen_addrs:
            parse_listen(addr)
        peers = tuple(dict.fromkeys([*config.bootstrap, *bootstrap]))
        for addr in peers:
            parse_peer_addr(addr)
        from p2pgolf.node.proposers.spec import merge_specs, parse_spec

        from p2pgolf.node.config import relay_settings

        flags = {"max_reservations": relay_reservations, "max_circuits": relay_circuits, "circuit_bytes": relay_circuit_bytes, "circuit_duration_s": relay_circuit_seconds}
        flags = {k: v for k, v in flags.items() if v is not None}
        if no_relay_service:
            flags["service"] = False
        if no_hole_punch:
            flags["hole_punch"] = False
        relay = relay_settings(flags, "join", config.relay)
        specs = merge_specs(config.proposers, tuple(parse_spec(p, timeout_s=proposer_timeout, max_bytes=proposer_max_output) for p in proposers))
    except ProtocolError as exc:
        raise UserError(str(exc)) from None

    worker = control = None
    worker_note = "serving as a relay and pool node (--no-train)"
    if not no_train:
        _ensure_training_data(home, benches[0])
        worker, control, worker_note = _research_loop(on_interrupt, eval_tokens, experiments, specs)
        if specs:
            worker_note += f"; proposers: {', '.join(s.name for s in specs)}"

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
        relay=relay,
        mesh=_mesh_settings(max_degree if max_degree is not None else config.max_degree),
    )
    node = Node(identity, store, trust, options, worker=worker)
    node.research = control  # status reports its current experiment and finished results
    late = _LateInterrupts()
    signal.signal(signal.SIGINT, late)  # trio restores this one: a SIGINT after the run is noted, not fatal
    try:
        trio.run(_main, node, worker_note, status_every, control, on_interrupt)
    except Exception as exc:
        found = user_error_in(exc)
        if found is None:
            raise
        raise UserError(str(found)) from None
    finally:
        # From here on a SIGINT is ignored by the OS, through the interpreter's own exit too
        # (Python resets its handlers to the default at exit, but leaves an ignored signal be).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        store.close()
        _reap_children()


def _mesh_settings(max_degree: int | None):
    """MeshSettings with `max_degree` (None: the defaults); a cap below the target degree
    lowers the target to it."""
    from p2pgolf.node.peer_exchange import MeshSettings

    if max_degree is None:
        return MeshSettings()
    return MeshSettings(target_degree=min(MeshSettings.target_degree, max_degree), max_degree=max_degree)


class _LateInterrupts:
    """SIGINT handler outside the node's signal receiver: a SIGINT after the node has stopped
    (trio re-raises the ones still pending when its receiver closes) is ignored, instead of a
    KeyboardInterrupt that would skip the clean-up; what is left of the exit is bounded."""

    def __call__(self, signum, frame) -> None:
        pass


async def _main(node, worker_note: str, status_every: float, control, on_interrupt: str) -> None:
    import signal

    import trio

    # The receiver stays open until the node has stopped, so a Ctrl-C during start-up or
    # shutdown is handled here instead of surfacing as a KeyboardInterrupt traceback.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        stopping_during: list[int] = []  # the experiment in progress when the node was told to stop
        async with trio.open_nursery() as outer:
            # Signals are read until the node has stopped (never left pending: trio would
            # re-raise them as KeyboardInterrupt when the receiver closes).
            async with trio.open_nursery() as nursery:

                def stop() -> None:
                    if control is not None and control.current is not None:
                        stopping_during.append(control.current.n)
                    node.stop()
                    nursery.cancel_scope.cancel()

                node.on_stop_request = lambda abandon: _requested_stop(abandon, control, on_interrupt, stop)
                outer.start_soon(_interrupts, signals, control, on_interrupt, stop)
                await _run_node(nursery, node, worker_note, status_every, control, stop)
            outer.cancel_scope.cancel()
    end = control.last_end if control is not None else None
    if end is not None and end["status"] == "abandoned" and end["n"] in stopping_during:
        _say(f"experiment {end['n']} was abandoned; it will not be trained again")
    _say(f"stopped: {node.status().line()}")


async def _run_node(nursery, node, worker_note: str, status_every: float, control, stop) -> None:
    await nursery.start(node.run)
    _say(f"p2pgolf node {node.peer_id} on {', '.join(b.name for b in node.options.benches)}")
    for addr in node.addrs:
        _say(f"listening: {addr}")
    if any("/ip4/127.0.0.1/" in a or "/ip6/::1/" in a for a in node.options.listen):
        _say("(loopback only: to be reachable from other machines pass --listen /ip4/0.0.0.0/tcp/4001)")
    _say(worker_note)
    if _OUTPUT is not None and _OUTPUT.wants_live:
        nursery.start_soon(_live_view, node, control)
    nursery.start_soon(_status_lines, node, status_every, control)
    if control is not None:
        nursery.start_soon(_stop_when_finished, control, stop)
        nursery.start_soon(_experiment_lines, control)


def _requested_stop(abandon: bool, control, on_interrupt: str, stop) -> str:
    """`p2pgolf stop` (over the control socket): as a Ctrl-C (finish or abandon the run in
    progress, by --on-interrupt), or abandon at once with --abandon. Returns what it does."""
    if not abandon and on_interrupt == "finish" and control is not None and not control.finishing:
        finishing = control.finish()
        if finishing is not None:
            _say(f"asked to stop: finishing experiment {finishing.n} ({control.remaining()}), then shutting down")
            return f"finishing experiment {finishing.n}, then stopping"
    current = control.current if control is not None else None
    _say(f"asked to stop: abandoning experiment {current.n}; shutting down" if current is not None else "asked to stop; shutting down")
    stop()
    return "stopping"


async def _experiment_lines(control, every: float = 0.5) -> None:
    """One plain line when an experiment starts and one when it ends (with its result)."""
    import trio

    shown_start = shown_end = None
    while True:
        run = control.current
        if run is not None and run.n != shown_start:
            shown_start = run.n
            _say(f"experiment {run.n}: {run.describe()}")
        end = control.last_end
        if end is not None and end["n"] != shown_end:
            shown_end = end["n"]
            _say(f"experiment {end['n']} {control.describe_end(end)}")
        await trio.sleep(every)


async def _interrupts(signals, control, on_interrupt: str, stop) -> None:
    """Turn SIGINT / SIGTERM into finishing or abandoning the current run, then `stop()`.
    A SIGINT within DUPLICATE_SIGINT_S of the previous one is the same Ctrl-C; signals after
    the stop are acknowledged and change nothing (the shutdown is already bounded)."""
    import signal

    import trio

    finishing = None
    last_sigint = None  # when the last SIGINT that counted arrived
    stopped = False
    async for signum in signals:
        name = signal.Signals(signum).name
        now = trio.current_time()
        if signum == signal.SIGINT:
            if last_sigint is not None and now - last_sigint < DUPLICATE_SIGINT_S:
                continue  # a copy of the Ctrl-C that just counted
            last_sigint = now
        if stopped:
            _say(f"received {name}: already stopping")
            continue
        if signum == signal.SIGINT and on_interrupt == "finish" and finishing is None and control is not None and not control.finishing:
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
        stopped = True


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


async def _live_view(node, control) -> None:
    """The live view on a terminal (node/views/live.py); lines print above it meanwhile."""
    from p2pgolf.node.views.live import LiveView

    view = LiveView()
    _OUTPUT.live = view
    try:
        await view.run(node, control, node.options.benches[0].id)
    except Exception as exc:  # a view must never take the node down: plain lines from here on
        _OUTPUT.live = None
        _OUTPUT.tty = False
        logging.getLogger(__name__).warning("the live view stopped (%s: %s); plain status lines from here on", type(exc).__name__, exc)
        if _OUTPUT.log_path is None:  # with --log, the status loop already runs and now writes stdout too
            await _status_lines(node, 10.0, control)
    finally:
        _OUTPUT.live = None


async def _status_lines(node, every: float, control=None) -> None:
    """A status line every `every` seconds to stdout (not a terminal) and to --log."""
    import trio

    out = _OUTPUT
    if out is None or (not out.wants_status_lines and out.log_path is None):
        return  # the live view shows it, or --quiet without a log
    while True:
        await trio.sleep(every)
        line = node.status().line()
        if control is not None and control.finishing and control.current is not None:
            line += f"  finishing experiment {control.current.n}: {control.remaining()}"
        out.status(line)


def _say(text: str) -> None:
    """Print `text` on a line of its own (above the live view on a terminal; to --log too)."""
    if _OUTPUT is not None:
        _OUTPUT.say(text)
        return
    sys.stdout.write(text + "\n")
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


def _ensure_training_data(home: Home, bench) -> None:
    """Make sure the research loop can train on `bench` before the node starts: the challenge's
    data is downloaded once (as `p2pgolf data fetch` does, with a progress bar); anything else
    missing is one clear line, never a loop of failed experiments."""
    from p2pgolf.trainer.datasets import DataError, load_benchmark_data

    try:
        load_benchmark_data(bench, home.data_dir)
        return
    except DataError as exc:
        missing = exc
    if bench.task != "parameter-golf":
        raise UserError(f"{missing} (or join with --no-train to relay only)")
    from p2pgolf.trainer.fetch import FetchError, fetch_challenge_data

    click.echo(f"the challenge data is not in {home.data_dir} yet: downloading it once (as `p2pgolf data fetch` does)")
    try:
        fetch_challenge_data(home.data_dir, 1, progress=True)
        load_benchmark_data(bench, home.data_dir)
    except (FetchError, DataError) as exc:
        raise UserError(f"could not get the challenge data: {exc}; run `p2pgolf data fetch` when the Hub is reachable, or join with --no-train to relay only") from None


def _research_loop(on_interrupt: str, eval_tokens: int, experiments: int | None = None, proposers: tuple = ()):
    """The node's worker, the handle join's Ctrl-C handling uses on it, and the start-up line."""
    import functools

    from p2pgolf.node.research_loop import LoopControl, run_research_loop

    control = LoopControl()
    worker = functools.partial(run_research_loop, control=control, eval_token_cap=eval_tokens, max_experiments=experiments, proposers=proposers)
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
    from p2pgolf.node.control import ControlError
    from p2pgolf.protocol.errors import ProtocolError

    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = user_error_in(inner)
            if found is not None:
                return found
        return None
    return exc if isinstance(exc, (ControlError, ProtocolError, OSError)) else None
