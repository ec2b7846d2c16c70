"""Script search: three `p2pgolf join` nodes searching one script's hyperparameters together
against one node alone, with the same number of experiments per node.

Every node holds and approves the same small script (tests/scripts/tiny_golf.py by default, a
tiny byte-level model in the challenge's conventions), pins its peers (a group of friends), and
runs `join --experiments N` on the smoke benchmark (CPU). The collective's best is the best
val_bpb among the records in node 0's pool when all three are done (what any of them can build
on and reproduce); the isolated best is the best of the lone node's own N. Baseline measured in
the same run: the script at its defaults (each node's first experiment).

    python benchmarks/script_search.py --experiments 6 [--json]
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from node_procs import NodeProc, free_port, make_home, stop_all, wait_until  # noqa: E402

from p2pgolf.node.research_loop import JOURNAL_NAME  # noqa: E402
from p2pgolf.node.scripts import ScriptStore  # noqa: E402
from p2pgolf.pool.store import PoolStore  # noqa: E402
from p2pgolf.pool.trust import TrustStore  # noqa: E402
from p2pgolf.protocol.benchmarks import benchmark  # noqa: E402
from p2pgolf.protocol.candidates import script_base  # noqa: E402


def _setup(root: Path, name: str, script: Path):
    home, identity = make_home(root, name)
    store = ScriptStore(home)
    entry, _ = store.add_path(script)
    store.approve(entry.sha)
    return home, identity, entry.sha


def _ends(home) -> list[dict]:
    path = home.root / "research" / JOURNAL_NAME
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e.get("event") == "end"]


def _done(home, n: int) -> bool:
    return len(_ends(home)) >= n


def _results(home, bench_id: str, sha: str, author: str | None = None) -> list[dict]:
    with PoolStore(home.pool_db) as store:
        out = []
        for r in store.query(bench=bench_id, kind="result"):
            if r.record.base == script_base(sha) and (author is None or r.author == author):
                out.append({"author": r.author, "bpb": float(r.record.metrics.val_bpb), "diff": dict(r.record.diff), "created_ms": r.created_ms})
        return out


def run_group(root: Path, size: int, experiments: int, bench: str, script: Path, timeout_s: float) -> dict:
    nodes, ids, sha = [], [], None
    for i in range(size):
        home, identity, sha = _setup(root, f"n{i}", script)
        nodes.append(NodeProc(home, identity, port=free_port(), bench=bench, train=True))
        ids.append(identity)
    for node in nodes:  # friends: every node pins the others
        with TrustStore(node.home.pool_db) as trust:
            for other in ids:
                if other.public_hex != node.identity.public_hex:
                    trust.pin(other.public_hex)
    started = time.monotonic()
    try:
        for i, node in enumerate(nodes):
            node.start([n.addr for n in nodes[:i]], "--experiments", str(experiments))
        for node in nodes:
            node.wait_ready(60)
        wait_until(lambda: all(_done(n.home, experiments) for n in nodes), timeout_s, interval=1.0, what="every node's experiments")
        time.sleep(3.0)  # the last records travel
    finally:
        stop_all(nodes)
    bench_id = benchmark(bench).id
    pooled = _results(nodes[0].home, bench_id, sha)
    own = [_results(n.home, bench_id, sha, n.identity.public_hex) for n in nodes]
    defaults = [r["bpb"] for rs in own for r in rs if not r["diff"]]
    return {
        "best_bpb": min(r["bpb"] for r in pooled),
        "own_best_bpb": [min((r["bpb"] for r in rs), default=float("nan")) for rs in own],
        "experiments_run": sum(len(_ends(n.home)) for n in nodes),  # results, attestations (replicates) and failures
        "failed": sum(e["status"] != "ok" for n in nodes for e in _ends(n.home)),
        "pool_results": len(pooled),
        "default_bpb": statistics.median(defaults) if defaults else float("nan"),
        "seconds": time.monotonic() - started,
    }


@click.command()
@click.option("--experiments", type=click.IntRange(min=2), default=6, show_default=True, help="Experiments per node.")
@click.option("--bench", default="smoke@4s", show_default=True, help="Benchmark (its budget is the script's MAX_WALLCLOCK_SECONDS).")
@click.option("--script", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=ROOT / "tests" / "scripts" / "tiny_golf.py", show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=900.0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def main(experiments: int, bench: str, script: Path, timeout_s: float, as_json: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="p2pgolf-script-search-") as tmp:
        root = Path(tmp)
        collective = run_group(root / "collective", 3, experiments, bench, script, timeout_s)
        isolated = run_group(root / "isolated", 1, experiments, bench, script, timeout_s)
    doc = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {platform.python_version()}",
        "bench": bench,
        "script": script.name,
        "experiments_per_node": experiments,
        "collective_best_bpb": collective["best_bpb"],
        "isolated_best_bpb": isolated["best_bpb"],
        "collective_own_best_bpb": collective["own_best_bpb"],
        "default_bpb": collective["default_bpb"],
        "collective_experiments": collective["experiments_run"],
        "isolated_experiments": isolated["experiments_run"],
        "failed_experiments": {"collective": collective["failed"], "isolated": isolated["failed"]},
        "ratio_collective_over_isolated": collective["best_bpb"] / isolated["best_bpb"],
        "seconds": {"collective": collective["seconds"], "isolated": isolated["seconds"]},
    }
    if as_json:
        click.echo(json.dumps(doc))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"script search on {bench} ({script.name}), {experiments} experiments per node; {doc['machine']}", title_justify="left")
    for col in ("setting", "nodes", "experiments", "best val_bpb", "vs defaults"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    base = doc["default_bpb"]
    table.add_row("script defaults (baseline)", "-", "-", f"{base:.4f}", "1.000")
    table.add_row("one node alone", "1", str(isolated["experiments_run"]), f"{isolated['best_bpb']:.4f}", f"{isolated['best_bpb'] / base:.3f}")
    table.add_row("collective (pool of node 0)", "3", str(collective["experiments_run"]), f"{collective['best_bpb']:.4f}", f"{collective['best_bpb'] / base:.3f}")
    Console().print(table)
    click.echo(f"collective / isolated best val_bpb: {doc['ratio_collective_over_isolated']:.4f} (below 1: the collective found a better setting)")
    click.echo(f"collective nodes' own best: {', '.join(f'{b:.4f}' for b in collective['own_best_bpb'])}")


if __name__ == "__main__":
    main()
