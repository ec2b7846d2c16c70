"""The Node: one libp2p host with gossip, sync, discovery, the control socket and an optional
worker (the research loop), all living in one trio nursery that the node owns.

Guarantees:
- `Node.run` returns only after every task it started has ended and the host is closed, so
  cancelling it (Ctrl-C, SIGTERM, a test's cancel scope) closes every socket it opened,
  the listening ones included.
- Services start before the host and stop after it (py-libp2p raises if pubsub stops first).
- Every record from the network passes one admission path (node.limits.Admission: ban, rate,
  verification, storage), whether it came by gossip or by sync; our own records are stored
  before they are sent. A peer holds at most `Limits.max_streams_per_peer` sync and blob
  streams with us at once.
- A node syncs with each peer as soon as it is connected and again every `sync_interval_s`,
  so a node that was offline, or is new, catches up and partitions heal.
- With a blob directory (the home's `blobs/`, or `blobs_dir`), the node serves every blob it
  holds over the blob exchange (node.blob_exchange) and fetches blobs from its peers
  (`fetch_blob`); `keep_artifact` stores a run's artifact and applies the retention rule, which
  never drops this node's own results' artifacts nor the current best (pool.blobs).
- The worker (`async def worker(node)`) runs in the node's nursery and is cancelled on
  shutdown; if it fails, the node logs it and keeps serving as a relay and pool node.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from p2pgolf.node.blob_exchange import BlobExchange, BlobFetchError, BlobServer, ExchangeSettings
from p2pgolf.node.config import load_known_peers, load_listen_port, load_pinned_peers, save_known_peers, save_listen_port
from p2pgolf.node.control import serve as serve_control
from p2pgolf.node.discovery import Discovery
from p2pgolf.node.gossip import Gossip, GossipSettings
from p2pgolf.node.home import Home
from p2pgolf.node.host import DEFAULT_LISTEN, PeerAddr, listen_port, make_host, refuse_taken_ports, with_port
from p2pgolf.node.limits import Admission, Limits, Verdict
from p2pgolf.node.peer_exchange import MeshSettings, PeerExchange
from p2pgolf.node.relay import Relay
from p2pgolf.node.relay_settings import RelaySettings
from p2pgolf.node.status import NodeStatus, PeerStatus
from p2pgolf.node.stream_limits import StreamSlots, bound_inbound_streams
from p2pgolf.node.sync import SyncError, SyncReport, SyncServer, peer_lacks, sync_with
from p2pgolf.pool.admission import REJECTED
from p2pgolf.pool.blobs import BlobError, BlobStore, Retention, protected_artifacts
from p2pgolf.protocol.benchmarks import Benchmark
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.signing import SignedRecord, decode_record

log = logging.getLogger(__name__)

Worker = Callable[["Node"], Awaitable[None]]
STARTUP_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 10.0
SYNC_RETRY_S = 5.0  # a failed sync is retried this much later (not every pass of the loop)
PUBLISH_UNPACED = 100  # records of one publish request sent at once
PUBLISH_PACE_PER_S = 40.0  # the rest, this many a second


@dataclass(frozen=True)
class NodeOptions:
    """How a node runs. Defaults are safe: loopback only, no mDNS, no control socket."""

    benches: tuple[Benchmark, ...]
    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    bootstrap: tuple[str, ...] = ()
    mdns: bool = False
    limits: Limits = field(default_factory=Limits)
    gossip: GossipSettings = field(default_factory=GossipSettings)
    sync_interval_s: float = 30.0
    max_parallel_syncs: int = 4
    control_socket: Path | None = None
    home: Home | None = None  # where known peers are remembered; None: remember nothing
    blobs_dir: Path | None = None  # None: the home's blobs/ (no home: no blob store)
    exchange: ExchangeSettings = field(default_factory=ExchangeSettings)
    retention: Retention = field(default_factory=Retention)
    keep_port: bool = True  # a /tcp/0 listen address takes the port remembered in the home
    mesh: MeshSettings = field(default_factory=MeshSettings)  # degree kept by peer exchange (node/peer_exchange.py)
    peer_exchange: bool = True  # False: only the peers named (no DHT), for fixed topologies
    fetch_scripts: bool = True  # fetch (never approve) the scripts records name (node/script_fetch.py)
    relay: RelaySettings = field(default_factory=RelaySettings)  # relay service and client, DCUtR (node/relay.py)
    nat: bool = True  # False: no AutoNAT, relay or hole punching at all

    def __post_init__(self) -> None:
        if not self.benches:
            raise ProtocolError("a node needs at least one benchmark", "bench")
        if not self.listen:
            raise ProtocolError("a node needs at least one listen address", "listen")


class Node:
    """A p2pgolf node. Build it, then `await nursery.start(node.run)`; cancel to stop."""

    def __init__(self, identity: Identity, store: Any, trust: Any, options: NodeOptions, *, worker: Worker | None = None) -> None:
        self.identity = identity
        self.store = store
        self.trust = trust
        self.options = options
        self.worker = worker
        self.bench_ids = frozenset(b.id for b in options.benches)
        self.admission = Admission(store, trust, self.bench_ids, options.limits, own_key=identity.public_hex, budgets={b.id: b.budget_s for b in options.benches})
        self.host: Any = None
        self.gossip: Gossip | None = None
        self.announcer: Any = None  # node.running_announcements.RunningAnnouncer: what trusted peers train now
        self.sync_server: SyncServer | None = None
        self.discovery: Discovery | None = None
        self.peer_exchange: PeerExchange | None = None
        self.reachability: Any = None  # node.reachability.Reachability (AutoNAT)
        self.relay: Relay | None = None
        blobs_dir = options.blobs_dir or (options.home.blobs_dir if options.home is not None else None)
        # Artifacts are capped at the largest size cap among our benchmarks (the challenge's 16 MB).
        self.blobs = BlobStore(blobs_dir, caps={"artifact": max(b.size_cap for b in options.benches)}) if blobs_dir else None
        self.blob_server: BlobServer | None = None
        self.exchange: BlobExchange | None = None
        self.records_published = 0
        self.syncs = 0
        self.synced_in = 0  # records added by finished syncs
        self._syncing: dict[str, SyncReport] = {}  # peer -> the sync in progress with it
        self.sync_reports: list[Any] = []  # the last few, newest last
        self.worker_state = "none" if worker is None else "starting"
        self.started_at = time.monotonic()
        self.new_records = trio.Event()  # set (and replaced) whenever a record from a peer is stored
        self._synced: set[str] = set()
        self._sync_retry_at: dict[str, float] = {}  # peers whose last sync failed: when to try again
        self._remembered: list[str] = []
        self._established: tuple[str, ...] = ()
        self._nursery: Any = None
        self._stopping = trio.Event()
        self._connected_event = trio.Event()
        self.admission.on_added = self._on_added
        self.research: Any = None  # the research loop's LoopControl (join sets it): status shows its experiments
        # What `p2pgolf stop` does (join sets it: finish or abandon the run); returns a note.
        self.on_stop_request: Callable[[bool], str] = lambda abandon: (self.stop(), "stopping")[1]

    # --- running ---------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start everything, report `self` through task_status, and run until cancelled (or
        `stop()`); then shut down in order and return."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._serve)
            task_status.started(self)
            try:
                await self._stopping.wait()
            finally:
                self._stopping.set()  # also on cancellation: _serve shuts down in order

    def stop(self) -> None:
        """Ask a running node to shut down; `run` returns when it has."""
        self._stopping.set()

    async def _serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        # Shielded: a cancel that reached py-libp2p's own tasks mid-close would leave sockets
        # open (a connection marked closed whose socket never is). Instead we wait for the stop
        # signal and close the host while its tasks still run, then stop the services.
        from libp2p.tools.anyio_service import background_trio_service

        with trio.CancelScope(shield=True):
            opts = self.options
            listen = self._listen_addrs()
            self.host = make_host(self.identity, listen, enable_mdns=opts.mdns, addrs_factory=self._advertised if opts.nat else None)
            if opts.nat:
                from p2pgolf.node.reachability import Reachability

                self.reachability = Reachability(self.host, self._dial_back_candidates)
                self.relay = Relay(self.host, opts.relay, lambda: self.reachability.status, max_peers=opts.mesh.target_degree)
            self.gossip = Gossip(self.host, self.admission, {b.id: b.topic for b in opts.benches}, opts.gossip)
            from p2pgolf.node.running_announcements import RunningAnnouncer

            self.announcer = RunningAnnouncer.for_node(self)  # its own topics on the same pubsub
            self.stream_slots = StreamSlots(opts.limits.max_streams_per_peer)  # sync and blob streams together
            self.inbound_slots = bound_inbound_streams(self.host, opts.limits.max_libp2p_streams_per_peer)  # every protocol's
            self.sync_server = SyncServer(self.store, self.admission, self.bench_ids, self.stream_slots)
            self.sync_server.attach(self.host)
            if self.blobs is not None:
                self.blob_server = BlobServer(self.blobs, opts.exchange)
                self.blob_server.attach(self.host, guard=self.stream_slots.guard)
                self.exchange = BlobExchange(self.host, self.blobs, opts.exchange)
            self.host.get_network().register_notifee(_connection_notifee(self._on_connection))
            self.admission.on_ban = self._ban
            pinned = _peer_ids((*opts.bootstrap, *(load_pinned_peers(opts.home) if opts.home is not None else ())))
            self.discovery = Discovery(self.host, on_connected=self._remember, use_mdns_peerstore=opts.mdns, warn_unreachable=_peer_ids(opts.bootstrap), pinned=pinned)
            self.gossip.keep_peers(pinned)  # pinned and bootstrap peers keep their mesh place under a sybil flood
            self.peer_exchange = PeerExchange(self.host, self.discovery, opts.mesh, busy=self._busy, mesh_peers=self.gossip.mesh_peers, kept_peers=self.gossip.kept_peers) if opts.peer_exchange else None
            if opts.home is not None:
                self._remembered = load_known_peers(opts.home)
                self._established = tuple(self._remembered)  # what worked in earlier runs
            async with AsyncExitStack() as stack:
                for service in [*self.gossip.services(), *(self.peer_exchange.services() if self.peer_exchange else []), *(self.relay.services() if self.relay else [])]:
                    await stack.enter_async_context(background_trio_service(service))
                await stack.enter_async_context(self.host.run([_maddr(a) for a in listen]))
                stack.push_async_callback(self._close_host)  # leaves first: the host closes before its services
                if len(self.host.get_addrs()) < len(opts.listen):
                    # py-libp2p logs a failed listen and carries on without it; we refuse instead.
                    raise ProtocolError(f"cannot listen on {', '.join(listen)} (address in use or not available here)", "listen")
                self._remember_port()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    with trio.fail_after(STARTUP_TIMEOUT_S):
                        await self.gossip.start(nursery)
                        await self.announcer.start(nursery)
                        initial = list(dict.fromkeys([*opts.bootstrap, *self._remembered]))
                        await nursery.start(self.discovery.run, initial)
                        if opts.control_socket is not None:
                            await nursery.start(serve_control, opts.control_socket, self)
                    nursery.start_soon(self._sync_loop)
                    if self.peer_exchange is not None:
                        nursery.start_soon(self.peer_exchange.run)
                    if self.relay is not None:
                        nursery.start_soon(self.reachability.run)
                        nursery.start_soon(self.relay.run)
                    nursery.start_soon(self._ban_loop)
                    if self.blobs is not None and opts.home is not None and opts.fetch_scripts:
                        from p2pgolf.node.script_fetch import script_fetch_loop
                        from p2pgolf.node.scripts import ScriptStore

                        nursery.start_soon(script_fetch_loop, self, ScriptStore(opts.home))
                    if self.worker is not None:
                        nursery.start_soon(self._run_worker)
                    self.started_at = time.monotonic()
                    task_status.started()
                    await self._stopping.wait()
                    nursery.cancel_scope.cancel()  # our own tasks first; the host is still whole

    @property
    def addrs(self) -> list[str]:
        """Multiaddrs others can dial (with /p2p/<our id>): node.addresses.usable_addrs of the
        listen addresses, the public IP peers observed, and the relays holding a reservation."""
        if self.host is None:
            return []
        from p2pgolf.node.addresses import usable_addrs

        return usable_addrs(self.peer_id, self._direct_addrs(), observed_ips=self._observed_ips(), relays=self.relay.relay_bases() if self.relay else (), reachability=self.reachability_status)

    @property
    def reachability_status(self) -> str:
        """"public", "private" or "unknown" (AutoNAT, node/reachability.py)."""
        return self.reachability.status if self.reachability is not None else "unknown"

    def _direct_addrs(self) -> list[str]:
        """The listen addresses, wildcards expanded (no relay or observed addresses)."""
        from p2pgolf.node.host import concrete_addrs

        return list(dict.fromkeys(a for t in self.host.get_transport_addrs() for a in concrete_addrs(str(t)) if "/p2p-circuit" not in a))

    def _dial_back_candidates(self) -> list[str]:
        """What AutoNAT asks peers to dial: the listen addresses and each observed public IP
        with the listen port (never relay addresses)."""
        from p2pgolf.node.addresses import usable_addrs

        return usable_addrs(self.peer_id, self._direct_addrs(), observed_ips=self._observed_ips())

    def _observed_ips(self) -> list[str]:
        """IPs peers told us (identify) they see us at, newest libp2p view; even one observer
        counts, since a node behind a NAT often has one peer (its relay)."""
        manager = getattr(self.host, "_observed_addr_manager", None)
        ips = []
        try:
            for addr in manager.addrs(min_observers=1) if manager is not None else []:
                parts = str(addr).split("/")
                if len(parts) > 2 and parts[1] in ("ip4", "ip6"):
                    ips.append(parts[2])
        except Exception:
            return []
        return list(dict.fromkeys(ips))

    def _advertised(self, candidates: list[Any]) -> list[Any]:
        """libp2p AddrsFactory: what identify and the DHT tell peers (relay addresses added)."""
        return self.relay.circuit_addrs(candidates) if self.relay is not None else candidates

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def connected_peers(self) -> list[str]:
        return sorted(p.to_base58() for p in self.host.get_connected_peers()) if self.host is not None else []

    # --- publishing ------------------------------------------------------------------

    async def publish(self, raw: bytes) -> tuple[SignedRecord, Verdict, int]:
        """Store a signed record (ours or anyone's) and gossip it. Returns the record, what the
        pool made of it, and how many connected peers are subscribed to its topic.
        ProtocolError if it is invalid, for another benchmark, or by a blocked key."""
        signed = decode_record(raw)
        if signed.bench not in self.bench_ids:
            raise ProtocolError(f"record {signed.id[:12]} is for benchmark {signed.bench[:12]}..., which this node does not serve", "bench")
        if signed.author == self.identity.public_hex:
            verdict = self.admission.admit_signed(signed)
        else:
            verdict = self.admission.admit(raw, None)
        if not verdict.accepted:
            raise ProtocolError(f"record {signed.id[:12]} was not accepted by this node's pool: {verdict.value}")
        peers = await self.gossip.publish(signed.bench, signed.raw)
        self.records_published += 1
        return signed, verdict, peers

    async def peers_holding(self, record_id: str, *, within_s: float = 5.0) -> int:
        """How many connected peers confirm (over sync) that they hold `record_id`, asking
        each until it does or `within_s` passes."""
        holders = 0
        deadline = trio.current_time() + within_s

        async def ask(peer: str) -> None:
            nonlocal holders
            while trio.current_time() < deadline:
                try:
                    with trio.move_on_at(deadline):
                        if not await peer_lacks(self.host, peer, [record_id]):
                            holders += 1
                            return
                except SyncError:
                    pass
                await trio.sleep(0.2)

        async with trio.open_nursery() as nursery:
            for peer in self.connected_peers():
                nursery.start_soon(ask, peer)
        return holders

    # --- blobs -----------------------------------------------------------------------

    def keep_artifact(self, path: Path, sha: str) -> bool:
        """Store the artifact file at `path` under `sha` (refused, False, if it does not hash
        to it or is over the cap), then apply retention. False also when there is no store."""
        if self.blobs is None:
            return False
        try:
            self.blobs.put_file(path, kind="artifact", sha=sha)
        except (BlobError, OSError) as exc:
            log.warning("cannot keep artifact %s: %s", sha[:12], exc)
            return False
        self.retain()
        return True

    def retain(self) -> list[str]:
        """Apply the retention rule to the blob store; returns the digests removed."""
        if self.blobs is None:
            return []
        keep = set(protected_artifacts(self.store, self.identity.public_hex, self.bench_ids, self.trust.status if self.trust is not None else None))
        if self.options.home is not None:  # the scripts this node holds are kept: approval refers to them
            from p2pgolf.node.scripts import ScriptStore

            try:
                keep.update(e.sha for e in ScriptStore(self.options.home).entries())
            except ValueError as exc:
                log.warning("script index unreadable, no blob pruned: %s", exc)
                return []
        removed = self.blobs.prune(keep=keep, retention=self.options.retention)
        if removed:
            log.info("retention removed %d blob(s)", len(removed))
        return removed

    async def fetch_blob(self, sha: str, *, kind: str = "artifact", author: str | None = None, timeout_s: float | None = None) -> Path:
        """Blob `sha` from this node's store or its peers (the author's node first, when
        `author`, a public key hex, is connected). BlobFetchError / BlobError on failure."""
        if self.blobs is None or self.exchange is None:
            raise BlobFetchError("this node keeps no blobs (it has no home)")
        peers = self.connected_peers()
        if author:
            from p2pgolf.protocol.identity import peer_id_from_public_key

            try:
                first = peer_id_from_public_key(bytes.fromhex(author))
            except (ValueError, ProtocolError):
                first = None
            if first in peers:
                peers = [first, *[p for p in peers if p != first]]
        held = self.blobs.has(sha)
        path = await self.exchange.fetch(sha, kind=kind, peers=peers, timeout_s=timeout_s)
        if not held:
            self.retain()
        return path

    # --- status ----------------------------------------------------------------------

    def status(self) -> NodeStatus:
        counts = self.admission.counts
        rejected = sum(counts[v] for v in REJECTED)
        served = self.sync_server.served_records if self.sync_server else 0
        names = {b.id: b.name for b in self.options.benches}
        peers = []
        for peer in self.connected_peers():
            topics = tuple(names[b] for b in sorted(self.bench_ids) if self.gossip and peer in self.gossip.topic_peers(b))
            addrs: tuple[str, ...] = ()
            try:
                from libp2p.peer.id import ID

                addrs = tuple(str(a) for a in self.host.get_peerstore().addrs(ID.from_base58(peer)))
            except Exception:
                pass
            peers.append(PeerStatus(peer, addrs, topics, self.admission.limiter.invalid_count(peer)))
        return NodeStatus(
            peer_id=self.peer_id,
            addrs=tuple(self.addrs),
            benches=tuple(b.name for b in self.options.benches),
            peers=tuple(peers),
            pool_records=sum(self.store.count(bench=b) for b in self.bench_ids),
            records_in=counts[Verdict.ADDED],
            records_in_by_sync=self.synced_in + sum(r.added for r in self._syncing.values()),
            records_out=self.records_published + served,
            rejected=rejected,
            gossip_received=self.gossip.received if self.gossip else 0,
            syncs=self.syncs,
            uptime_s=time.monotonic() - self.started_at,
            worker=self.worker_state,
            **self._research_status(),
            peers_running=self._peers_running(),
            proposers=self._proposer_usage(),
            syncing=tuple({"peer": r.peer, "bench": r.bench, "expected": r.expected, "fetched": r.fetched, "added": r.added} for r in self._syncing.values()),
            quota=dataclasses.asdict(self.admission.quota()),
            reachability=self.reachability_status,
            relays=tuple(self.relay.relay_bases()) if self.relay else (),
            relaying=self.relay.serving if self.relay else False,
            relayed_peers=tuple(self.relay.relayed_only()) if self.relay else (),
            met_through_relay=tuple(sorted(self.relay.met_through_relay)) if self.relay else (),
            upgraded_to_direct=tuple(self.relay.upgraded()) if self.relay else (),
        )

    def _research_status(self) -> dict:
        if self.research is None:
            return {}
        snap = self.research.snapshot()
        return {"experiment": snap["current"], "finished": tuple(snap["finished"])}

    def _peers_running(self) -> tuple[dict, ...]:
        """What trusted peers announce they are training now (node/running_announcements.py)."""
        if self.announcer is None:
            return ()
        from p2pgolf.node.running_announcements import describe

        names = {b.id: b.name for b in self.options.benches}
        return tuple({**describe(a), "bench": names.get(a.bench, a.bench)} for a in self.announcer.running())

    def _proposer_usage(self) -> dict:
        """Today's use of each external proposer, from the research journal (empty without one)."""
        if self.options.home is None:
            return {}
        from p2pgolf.node.proposers.operator import PROPOSERS_JOURNAL, usage_summary

        return usage_summary(self.options.home.root / "research" / PROPOSERS_JOURNAL)

    async def control(self, request: dict) -> dict:
        """Answer one control-socket request (see node.control)."""
        op = request.get("op")
        if op in ("status", "peers"):
            return {"ok": True, "status": self.status().to_json()}
        if op == "publish":
            records = request.get("records")
            confirm_s = request.get("confirm_s", 3.0)
            if not isinstance(records, list) or not records or not all(isinstance(r, str) for r in records):
                return {"ok": False, "error": "publish needs a non-empty list of hex records"}
            if not isinstance(confirm_s, (int, float)) or not 0 <= confirm_s <= 60:
                return {"ok": False, "error": "confirm_s must be a number of seconds in [0, 60]"}
            results = []
            for n, text in enumerate(records):
                if n >= PUBLISH_UNPACED:
                    # past a burst, within what peers accept from one peer (Limits.records_per_s,
                    # default 50/s): faster, they would refuse the rest and shut this node out
                    await trio.sleep(1.0 / PUBLISH_PACE_PER_S)
                try:
                    signed, verdict, subscribed = await self.publish(bytes.fromhex(text))
                except (ValueError, ProtocolError) as exc:
                    results.append({"error": str(exc)})
                    continue
                results.append({"id": signed.id, "verdict": verdict.value, "subscribed": subscribed})
            if confirm_s > 0 and len(results) == 1 and "id" in results[0]:
                results[0]["peers"] = await self.peers_holding(results[0]["id"], within_s=confirm_s)
            return {"ok": True, "results": results}
        if op == "fetch":
            return await self._control_fetch(request)
        if op == "stop":
            return {"ok": True, "stopping": self.on_stop_request(bool(request.get("abandon", False))), "pid": os.getpid()}
        return {"ok": False, "error": f"unknown op {op!r}; expected status, peers, publish, fetch or stop"}

    async def _control_fetch(self, request: dict) -> dict:
        """{"op": "fetch", "sha": hex, "kind": "artifact", "author": hex | null, "timeout_s": s}
        -> {"ok", "path", "size", "held" (already here), "seconds"}."""
        sha, kind, author = request.get("sha"), request.get("kind", "artifact"), request.get("author")
        timeout_s = request.get("timeout_s", self.options.exchange.fetch_timeout_s)
        if not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= 3600:
            return {"ok": False, "error": "timeout_s must be a number of seconds in (0, 3600]"}
        if author is not None and not isinstance(author, str):
            return {"ok": False, "error": "author must be a public key in hex"}
        started = time.monotonic()
        try:
            held = self.blobs is not None and isinstance(sha, str) and self.blobs.has(sha)
            path = await self.fetch_blob(sha, kind=kind, author=author, timeout_s=float(timeout_s))
        except (BlobError, BlobFetchError) as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "path": str(path), "size": path.stat().st_size, "held": held, "seconds": time.monotonic() - started}

    # --- internals -------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        """Sync with every newly connected peer at once, and with all of them periodically."""
        limiter = trio.CapacityLimiter(self.options.max_parallel_syncs)
        running: set[str] = set()
        last_round = trio.current_time()
        async with trio.open_nursery() as nursery:
            while True:
                connected = set(self.connected_peers())
                self._synced &= connected  # a peer that reconnects is synced again
                self._sync_retry_at = {p: t for p, t in self._sync_retry_at.items() if p in connected}
                due = trio.current_time() - last_round >= self.options.sync_interval_s
                if due:
                    last_round = trio.current_time()
                now = trio.current_time()
                for peer in connected:
                    retry = self._sync_retry_at.get(peer)
                    if retry is not None and now >= retry:
                        del self._sync_retry_at[peer]
                        self._synced.discard(peer)
                    if peer in running or (peer in self._synced and not due):
                        continue
                    running.add(peer)
                    self._synced.add(peer)
                    nursery.start_soon(self._sync_peer, peer, limiter, running)
                with trio.move_on_after(1.0):
                    await self._connected_event.wait()  # a new connection is synced at once
                self._connected_event = trio.Event()

    async def _sync_peer(self, peer: str, limiter: trio.CapacityLimiter, running: set[str]) -> None:
        try:
            async with limiter:
                for bench in sorted(self.bench_ids):
                    report = self._syncing[peer] = SyncReport(peer=peer, bench=bench)
                    try:
                        await sync_with(self.host, peer, bench, self.store, self.admission, report)
                    finally:
                        # what it stored counts even if it failed half-way
                        self.synced_in += report.added
                        del self._syncing[peer]
                    self.syncs += 1
                    self.sync_reports = [*self.sync_reports[-19:], report]
                    if report.fetched:
                        log.info("synced %d records from %s (%s)", report.fetched, peer, report.verdicts)
        except SyncError as exc:
            log.debug("sync with %s failed: %s", peer, exc)
            self._sync_retry_at[peer] = trio.current_time() + SYNC_RETRY_S
        except Exception:  # a peer must never be able to stop the node through sync
            log.exception("sync with %s failed unexpectedly", peer)
            self._sync_retry_at[peer] = trio.current_time() + SYNC_RETRY_S
        finally:
            running.discard(peer)

    async def _ban_loop(self) -> None:
        while True:
            await trio.sleep(5)
            for peer in self.admission.limiter.expired_bans():
                if self.gossip is not None:
                    self.gossip.lift(peer)

    def _ban(self, peer: str) -> None:
        if self.gossip is not None:
            self.gossip.ban(peer)

    async def _run_worker(self) -> None:
        self.worker_state = "running"
        try:
            await self.worker(self)
            self.worker_state = "stopped"
        except Exception as exc:  # the node outlives a failed research loop
            log.exception("the worker failed; the node keeps running as a relay and pool node")
            self.worker_state = f"failed: {type(exc).__name__}: {exc}"[:200]

    def _busy(self, peer: str) -> bool:
        """Whether `peer` is in a sync with us or holds sync or blob streams (the cap spares it)."""
        return peer in self._syncing or self.stream_slots.open.get(peer, 0) > 0

    def _on_connection(self) -> None:
        self._connected_event.set()

    def _on_added(self, record_id: str) -> None:
        self.new_records.set()
        self.new_records = trio.Event()

    def _listen_addrs(self) -> list[str]:
        """The listen addresses, /tcp/0 ones on the port remembered from the last run (when
        `keep_port` and it is free: a port another program took meanwhile means a fresh one).
        ProtocolError if a port given explicitly is taken (SO_REUSEPORT would share it silently)."""
        opts = self.options
        refuse_taken_ports(opts.listen)
        port = load_listen_port(opts.home) if opts.home is not None and opts.keep_port else None
        if port is None:
            return list(opts.listen)
        stable = [with_port(a, port) if listen_port(a) == 0 else a for a in opts.listen]
        try:
            refuse_taken_ports([a for a, b in zip(stable, opts.listen) if a != b])
        except ProtocolError as exc:
            log.warning("%s; listening on a fresh port instead", exc)
            return list(opts.listen)
        return stable

    def _remember_port(self) -> None:
        if self.options.home is None or not self.options.keep_port:
            return
        ports = [int(a.value_for_protocol("tcp")) for a in self.host.get_addrs() if "/tcp/" in str(a)]
        if ports:
            try:
                save_listen_port(self.options.home, ports[0])
            except OSError as exc:
                log.warning("cannot remember the listen port: %s", exc)

    def _remember(self, peer: PeerAddr) -> None:
        if self.options.home is None:
            return
        self._remembered = [peer.addr, *[a for a in self._remembered if a != peer.addr]]
        try:
            self._remembered = save_known_peers(self.options.home, self._remembered, pinned=self.options.bootstrap, established=self._established)
        except OSError as exc:
            log.warning("cannot remember peers: %s", exc)

    async def _close_host(self) -> None:
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            try:
                await self.host.close()
            except Exception:
                log.debug("error while closing the host", exc_info=True)


def _connection_notifee(callback: Callable[[], None]) -> Any:
    """A libp2p notifee that calls `callback` (synchronously, in trio) on every new connection."""
    from p2pgolf.node.connection_notifee import connection_notifee

    return connection_notifee(lambda conn: callback())


def _peer_ids(addrs: tuple[str, ...]) -> frozenset[str]:
    from p2pgolf.node.host import parse_peer_addr

    ids = set()
    for addr in addrs:
        try:
            ids.add(parse_peer_addr(addr).peer_id)
        except ProtocolError:
            pass
    return frozenset(ids)


def _maddr(text: str) -> Any:
    import multiaddr

    return multiaddr.Multiaddr(text)
