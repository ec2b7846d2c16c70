"""Gather a home's pool, trust store and identity into a report (node/views/report.py)."""

from __future__ import annotations

from pathlib import Path

from p2pgolf.node.home import Home
from p2pgolf.node.views.pool_rows import read_rows
from p2pgolf.node.views.report import Written, write_report
from p2pgolf.node.views.report_data import Entry, ReportData, build


def make_report(home: Home, bench, out_dir: Path) -> tuple[Written, ReportData]:
    """Read the pool of `home` for `bench`, compute, draw, and write the report into `out_dir`."""
    from p2pgolf.node.views.figures import figures, _pyplot
    from p2pgolf.pool.trust import TrustStore

    _pyplot()  # fail before the work if matplotlib is missing
    rows = read_rows(home.pool_db, bench=bench.id)
    with TrustStore(home.pool_db) as trust:
        own = trust.own_key or _key_of(home)
        labels = trust.labels()
        statuses = {key: trust.status(key) for key in {r.author for r in rows}}
        unknown_weight = trust.unknown_weight
    status = lambda key: statuses.get(key, "unknown")  # noqa: E731
    estimator = lambda hw: _estimated(home, bench, hw, status, labels, own, unknown_weight)  # noqa: E731
    data = build(rows, own_key=own, status=status, labels=labels, estimator=estimator)
    notes = [(("you" if r.author == own else labels.get(r.author) or r.author[:8]), r.id, r.note) for r in sorted(rows, key=lambda r: -r.created_ms) if r.note][:20]
    written = write_report(out_dir, data, figures(data), title=f"p2pgolf report: {bench.name}", notes=notes)
    return written, data


def _key_of(home: Home) -> str | None:
    from p2pgolf.protocol.identity import load_identity

    try:
        return load_identity(home.key_file).public_hex
    except Exception:  # no identity yet: a pool imported into a bare home
        return None


def _estimated(home: Home, bench, hw: str, status, labels, own, unknown_weight: float) -> list[Entry] | None:
    from p2pgolf.pool.estimator import estimate
    from p2pgolf.pool.evidence import from_store
    from p2pgolf.pool.store import PoolStore
    from p2pgolf.pool.trust_weights import TrustPolicy

    with PoolStore(home.pool_db) as store:
        evidence = from_store(store, bench.id)
    if not evidence.results:
        return None
    post = estimate(evidence, status, hw, budget_s=bench.budget_s, policy=TrustPolicy(unknown_weight=unknown_weight))
    label = lambda a: "you" if a == own else labels.get(a) or a[:8]  # noqa: E731
    return [Entry(e.candidate, e.mean, e.sd, e.n_results, tuple(sorted({label(a) for a in post.info[e.candidate].authors})), dict(post.info[e.candidate].diff)) for e in post.ranked()]
