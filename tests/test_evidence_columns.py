"""Evidence as columns: each column holds its records' fields in order, extending the columns of
a part of the evidence by the rest gives the columns of the whole, and an estimate from columns
carried through the evidence cache equals one from columns built afresh."""

from __future__ import annotations

import numpy as np

import recordgen as g
from p2pgolf.pool.estimator import estimate
from p2pgolf.pool.evidence import AttestationEvidence, Evidence, result_evidence
from p2pgolf.pool.evidence_cache import EvidenceCache
from p2pgolf.pool.evidence_columns import EvidenceColumns, columns_of, with_columns
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust_weights import static_status

ME = "aa" * 32


def _evidence(n: int = 40, seed: int = 0) -> Evidence:
    """Results on three classes with shared measurements (artifact, seed), parents that come
    after their children, and attestations of results, some of results not in the evidence."""
    rng = np.random.default_rng(seed)
    results = []
    for i in range(n):
        parents = (f"{int(rng.integers(n)):064x}",) if i and rng.random() < 0.6 else ()
        results.append(result_evidence(f"{i:064x}", base="smoke-tiny", diff={"matrix_lr": round(0.001 + int(rng.integers(12)) * 1e-4, 6)}, author=f"{int(rng.integers(1, 6)):064x}",
                                       hw=("cpu:a:x1", "cuda:b:x1", "mps:c:x1")[int(rng.integers(3))], val_bpb=2.0 + rng.normal(0, 0.01), budget_s=60.0, parents=parents,
                                       created_ms=i, seed=int(rng.integers(3)), artifact=("ab" * 32 if rng.random() < 0.3 else None), train_tokens=int(rng.integers(0, 10**6))))
    attestations = tuple(AttestationEvidence(f"{i:064x}"[::-1], f"{int(rng.integers(n + 5)):064x}", f"{int(rng.integers(1, 6)):064x}", ("reeval", "reproduce")[i % 2],
                                             ("cpu:a:x1", "gpu:d:x2")[i % 2], 2.0, i) for i in range(n // 3))
    return Evidence(tuple(results), attestations)


def _same(a: EvidenceColumns, b: EvidenceColumns) -> None:
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if name in ("parent_child", "parent_of", "memo") or name.startswith("_"):
            continue  # pairs may come in another order; lookups and what users derived are private
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), name
        else:
            assert x == y, name
    assert sorted(zip(a.parent_child.tolist(), a.parent_of.tolist())) == sorted(zip(b.parent_child.tolist(), b.parent_of.tolist()))


def test_each_column_holds_its_records_fields_in_order():
    ev = _evidence()
    cols = EvidenceColumns.of(ev)
    assert cols.candidates == sorted({r.candidate for r in ev.results}) and cols.classes == sorted({r.hw for r in ev.results} | {a.hw for a in ev.attestations})
    for i, r in enumerate(ev.results):
        assert (cols.r_id[i], cols.candidates[cols.r_cand[i]], cols.authors[cols.r_author[i]], cols.classes[cols.r_hw[i]]) == (r.record_id, r.candidate, r.author, r.hw)
        assert (cols.r_y[i], cols.r_budget[i], cols.r_created[i], cols.r_tokens[i]) == (r.val_bpb, r.budget_s, r.created_ms, r.train_tokens)
        assert sorted(ev.results[j].record_id for j in cols.parent_of[cols.parent_child == i]) == sorted(p for p in r.parents if any(q.record_id == p for q in ev.results))
    by_measure = {}
    for i, r in enumerate(ev.results):
        assert (cols.r_measure[i] == -1) == (r.artifact is None)
        if r.artifact:
            assert by_measure.setdefault((r.artifact, r.seed), cols.r_measure[i]) == cols.r_measure[i]
    assert len(set(by_measure.values())) == len(by_measure)
    assert [cols.r_id[i] for i in np.argsort(cols.r_rank)] == sorted(cols.r_id)
    for q, a in enumerate(ev.attestations):
        subject = cols.a_subject[q]
        assert (ev.results[subject].record_id == a.subject) if subject >= 0 else all(r.record_id != a.subject for r in ev.results)
        assert (cols.a_id[q], cols.authors[cols.a_author[q]], cols.classes[cols.a_hw[q]], bool(cols.a_reeval[q]), cols.a_y[q]) == (a.record_id, a.author, a.hw, a.method == "reeval", a.val_bpb)


def test_extending_the_columns_of_a_part_gives_the_columns_of_the_whole():
    ev = _evidence(60, seed=1)
    whole = EvidenceColumns.of(ev)
    for cut_r, cut_a in ((0, 0), (10, 3), (45, 20), (60, 20)):
        part = EvidenceColumns.of(Evidence(ev.results[:cut_r], ev.attestations[:cut_a]))
        _same(part.extend(ev.results[cut_r:], ev.attestations[cut_a:]), whole)


def test_an_estimate_from_the_caches_carried_columns_equals_one_from_fresh_columns(tmp_path):
    status = static_status(g.identity(3).public_hex)
    with PoolStore(tmp_path / "pool.sqlite") as store:
        records = g.batch(12, who=g.identity(3))
        store.add_many([r.raw for r in records[:6]])
        cache = EvidenceCache(store, g.SMOKE)
        estimate(cache.evidence(), status, records[0].record.hw.key)  # builds the columns once
        store.add_many([r.raw for r in records[6:]] + [g.attestation(g.identity(4), records[7]).raw])
        carried = cache.evidence()
        assert "_columns" in carried.__dict__  # extended, not built again
        fresh = Evidence(carried.results, carried.attestations)
        _same(columns_of(carried), columns_of(fresh))
        a, b = estimate(carried, status, records[0].record.hw.key), estimate(fresh, status, records[0].record.hw.key)
        assert a.candidates == b.candidates and np.array_equal(a.mean, b.mean) and np.array_equal(a.sd, b.sd) and a.info == b.info


def test_what_an_estimate_reuses_from_one_extension_never_reaches_another():
    def result(i: int, diff: float):
        return result_evidence(f"{i:064x}", base="smoke-tiny", diff={"matrix_lr": diff}, author="cc" * 32, hw="cpu:a:x1", val_bpb=2.0, budget_s=60.0, created_ms=i)

    status = static_status(ME)
    head = (result(1, 0.001), result(2, 0.002))
    base = EvidenceColumns.of(Evidence(head))
    for i in (3, 4):  # two extensions of the same columns by a record at the same position, of the same candidate
        part = Evidence(head + (result(i, 0.003),))
        carried = estimate(with_columns(part, base.extend(part.results[2:], ())), status, "cpu:a:x1")
        fresh = estimate(Evidence(part.results), status, "cpu:a:x1")
        assert carried.info == fresh.info and f"{i:064x}" in carried.info[part.results[2].candidate].record_ids
