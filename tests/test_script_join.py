"""Three `p2pgolf join` processes on loopback: two train an approved script and share every result
(each pool holds both nodes' script results; which moves the bandit makes after the defaults is
its draw, so which operators ran is not asserted here: tests/test_script_research.py shows the
search deterministically, benchmarks/script_search.py measures it); the third, which never had
the script, fetches it from them, is told about it, and does not run it (it relays only, and
the script stays unapproved there)."""

from __future__ import annotations

import json

import pytest

from node.research_loop import JOURNAL_NAME
from node.scripts import ScriptStore
from node_procs import NodeProc, free_port, make_home, stop_all, wait_until
from pool.store import PoolStore
from pool.trust import TrustStore
from protocol.benchmarks import benchmark
from protocol.candidates import script_base
from script_helpers import SCRIPTS

pytestmark = pytest.mark.timeout(400)
BENCH = "smoke@3s"
EXPERIMENTS = 2


def _ends(home) -> list[dict]:
    path = home.root / "research" / JOURNAL_NAME
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e.get("event") == "end"]


def test_two_nodes_share_a_script_s_results_and_a_third_fetches_it_without_running_it(tmp_path):
    homes = [make_home(tmp_path, f"n{i}") for i in range(3)]
    sha = None
    for home, _ in homes[:2]:
        store = ScriptStore(home)
        sha = store.add_path(SCRIPTS / "tiny_golf.py")[0].sha
        store.approve(sha)
    for home, me in homes:
        with TrustStore(home.pool_db) as trust:
            for _, other in homes:
                if other.public_hex != me.public_hex:
                    trust.pin(other.public_hex)
    nodes = [NodeProc(h, i, port=free_port(), bench=BENCH, train=(k < 2)) for k, (h, i) in enumerate(homes)]
    try:
        for k, node in enumerate(nodes):
            node.start([n.addr for n in nodes[:k]], *(["--experiments", str(EXPERIMENTS)] if node.train else []))
        for node in nodes:
            node.wait_ready(60)
        wait_until(lambda: all(len(_ends(n.home)) >= EXPERIMENTS for n in nodes[:2]), 300, interval=0.5, what="both searchers' experiments")
        authors = {n.identity.public_hex for n in nodes[:2]}

        def script_results(node):
            with PoolStore(node.home.pool_db) as store:
                return [r for r in store.query(bench=benchmark(BENCH).id, kind="result") if r.record.base == script_base(sha)]

        wait_until(lambda: all({r.author for r in script_results(n)} == authors for n in nodes), 60, interval=0.5, what="every pool to hold both searchers' results")
        wait_until(lambda: ScriptStore(nodes[2].home).has(sha), 60, interval=0.5, what="the third node to fetch the script")
    finally:
        stop_all(nodes)
    for node in nodes[:2]:
        assert [e["status"] for e in _ends(node.home)] == ["ok"] * EXPERIMENTS
    for node in nodes[:2]:  # every experiment trained the script, none the built-in trainer
        starts = [json.loads(line) for line in (node.home.root / "research" / JOURNAL_NAME).read_text().splitlines() if '"start"' in line]
        assert [e["base"] for e in starts] == [script_base(sha)] * EXPERIMENTS
    third = ScriptStore(nodes[2].home).entry(sha)
    assert third.origin == "fetched" and not third.approved
    assert not (nodes[2].home.root / "research" / JOURNAL_NAME).exists()  # it ran nothing
    err = (nodes[2].home.root / "join.err").read_text()
    assert f"new script in use: {sha[:12]}" in err and "will not run here until you read it" in err
