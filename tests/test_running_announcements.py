"""Running announcements (protocol/running.py, node/running_announcements.py, SPEC.md 14):
the wire vector, refusals, the board's bounds and trust rule, the gate's per-peer and
per-author limits, and two real nodes where B sees what A trains and B's loop avoids it."""

from __future__ import annotations

import hashlib
import json
import re
import threading

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import recordgen as g
from fake_runs import Finished, finished
from conftest import REPO_ROOT
from records_factory import signed_result
from test_protocol_vectors import spec_encode

from p2pgolf.node.limits import Limits, PeerLimiter
from p2pgolf.node.running_announcements import (
    ENDED,
    FULL,
    HELD,
    MAX_BLOCKING,
    OLDER,
    REPLACED,
    UNTRUSTED,
    RunningBoard,
    RunningGate,
)
from p2pgolf.protocol import canonical
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.running import (
    EVAL_SLACK_MS,
    WITHDRAWAL_GRACE_MS,
    NotUsable,
    RunningAnnouncement,
    decode_announcement,
    running_topic,
    sign_announcement,
)
from p2pgolf.protocol.signing import MAX_RECORD_BYTES, decode_record

SPEC = (REPO_ROOT / "protocol" / "SPEC.md").read_text()
SMOKE = benchmark("smoke")
BUDGETS = {SMOKE.id: SMOKE.budget_s}
T0 = g.T0
HW = g.CPU.key


def spec_vector() -> dict:
    block = re.search(r"## 14\. Running announcements.*?```json\n(.*?)\n```", SPEC, re.S)
    assert block, "SPEC.md section 14 has no test vector"
    return json.loads(block.group(1))


def ann(who: Identity, *, diff: dict | None = None, created: int = T0, started: int | None = None, expires: int | None = None, hw: str = HW, bench: str = SMOKE.id) -> RunningAnnouncement:
    started = created if started is None else started
    return RunningAnnouncement(bench, who.public_hex, hw, "smoke-tiny", diff or {}, "byte256", created, started, started + 90_000 if expires is None else expires)


def signed(a: RunningAnnouncement, who: Identity) -> bytes:
    return sign_announcement(a, who.signing_key, budget_s=BUDGETS.get(a.bench, 86400.0)).raw


# --- the wire ---------------------------------------------------------------------------


def test_spec_vector_is_reproduced_by_an_encoder_written_from_the_spec_and_accepted():
    v = spec_vector()
    body = spec_encode(v["body_map"])
    assert body.hex() == v["body_hex"]
    aid = hashlib.sha256(b"p2pgolf/running/v1\n" + body).digest()
    assert aid.hex() == v["id"]
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["seed_hex"]))
    assert key.sign(aid).hex() == v["sig_hex"]
    assert spec_encode({"body": body, "sig": bytes.fromhex(v["sig_hex"])}).hex() == v["envelope_hex"]
    # our implementation: the same bytes from the same announcement, and it verifies
    me = Identity.from_seed(bytes.fromhex(v["seed_hex"]))
    m = v["body_map"]
    ours = RunningAnnouncement(m["bench"], m["author"], m["hw"], m["base"], m["diff"], m["tokenizer"], m["created_ms"], m["started_ms"], m["expires_ms"])
    assert sign_announcement(ours, me.signing_key, budget_s=v["budget_s"]).raw.hex() == v["envelope_hex"]
    got = decode_announcement(bytes.fromhex(v["envelope_hex"]), budgets={v["benchmark_id"]: v["budget_s"]}, now_ms=v["accept_at_ms"])
    assert got.id == v["id"] and got.announcement.candidate == v["candidate_id"] and got.announcement == ours
    assert running_topic(v["benchmark_id"]) == v["topic"]


def test_forged_malformed_and_record_envelopes_are_refused_naming_the_rule():
    me, other = g.identity(1), g.identity(2)
    good = signed(ann(me), me)
    forged = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(ProtocolError, match="sig: signature does not verify") as exc:
        decode_announcement(forged, budgets=BUDGETS, now_ms=T0)
    assert not isinstance(exc.value, NotUsable)  # forged: counted against the sender
    # someone else's key named as author
    wire = ann(other).to_wire()
    body = canonical.encode(wire)
    with pytest.raises(ProtocolError, match="sig"):
        decode_announcement(canonical.encode({"body": body, "sig": me.signing_key.sign(hashlib.sha256(b"p2pgolf/running/v1\n" + body).digest()).signature}), budgets=BUDGETS, now_ms=T0)
    with pytest.raises(ProtocolError, match="kind 'result' is not an announcement"):
        decode_announcement(signed_result(me, created_ms=T0).raw, budgets=BUDGETS, now_ms=T0)
    with pytest.raises(ProtocolError, match="unknown record kind 'running'"):
        decode_record(good, now_ms=T0)  # never a record
    with pytest.raises(ProtocolError, match=f"at most {MAX_RECORD_BYTES} bytes"):
        decode_announcement(b"\x00" * (MAX_RECORD_BYTES + 1), budgets=BUDGETS, now_ms=T0)
    with pytest.raises(ProtocolError, match="hw: 'gpu:X:x1' is not a hardware class key"):
        sign_announcement(ann(me, hw="gpu:X:x1"), me.signing_key, budget_s=SMOKE.budget_s)
    extra = {**ann(me).to_wire(), "note": "hi"}
    with pytest.raises(ProtocolError, match="unknown field"):
        from p2pgolf.protocol.running import parse_announcement

        parse_announcement(extra, budgets=BUDGETS, now_ms=T0)
    too_long = ann(me, expires=T0 + int(SMOKE.budget_s * 1000) + EVAL_SLACK_MS + 1)
    with pytest.raises(ProtocolError, match="expires_ms: a window of .* is longer than the benchmark's budget allows") as exc:
        sign_announcement(too_long, me.signing_key, budget_s=SMOKE.budget_s)
    assert not isinstance(exc.value, NotUsable)


def test_expired_and_foreign_benchmark_announcements_are_not_usable_but_not_invalid():
    me = g.identity(1)
    raw = signed(ann(me, expires=T0 + 1000), me)
    assert decode_announcement(raw, budgets=BUDGETS, now_ms=T0 + 1000 + WITHDRAWAL_GRACE_MS).id  # a withdrawal's grace
    with pytest.raises(NotUsable, match="expires_ms: ended 61 s ago"):
        decode_announcement(raw, budgets=BUDGETS, now_ms=T0 + 1000 + WITHDRAWAL_GRACE_MS + 1000)
    golf = benchmark("parameter-golf/sp1024-10min")
    other = sign_announcement(ann(me, bench=golf.id), me.signing_key, budget_s=golf.budget_s).raw
    with pytest.raises(NotUsable, match="not served by this node"):
        decode_announcement(other, budgets=BUDGETS, now_ms=T0)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600), st.integers(min_value=0, max_value=446), st.integers(min_value=0, max_value=255))
def test_any_bytes_or_any_one_byte_changed_give_only_protocol_errors(noise, at, value):
    me = g.identity(1)
    good = bytearray(signed(ann(me), me))
    good[at % len(good)] = value
    for raw in (noise, bytes(good)):
        try:
            decode_announcement(raw, budgets=BUDGETS, now_ms=T0)
        except ProtocolError:
            pass


# --- the board: whose count, how many, how long -------------------------------------------


class Clock:
    def __init__(self, t: int = T0) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def _board(trusted: set[str], clock: Clock, **kw) -> RunningBoard:
    return RunningBoard(lambda key: key in trusted, BUDGETS, clock_ms=clock, **kw)


def test_board_holds_only_trusted_keys_newest_first_and_a_withdrawal_ends_a_run_for_good():
    pinned, stranger = g.identity(1), g.identity(2)
    clock = Clock()
    board = _board({pinned.public_hex}, clock)
    first = ann(pinned, diff={"num_layers": 3})
    assert board.offer(ann(stranger)) == UNTRUSTED
    assert board.offer(first) == HELD
    assert board.running_ids(SMOKE.id, HW) == [first.candidate]
    assert board.running_ids(SMOKE.id, "cuda:H100:x8") == []  # another class: not a duplicate
    clock.t += 1000
    second = ann(pinned, diff={"num_layers": 4}, created=clock.t)
    assert board.offer(second) == REPLACED and board.running_ids(SMOKE.id, HW) == [second.candidate]
    assert board.offer(first) == OLDER
    clock.t += 1000
    assert board.offer(second.withdrawal(clock.t)) == ENDED
    assert board.running_ids(SMOKE.id, HW) == [] and board.live() == []
    assert board.offer(second) == OLDER  # a replay of the run after its withdrawal stays ended


def test_board_drops_expired_runs_and_bounds_what_it_holds():
    keys = [g.identity(n) for n in range(1, 8)]
    clock = Clock()
    board = _board({k.public_hex for k in keys}, clock, max_held=4)
    for i, k in enumerate(keys[:4]):
        assert board.offer(ann(k, diff={"num_layers": 2 + i}, expires=T0 + 10_000)) == HELD
    assert board.offer(ann(keys[4])) == FULL  # four live ones held: nothing more
    clock.t = T0 + 10_000
    assert board.live() == []  # expired at expires_ms
    assert board.offer(ann(keys[4], created=clock.t)) == HELD  # an ended entry made room
    clock.t += 10**9
    board.sweep()
    assert board._held.keys() == set()  # forgotten once nothing older could arrive


def test_at_most_max_blocking_candidates_are_withheld_from_one_choice():
    keys = [g.identity(n) for n in range(1, MAX_BLOCKING + 6)]
    clock = Clock()
    board = _board({k.public_hex for k in keys}, clock)
    for i, k in enumerate(keys):
        board.offer(ann(k, diff={"matrix_lr": 0.01 + 0.001 * i}, created=T0 + i))
    ids = board.running_ids(SMOKE.id, HW)
    assert len(ids) == MAX_BLOCKING
    assert ids[0] == ann(keys[-1], diff={"matrix_lr": 0.01 + 0.001 * (len(keys) - 1)}, created=T0 + len(keys) - 1).candidate  # newest first
    assert board.running_ids(SMOKE.id, HW, exclude_author=keys[-1].public_hex)[0] != ids[0]


# --- the gate: per peer, per author --------------------------------------------------------


def test_gate_counts_invalid_announcements_against_the_peer_and_shuts_it_out():
    me = g.identity(1)
    clock = Clock()
    limiter = PeerLimiter(Limits(invalid_before_ban=3))
    banned: list[str] = []
    gate = RunningGate(_board({me.public_hex}, clock), BUDGETS, limiter=limiter, on_ban=banned.append, clock_ms=clock)
    good = signed(ann(me), me)
    assert gate.admit(good, "peerA", SMOKE.id) is True
    forged = good[:-1] + bytes([good[-1] ^ 1])
    assert [gate.admit(forged, "peerB", SMOKE.id) for _ in range(3)] == [False] * 3
    assert banned == ["peerB"] and limiter.invalid_count("peerA") == 0
    assert gate.admit(good, "peerA", benchmark("parameter-golf/sp1024-10min").id) is False  # on another benchmark's topic
    clock.t = T0 + 10**7
    assert gate.admit(good, "peerC", SMOKE.id) is False and limiter.invalid_count("peerC") == 0  # expired: dropped, not held against it
    assert gate.counts == {"held": 1, "invalid": 3, "wrong-topic": 1, "not-usable": 1}


def test_an_author_over_its_rate_is_neither_used_nor_forwarded():
    stranger = g.identity(3)
    clock = Clock()
    gate = RunningGate(_board(set(), clock), BUDGETS, clock=lambda: 0.0, clock_ms=clock)
    raws = [signed(ann(stranger, created=T0 + i), stranger) for i in range(12)]
    verdicts = [gate.admit(raw, f"peer{i}", SMOKE.id) for i, raw in enumerate(raws)]
    assert verdicts == [True] * 10 + [False] * 2  # a stranger's valid ones are forwarded, within its rate
    assert gate.counts == {"untrusted": 10, "author-rate": 2}


# --- two real nodes -----------------------------------------------------------------------


def _runner(trained: list, gate: threading.Event | None = None):
    def run(bench_name, base, diff, *, seed, out_dir, cancel, **kw):
        trained.append((base, dict(diff)))
        if gate is not None:
            while not gate.wait(0.05):
                if cancel.is_set():
                    return Finished({"status": "abandoned"})
        return finished(bench_name, base, diff, seed)

    return run


def _loop(root, who, store, trust, runner, announcer=None, publish=None):
    from p2pgolf.node.research_loop import LoopSettings, ResearchLoop

    async def keep(raw: bytes) -> None:
        store.add(raw)

    # 20 experiments planned: the first ones explore (no top-two re-measurement of the leader)
    settings = LoopSettings(bench_name="smoke", journal_dir=root / "research", runs_dir=root / "runs", default_base="smoke-tiny", hw_key=HW, max_experiments=20)
    return ResearchLoop(who, store, trust, publish or keep, settings, runner=runner, announcer=announcer)


def _pool_of(who: Identity, path):
    """A pool with an established incumbent and neighbours, all by `who` (trusted)."""
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore

    store = PoolStore(path)
    trust = TrustStore(store)
    trust.set_own(who.public_hex)
    for i, (diff, bpb) in enumerate([({}, 2.50), ({"num_layers": 3}, 2.44), ({"matrix_lr": 0.03}, 2.47), ({"mlp_mult": 3.0}, 2.48)]):
        for seed in range(3):
            store.add_signed(g.result(who, i=10 * i + seed, diff=diff, val_bpb=bpb + 0.002 * seed))
    return store, trust


@pytest.mark.timeout(60)
def test_b_sees_what_a_trains_and_its_loop_does_not_choose_it(tmp_path):
    from p2pgolf.node.host import parse_peer_addr, peer_info
    from p2pgolf.node.node import Node, NodeOptions
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore

    a_id, b_id = g.identity(21), g.identity(22)
    store_b, trust_b = _pool_of(b_id, tmp_path / "b.sqlite")
    # What B's loop trains with nobody announcing anything (same pool, same seed: same choice).
    alone_store, alone_trust = _pool_of(b_id, tmp_path / "b-alone.sqlite")
    alone_trained: list = []
    end = trio.run(_loop(tmp_path / "alone", b_id, alone_store, alone_trust, _runner(alone_trained)).step)
    alone_store.close()
    (alone_choice,) = alone_trained
    assert end["status"] == "ok"
    operator = json.loads((tmp_path / "alone" / "research" / "journal.jsonl").read_text().splitlines()[0])["operator"]
    assert operator != "replicate"  # a new candidate: what a peer's run makes redundant here

    trust_b.pin(a_id.public_hex, label="my other machine")
    store_a = PoolStore(tmp_path / "a.sqlite")
    trust_a = TrustStore(store_a)
    trust_a.set_own(a_id.public_hex)
    options = dict(benches=(SMOKE,), nat=False, peer_exchange=False, sync_interval_s=3600.0)
    from p2pgolf.node.home import Home

    b_home = Home(tmp_path / "bh")
    b_home.root.mkdir()
    a = Node(a_id, store_a, trust_a, NodeOptions(**options))
    b = Node(b_id, store_b, trust_b, NodeOptions(**options, control_socket=b_home.control_socket))
    topic = running_topic(SMOKE.id)

    async def until(what: str, check, seconds: float = 15.0) -> None:
        with trio.fail_after(seconds):
            while not check():
                await trio.sleep(0.05)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            await b.host.connect(peer_info(parse_peer_addr(a.addrs[0])))
            await until("a mesh on the running topic", lambda: any(p.to_base58() == b.peer_id for p in a.gossip.router.mesh.get(topic, ())))

            # 1. A's own loop announces its run as it starts and withdraws it when it ends.
            release = threading.Event()
            a_trained: list = []
            # (its record is kept at A only: B's pool must stay the one B chose from alone)
            a_loop = _loop(tmp_path / "a", a_id, store_a, trust_a, _runner(a_trained, release), announcer=a.announcer)
            done = trio.Event()

            async def a_step() -> None:
                await a_loop.step()
                done.set()

            nursery.start_soon(a_step)
            await until("B to see A's run while A trains it", lambda: b.announcer.running() and a_trained)
            (seen,) = b.announcer.running()
            from p2pgolf.protocol.candidates import candidate_id

            assert seen.author == a_id.public_hex and seen.candidate == candidate_id(*a_trained[0], "byte256") and seen.hw == HW
            (row,) = b.status().peers_running
            assert row["peer_id"] == a.peer_id and row["candidate"] == seen.candidate and row["bench"] == "smoke"
            release.set()
            await done.wait()
            await until("A's withdrawal at B", lambda: not b.announcer.running())

            # 2. A announces the very candidate B would choose alone: B's loop chooses another.
            base, diff = alone_choice
            await a.announcer.announce(SMOKE.id, HW, base, diff, "byte256", 60.0)
            await until("B to see A's announcement", lambda: b.announcer.running())

            # `p2pgolf status` at B says who runs what (over B's control socket)
            from click.testing import CliRunner

            from p2pgolf.node.cli import cli

            shown = await trio.to_thread.run_sync(lambda: CliRunner().invoke(cli, ["--home", str(b_home.root), "status"]))
            assert shown.exit_code == 0, shown.output
            flat = " ".join(shown.output.split())
            assert f"peer running {a.peer_id[:20]} on {HW}: {candidate_id(base, diff, 'byte256')[:12]} = {base}" in flat, shown.output

            b_trained: list = []
            b_loop = _loop(tmp_path / "b", b_id, store_b, trust_b, _runner(b_trained), announcer=b.announcer)
            assert b_loop.peers_running() == [candidate_id(base, diff, "byte256")]
            assert store_b.count() == 12  # the pool B chose from alone: only the announcement differs
            await b_loop.step()
            assert b_trained and b_trained[0] != alone_choice
            a.stop()
            b.stop()

    trio.run(main)
    store_a.close()
    store_b.close()


def test_the_gossip_screen_reads_an_announcements_author_like_a_records(tmp_path):
    """node/gossip.py screens every message of a subscribed topic with Admission.screen: an
    announcement by a stranger spends the budget all peers share, a pinned key's never does."""
    from p2pgolf.node.limits import PUSHED, Admission, claimed_author
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore

    pinned, stranger = g.identity(4), g.identity(5)
    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        trust.pin(pinned.public_hex)
        gate = Admission(store, trust, {SMOKE.id}, Limits(unknown_pushed_per_s=1.0, unknown_pushed_burst=2), own_key=g.identity(6).public_hex)
        strangers = [signed(ann(stranger, created=T0 + i), stranger) for i in range(4)]
        assert claimed_author(strangers[0]) == stranger.public_hex
        assert len(gate.screen(strangers, "peer1", path=PUSHED)) == 2  # the shared budget's burst
        trusted = [signed(ann(pinned, created=T0 + i), pinned) for i in range(4)]
        assert len(gate.screen(trusted, "peer1", path=PUSHED)) == 4


class _FailingAnnouncer:
    """An announcer whose network is gone: every publish fails."""

    def __init__(self) -> None:
        self.board = RunningBoard(lambda key: True, BUDGETS)

    async def announce(self, *args):
        raise ProtocolError("the pubsub service is not running")

    async def withdraw(self, signed):
        raise AssertionError("nothing was announced")


class _RecordingAnnouncer:
    def __init__(self) -> None:
        self.board = RunningBoard(lambda key: True, BUDGETS)
        self.calls: list[str] = []

    async def announce(self, bench, hw, base, diff, tokenizer, window_s):
        self.calls.append("announce")
        return object()

    async def withdraw(self, signed):
        await trio.sleep(0)  # a real publish yields: it must still run when the loop is cancelled
        self.calls.append("withdraw")


def test_an_announcement_that_cannot_be_sent_costs_the_run_nothing(tmp_path):
    me = g.identity(7)
    store, trust = _pool_of(me, tmp_path / "pool.sqlite")
    with store:
        trained: list = []
        end = trio.run(_loop(tmp_path, me, store, trust, _runner(trained), announcer=_FailingAnnouncer()).step)
        assert end["status"] == "ok" and len(trained) == 1


def test_a_cancelled_run_is_still_withdrawn(tmp_path):
    me = g.identity(8)
    store, trust = _pool_of(me, tmp_path / "pool.sqlite")
    announcer = _RecordingAnnouncer()
    trained: list = []
    never = threading.Event()

    async def main() -> None:
        loop = _loop(tmp_path, me, store, trust, _runner(trained, never), announcer=announcer)
        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(loop.step)
                while not trained:
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()

    with store:
        trio.run(main)
    assert announcer.calls == ["announce", "withdraw"]


def test_a_key_pinned_while_running_counts_within_the_trust_refresh(tmp_path):
    # the board asks the admission gate's trusted keys, as RunningAnnouncer.for_node wires it
    from p2pgolf.node.limits import TRUST_REFRESH_S, Admission, Limits
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust import TrustStore

    own, friend = g.identity(9), g.identity(10)
    now = [0.0]
    with PoolStore(tmp_path / "pool.sqlite") as store:
        trust = TrustStore(store)
        admission = Admission(store, trust, {"b"}, Limits(), own_key=own.public_hex, clock=lambda: now[0])
        keys = lambda author: author in admission.trusted_keys()  # noqa: E731
        assert keys(own.public_hex) and not keys(friend.public_hex)
        trust.pin(friend.public_hex)
        assert not keys(friend.public_hex)  # the set is re-read at most every TRUST_REFRESH_S
        now[0] += TRUST_REFRESH_S
        assert keys(friend.public_hex)
        trust.block(friend.public_hex)
        now[0] += TRUST_REFRESH_S
        assert not keys(friend.public_hex)
        store.close()  # a store that cannot be read keeps the last set
        now[0] += TRUST_REFRESH_S
        assert keys(own.public_hex) and not keys(friend.public_hex)
