"""The admission gate and per-peer limits, on a real pool and trust store."""

from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from records_factory import signed_result

from p2pgolf.node.limits import Admission, Limits, PeerLimiter, TokenBucket, Verdict
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity

SMOKE = benchmark("smoke").id
PEER = "12D3KooWPeerUnderTest"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gate(tmp_path):
    store = PoolStore(tmp_path / "pool.sqlite")
    trust = TrustStore(store)
    own = Identity.generate()
    trust.set_own(own.public_hex)
    admission = Admission(store, trust, {SMOKE}, Limits(unknown_key_cap=3, records_burst=50, records_per_s=1.0), own_key=own.public_hex)
    yield admission, store, trust, own
    store.close()


def test_unknown_author_is_capped_but_own_and_pinned_authors_never_are(gate):
    admission, store, trust, own = gate
    stranger, friend = Identity.generate(), Identity.generate()
    trust.pin(friend.public_hex, "friend")
    verdicts = [admission.admit(signed_result(stranger, seed=i).raw, PEER) for i in range(5)]
    assert verdicts == [Verdict.ADDED] * 3 + [Verdict.OVER_CAP] * 2
    assert store.count(author=stranger.public_hex) == 3
    for who in (own, friend):
        assert {admission.admit(signed_result(who, seed=i).raw, PEER) for i in range(6)} == {Verdict.ADDED}
        assert store.count(author=who.public_hex) == 6


def test_blocked_author_and_other_benchmark_are_dropped_and_duplicates_are_not_stored_twice(gate):
    admission, store, trust, _ = gate
    villain, someone = Identity.generate(), Identity.generate()
    trust.block(villain.public_hex, "spam")
    assert admission.admit(signed_result(villain).raw, PEER) == Verdict.BLOCKED
    assert admission.admit(signed_result(someone, bench="parameter-golf/sp1024-10min").raw, PEER) == Verdict.WRONG_BENCH
    rec = signed_result(someone)
    assert admission.admit(rec.raw, PEER) == Verdict.ADDED
    assert admission.admit(rec.raw, "12D3KooWAnotherPeer") == Verdict.DUPLICATE
    assert store.count() == 1
    assert admission.counts[Verdict.BLOCKED] == 1 and admission.counts[Verdict.DUPLICATE] == 1


def test_a_peer_beyond_its_burst_is_rate_limited_while_others_are_not(gate):
    admission, store, _, _ = gate
    authors = [Identity.generate() for _ in range(20)]
    raws = [signed_result(authors[i % 20], seed=i).raw for i in range(60)]
    verdicts = [admission.admit(raw, PEER) for raw in raws[:55]]
    assert verdicts.count(Verdict.RATE_LIMITED) == 5  # burst of 50
    assert admission.admit(raws[55], "12D3KooWSomeoneElse") == Verdict.ADDED


def test_invalid_records_count_against_their_sender_until_it_is_banned(tmp_path):
    store = PoolStore(tmp_path / "pool.sqlite")
    clock = Clock()
    banned = []
    admission = Admission(store, TrustStore(store), {SMOKE}, Limits(invalid_before_ban=3, ban_s=60.0), own_key="0" * 64, limiter=PeerLimiter(Limits(invalid_before_ban=3, ban_s=60.0), clock))
    admission.on_ban = banned.append
    good = signed_result(Identity.generate())
    for i in range(3):
        assert admission.admit(bytes([i]) * 9, PEER) == Verdict.INVALID
    assert banned == [PEER]
    assert admission.admit(good.raw, PEER) == Verdict.BANNED  # shut out while banned
    clock.now += 61
    assert admission.limiter.expired_bans() == [PEER]
    assert admission.admit(good.raw, PEER) == Verdict.ADDED


def test_batch_admission_verifies_signatures_and_applies_trust_like_single_admission(gate):
    admission, store, trust, _ = gate
    villain, stranger = Identity.generate(), Identity.generate()
    trust.block(villain.public_hex)
    good = [signed_result(stranger, seed=i).raw for i in range(4)]
    forged = bytearray(signed_result(Identity.generate(), seed=99).raw)
    forged[-1] ^= 1  # last byte of the signature
    tally = admission.admit_batch([*good, signed_result(villain).raw, bytes(forged), b"junk"], PEER)
    assert {v.value: n for v, n in tally.items() if n} == {"added": 3, "over-cap": 1, "blocked": 1, "invalid": 2}
    assert store.count() == 3


def test_token_bucket_refills_at_its_rate_up_to_its_burst():
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 1.0
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 100.0
    assert sum(bucket.take() for _ in range(10)) == 3


@pytest.mark.parametrize("field,value", [("unknown_key_cap", 0), ("records_per_s", -1.0), ("records_burst", 2.5), ("ban_s", True)])
def test_bad_limits_are_refused_naming_the_limit(field, value):
    with pytest.raises(ProtocolError, match=f"limits.{field}"):
        Limits(**{field: value})


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_never_raise_out_of_the_gate_and_are_never_stored(gate, data):
    admission, store, _, _ = gate
    verdict = admission.admit(data, None)  # no peer: no rate limit or ban hides the decoder
    assert verdict in (Verdict.INVALID, Verdict.WRONG_BENCH)
    tally = admission.admit_batch([data], None)
    assert tally[Verdict.ADDED] == 0 and tally[Verdict.DUPLICATE] == 0
    assert store.count() == 0
