"""`Admission.admit_decoded_in_thread` (a large sync stores off the event loop): the same verdicts,
counts, caps and bans as `admit_decoded`, with SQLite written in a worker thread and `on_added`
called on the loop's own thread. Real pool, trust store and signed records."""

from __future__ import annotations

import threading

import trio

from records_factory import signed_result

from p2pgolf.node.limits import Admission, Limits, Verdict, verify_all
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity

SMOKE = benchmark("smoke").id
PEER = "12D3KooWPeerUnderTest"


def _gate(path):
    store = PoolStore(path)
    trust = TrustStore(store)
    own = Identity.generate()
    trust.set_own(own.public_hex)
    limits = Limits(unknown_key_cap=3, invalid_before_ban=2, ban_s=60.0)
    return Admission(store, trust, {SMOKE}, limits, own_key=own.public_hex), store


def _batch():
    """A stranger over its cap, a duplicate, two invalid envelopes and a pinned-free second key."""
    stranger, other = Identity.generate(), Identity.generate()
    raws = [signed_result(stranger, seed=i).raw for i in range(5)] + [signed_result(other, seed=0).raw] * 2
    raws += [b"not a record", raws[0][:-1] + bytes([raws[0][-1] ^ 1])]
    return verify_all(raws)


def test_storing_in_a_thread_gives_the_verdicts_counts_and_bans_of_storing_on_the_loop(tmp_path):
    decoded = _batch()
    direct, store_a = _gate(tmp_path / "a.sqlite")
    expected = direct.admit_decoded(decoded, PEER)
    threaded, store_b = _gate(tmp_path / "b.sqlite")
    callers: list[threading.Thread] = []
    threaded.on_added = lambda rid: callers.append(threading.current_thread())

    async def main():
        return await threaded.admit_decoded_in_thread(decoded, PEER)

    got = trio.run(main)
    assert got == expected
    assert got[Verdict.ADDED] == 4 and got[Verdict.OVER_CAP] == 2 and got[Verdict.DUPLICATE] == 1 and got[Verdict.INVALID] == 2
    assert threaded.counts == direct.counts
    assert threaded.limiter.is_banned(PEER) and direct.limiter.is_banned(PEER)  # two invalid records: the ban of the loop path
    assert store_b.count() == store_a.count() == 4
    assert callers == [threading.main_thread()] * 4  # on_added (it wakes trio tasks) never runs in the worker
    assert threaded.quota().unknown_records == direct.quota().unknown_records == 4
    store_a.close(), store_b.close()
