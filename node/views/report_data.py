"""What `p2pgolf report` shows, computed from pool rows (node/views/pool_rows.py): plain values,
no plotting, no HTML.

- `best_over_time`: per hardware class, the running best val_bpb of the collective and of each
  author, as step curves over created_ms.
- `leaderboards`: per hardware class with at least MIN_CLASS_RESULTS results, candidates by
  estimated val_bpb with an uncertainty: for this node's class the real estimator
  (pool/estimator.py, trust-weighted, hardware transfer) when the pool is small enough to fit it
  quickly (ESTIMATOR_MAX_RECORDS), otherwise and for other classes the mean of the class's
  measurements with its standard error (replicate noise pooled over the class).
- `lineage`: the ancestry of the leading candidates: who measured each step, which steps were
  recombinations (two parents), which were verified (an attestation by another key agreeing).
- `operators`: share of experiments by proposal operator over time, and each operator's yield
  (share of its results that beat its author's best so far on that class).
- `peers`: per author, records, trust status and how often other keys' attestations of its
  results agreed with its claim.
All of it is linear (or n log n) in the pool, so 100,000 records take seconds.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pgolf.node.views.pool_rows import OPERATOR_ORDER, Row

MIN_CLASS_RESULTS = 5  # a class with fewer results gets no leaderboard of its own
ESTIMATOR_MAX_RECORDS = 3000  # the real estimator above this takes longer than the report's budget
LEADERBOARD_ROWS = 15
LINEAGE_LEADERS = 3
LINEAGE_MAX_NODES = 40
TIME_BINS = 12
DEFAULT_NOISE_SD = 0.01
AGREE_SDS = 3.0  # an attestation within this many noise sds (at least AGREE_MIN) agrees
AGREE_MIN = 0.005


@dataclass(frozen=True)
class Curve:
    label: str  # "collective" or the author's label
    author: str  # "" for the collective
    times_ms: tuple[int, ...]
    best: tuple[float, ...]


@dataclass(frozen=True)
class Entry:
    candidate: str
    estimate: float
    sd: float
    n: int
    authors: tuple[str, ...]  # labels
    diff: dict


@dataclass(frozen=True)
class Leaderboard:
    hw: str
    method: str  # how the estimates were made, for the reader
    entries: tuple[Entry, ...]
    results: int


@dataclass(frozen=True)
class Step:
    record: str
    candidate: str
    author: str  # label
    val_bpb: float
    parents: tuple[str, ...]  # record ids (those in the graph)
    recombination: bool
    verified: bool
    leader: bool
    depth: int


@dataclass(frozen=True)
class OperatorStats:
    bins_ms: tuple[int, ...]  # left edges
    shares: dict[str, tuple[float, ...]]  # operator -> share of experiments in each bin
    counts: dict[str, int]
    yields: dict[str, float | None]  # None where the operator makes no result to judge


@dataclass(frozen=True)
class PeerRow:
    author: str  # full key
    label: str
    status: str
    records: int
    results: int
    best: float
    checked: int  # attestations of its results by other keys
    agreed: int


@dataclass
class ReportData:
    own_key: str | None
    own_hw: str | None
    records: int
    classes: dict[str, int] = field(default_factory=dict)  # hw -> results
    curves: dict[str, list[Curve]] = field(default_factory=dict)
    leaderboards: list[Leaderboard] = field(default_factory=list)
    lineage: list[Step] = field(default_factory=list)
    operators: OperatorStats | None = None
    peers: list[PeerRow] = field(default_factory=list)


def build(rows: Sequence[Row], *, own_key: str | None, status: Callable[[str], str], labels: dict[str, str], estimator: Callable[[str], list[Entry] | None] | None = None) -> ReportData:
    """Everything the report shows. `status(key)` and `labels` come from the trust store;
    `estimator(hw)` returns the real estimator's leaderboard for `hw` (or None to fall back)."""
    label = _labeller(own_key, labels)
    results = [r for r in rows if r.kind == "result"]
    by_id = {r.id: r for r in results}
    own_hw = _own_hw(results, own_key)
    data = ReportData(own_key=own_key, own_hw=own_hw, records=len(rows))
    per_class: dict[str, list[Row]] = defaultdict(list)
    for r in results:
        per_class[r.hw].append(r)
    order = sorted(per_class, key=lambda h: (h != own_hw, -len(per_class[h]), h))
    data.classes = {h: len(per_class[h]) for h in order}
    repro = _reproductions(rows)
    measured = {h: _measurements(per_class[h], by_id, repro) for h in order}
    noise = {h: _noise_sd(measured[h]) for h in order}
    for h in order:
        data.curves[h] = _curves(per_class[h], label)
    for h in order:
        if len(per_class[h]) < MIN_CLASS_RESULTS and h != own_hw:
            continue
        entries = estimator(h) if estimator is not None and h == own_hw and len(rows) <= ESTIMATOR_MAX_RECORDS else None
        method = "the node's estimator (trust-weighted, with transfer from other classes)"
        if entries is None:
            entries = _empirical(per_class[h], noise[h], label, measured[h], LEADERBOARD_ROWS)
            method = f"mean of this class's measurements, standard error from its replicate noise (sd {noise[h]:.4f})"
        data.leaderboards.append(Leaderboard(h, method, tuple(entries[:LEADERBOARD_ROWS]), len(per_class[h])))
    target = data.leaderboards[0] if data.leaderboards else None
    if target is not None:
        data.lineage = _lineage(target, per_class[target.hw], rows, by_id, noise, label)
    data.operators = _operators(rows, by_id)
    data.peers = _peers(rows, by_id, noise, status, label)
    return data


def short(key: str) -> str:
    return key[:8]


def _labeller(own_key, labels):
    def label(key: str) -> str:
        if key == own_key:
            return "you"
        return labels.get(key) or short(key)

    return label


def _own_hw(results: Sequence[Row], own_key: str | None) -> str | None:
    own = [r.hw for r in results if r.author == own_key]
    if own:
        return Counter(own).most_common(1)[0][0]
    return Counter(r.hw for r in results).most_common(1)[0][0] if results else None


def _curves(results: Sequence[Row], label) -> list[Curve]:
    ordered = sorted(results, key=_when)
    curves = [_running_best("collective", "", ordered)]
    by_author: dict[str, list[Row]] = defaultdict(list)
    for r in ordered:
        by_author[r.author].append(r)
    for author in sorted(by_author, key=lambda a: min(x.val_bpb for x in by_author[a])):
        curves.append(_running_best(label(author), author, by_author[author]))
    return curves


def _when(r: Row) -> tuple[int, str]:
    return r.created_ms, r.id


def _running_best(name: str, author: str, ordered: Sequence[Row]) -> Curve:
    times, best, low = [], [], math.inf
    for r in ordered:
        if r.val_bpb < low:  # only the steps: a 100,000-point curve has a few dozen of them
            low = r.val_bpb
            times.append(r.created_ms)
            best.append(low)
    if ordered:
        times.append(ordered[-1].created_ms)
        best.append(low)
    return Curve(name, author, tuple(times), tuple(best))


def _measurements(results: Sequence[Row], by_id: Mapping[str, Any], repro: dict[str, list[Row]]) -> dict[str, list[float]]:
    """candidate -> its measurements on this class (results and reproductions of them)."""
    hw = results[0].hw if results else ""
    values: dict[str, list[float]] = defaultdict(list)
    for r in results:
        values[r.candidate].append(r.val_bpb)
    for a in repro.get(hw, ()):
        subject = by_id.get(a.subject)
        if subject is not None:
            values[subject if isinstance(subject, str) else subject.candidate].append(a.val_bpb)
    return values


def _reproductions(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """hw -> the `reproduce` attestations measured there."""
    found: dict[str, list[Row]] = defaultdict(list)
    for a in rows:
        if a.kind == "attestation" and a.method == "reproduce":
            found[a.hw].append(a)
    return found


def _noise_sd(values: dict[str, list[float]]) -> float:
    ss, dof = 0.0, 0
    for vals in values.values():
        if len(vals) >= 2:
            m = sum(vals) / len(vals)
            ss += sum((v - m) ** 2 for v in vals)
            dof += len(vals) - 1
    return math.sqrt(ss / dof) if dof >= 2 else DEFAULT_NOISE_SD


def class_leaderboard(results: Sequence[Row], rows: Sequence[Row], label: Callable[[str], str], candidate_of: Mapping[str, str] | None = None) -> list[Entry]:
    """Candidates measured on one class (`results`, all of that class), best first: the mean
    of their measurements there and its standard error from the class's replicate noise.
    `candidate_of` maps result record ids (of any class) to their candidate, for the
    reproductions among `rows` whose subject is not itself in `rows`."""
    by_id: Mapping[str, Any] = candidate_of if candidate_of is not None else {r.id: r for r in rows if r.kind == "result"}
    values = _measurements(results, by_id, _reproductions(rows))
    return _empirical(results, _noise_sd(values), label, values)


def _empirical(results, noise: float, label, values: dict[str, list[float]], limit: int | None = None) -> list[Entry]:
    """Best first by mean + sd; with `limit`, only the first `limit` are built."""
    authors: dict[str, set[str]] = defaultdict(set)
    diffs: dict[str, dict] = {}
    for r in results:
        authors[r.candidate].add(r.author)
        diffs.setdefault(r.candidate, r.diff)
    scored = sorted((sum(v) / len(v) + noise / math.sqrt(len(v)), c) for c, v in values.items() if c in diffs)
    entries = []
    for _, c in scored[:limit]:
        v = values[c]
        entries.append(Entry(c, sum(v) / len(v), noise / math.sqrt(len(v)), len(v), tuple(sorted({label(a) for a in authors[c]})), diffs[c]))
    return entries


def _verified(rows: Sequence[Row], by_id: dict[str, Row], noise: dict[str, float]) -> set[str]:
    """Record ids another key's attestation confirmed (within the agreement tolerance)."""
    ok = set()
    for a in rows:
        if a.kind != "attestation" or a.subject not in by_id:
            continue
        subject = by_id[a.subject]
        if a.author != subject.author and abs(a.val_bpb - subject.val_bpb) <= _tolerance(noise.get(subject.hw, DEFAULT_NOISE_SD)):
            ok.add(subject.id)
    return ok


def _tolerance(noise_sd: float) -> float:
    return max(AGREE_SDS * noise_sd, AGREE_MIN)


def _lineage(board: Leaderboard, results, rows, by_id, noise, label) -> list[Step]:
    """The ancestry of the board's leading candidates (their best record each), breadth first."""
    best_record: dict[str, Row] = {}
    # a leader the estimator ranks by transfer may have been measured on other classes only
    for r in sorted(by_id.values(), key=lambda r: (r.hw == board.hw, -r.val_bpb)):
        best_record[r.candidate] = r  # this class's best run wins, else the best elsewhere
    leaders = [best_record[e.candidate] for e in board.entries[:LINEAGE_LEADERS] if e.candidate in best_record]
    verified = _verified(rows, by_id, noise)
    seen: dict[str, int] = {}
    todo = [(r.id, 0) for r in leaders]
    while todo and len(seen) < LINEAGE_MAX_NODES:
        rid, depth = todo.pop(0)
        if rid in seen or rid not in by_id:
            continue
        seen[rid] = depth
        todo.extend((p, depth + 1) for p in by_id[rid].parents)
    deepest = max(seen.values(), default=0)
    leader_ids = {r.id for r in leaders}
    steps = []
    for rid, depth in seen.items():
        r = by_id[rid]
        steps.append(Step(rid, r.candidate, label(r.author), r.val_bpb, tuple(p for p in r.parents if p in seen), len(r.parents) >= 2,
                          rid in verified, rid in leader_ids, deepest - depth))  # fmt: skip
    return sorted(steps, key=lambda s: (s.depth, s.val_bpb))


def _operators(rows: Sequence[Row], by_id: dict[str, Row]) -> OperatorStats:
    if not rows:
        return OperatorStats((), {}, {}, {})
    start, end = min(r.created_ms for r in rows), max(r.created_ms for r in rows)
    width = max((end - start) / TIME_BINS, 1.0)
    totals = [0] * TIME_BINS
    per_op: dict[str, list[int]] = defaultdict(lambda: [0] * TIME_BINS)
    counts: Counter = Counter()
    won: Counter = Counter()
    judged: Counter = Counter()
    best: dict[tuple[str, str], float] = {}
    for r in sorted(rows, key=_when):
        op = r.operator
        b = min(int((r.created_ms - start) / width), TIME_BINS - 1)
        totals[b] += 1
        per_op[op][b] += 1
        counts[op] += 1
        if r.kind == "result":
            key = (r.author, r.hw)
            judged[op] += 1
            if key in best and r.val_bpb < best[key]:
                won[op] += 1
            best[key] = min(best.get(key, math.inf), r.val_bpb)
    ops = sorted(per_op, key=lambda o: (OPERATOR_ORDER.index(o) if o in OPERATOR_ORDER else 99, o))
    shares = {o: tuple(per_op[o][i] / totals[i] if totals[i] else 0.0 for i in range(TIME_BINS)) for o in ops}
    yields = {o: (won[o] / judged[o] if judged[o] and o not in ("baseline", "imported") else None) for o in ops}
    return OperatorStats(tuple(int(start + i * width) for i in range(TIME_BINS)), shares, {o: counts[o] for o in ops}, yields)


def _peers(rows, by_id, noise, status, label) -> list[PeerRow]:
    records: Counter = Counter()
    results: Counter = Counter()
    best: dict[str, float] = {}
    checked: Counter = Counter()
    agreed: Counter = Counter()
    for r in rows:
        records[r.author] += 1
        if r.kind == "result":
            results[r.author] += 1
            best[r.author] = min(best.get(r.author, math.inf), r.val_bpb)
        elif r.subject in by_id and by_id[r.subject].author != r.author:
            subject = by_id[r.subject]
            checked[subject.author] += 1
            agreed[subject.author] += abs(r.val_bpb - subject.val_bpb) <= _tolerance(noise.get(subject.hw, DEFAULT_NOISE_SD))
    return sorted(
        (PeerRow(a, label(a), status(a), records[a], results[a], best.get(a, math.nan), checked[a], agreed[a]) for a in records),
        key=lambda p: (-p.records, p.author),
    )
