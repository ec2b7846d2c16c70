"""Three `p2pgolf join` processes on loopback: two train an approved script, share every result
(each pool holds both nodes' script results) and move its hyperparameters; the third, which
never had the script, fetches it from them, is told about it, and does not run it (it relays
only, and the script stays unapproved there).

Why the move is certain enough to assert: each searcher plans PLANNED experiments, so at its
second (n=1, a quarter of the way) the bandit never re-measures its leader (top-two sampling's
beta is 0 in the first quarter), and between replicating the defaults and a script mutation the
meta level picks the mutation unless its 10% exploration floor or the yield noise says
otherwise (about 6% a node, measured by the formulas in pool/bandit.py). The searchers' keys
are fixed, and with them the rng of that choice (seeded by key and experiment number), so the
choice does not depend on the scores or the timing; if a change to the bandit's rng use moves
it, the chance that neither searcher mutates is still well under 1%."""

from __future__ import annotations

import json

import pytest

from p2pgolf.node.research_loop import JOURNAL_NAME
from p2pgolf.node.scripts import ScriptStore
from p2pgolf.node.home import Home
from node_procs import NodeProc, free_port, make_home, stop_all, wait_until
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.candidates import script_base
from p2pgolf.protocol.identity import KEY_FILE_HEADER, Identity
from script_helpers import SCRIPTS

pytestmark = pytest.mark.timeout(400)
BENCH = "smoke@3s"
EXPERIMENTS = 2  # waited for; the defaults, then a move
PLANNED = 4  # --experiments: the horizon the bandit plans for


def _searcher_home(root, name: str, seed: bytes) -> tuple[Home, Identity]:
    """make_home with a fixed key (the key seeds the bandit's rng)."""
    home = Home(root / name)
    home.root.mkdir(parents=True, mode=0o700)
    identity = Identity.from_seed(seed)
    home.key_file.write_text(f"{KEY_FILE_HEADER}\n{identity.seed.hex()}\n")
    home.key_file.chmod(0o600)
    with TrustStore(home.pool_db) as trust:
        trust.set_own(identity.public_hex)
    return home, identity


def _ends(home) -> list[dict]:
    path = home.root / "research" / JOURNAL_NAME
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e.get("event") == "end"]


def test_two_nodes_share_a_script_s_results_and_a_third_fetches_it_without_running_it(tmp_path):
    homes = [_searcher_home(tmp_path, f"n{i}", bytes([i + 1]) * 32) for i in range(2)] + [make_home(tmp_path, "n2")]
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
            node.start([n.addr for n in nodes[:k]], *(["--experiments", str(PLANNED)] if node.train else []))
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
        assert [e["status"] for e in _ends(node.home)][:EXPERIMENTS] == ["ok"] * EXPERIMENTS
    defaults = ScriptStore(homes[0][0]).vocabulary(sha).defaults()
    moved = []
    for node in nodes[:2]:  # every experiment trained the script, none the built-in trainer
        starts = [json.loads(line) for line in (node.home.root / "research" / JOURNAL_NAME).read_text().splitlines() if '"start"' in line]
        assert {e["base"] for e in starts} == {script_base(sha)}
        assert starts[0]["diff"] == {}  # first the script's own defaults
        second = starts[1]
        if second["operator"] in ("mutate", "recombine"):
            assert second["diff"] and all(name in defaults and value != defaults[name] for name, value in second["diff"].items()), second
            moved.append(second["diff"])
    assert moved, "neither searcher moved a hyperparameter of the script in its second experiment"
    third = ScriptStore(nodes[2].home).entry(sha)
    assert third.origin == "fetched" and not third.approved
    assert not (nodes[2].home.root / "research" / JOURNAL_NAME).exists()  # it ran nothing
    err = (nodes[2].home.root / "join.err").read_text()
    assert f"new script in use: {sha[:12]}" in err and "will not run here until you read it" in err
