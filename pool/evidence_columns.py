"""Evidence as columns: one numpy array per field over all records, for the estimator.

The estimator reads ~100,000 records per decision; looping over them in Python cost seconds.
`EvidenceColumns.of(evidence)` turns the results and attestations into arrays once, with the
strings (candidate, author, hardware class, measurement) interned as integer codes and the
record ids a result cites or an attestation names resolved to positions. Codes of candidates
and classes follow the strings' sorted order, so sorting by code is sorting by id.

Columns depend only on the records, never on trust, so `pool/evidence_cache.py` keeps them
with the evidence it caches and `extend`s them with the records that arrive, instead of
building them again for every decision.

Guarantee (tests/test_evidence_columns.py): every column holds, at position i, the field of
the i-th result (or attestation) of the evidence it was built from, and extending the columns
of some evidence by more records gives the columns of the whole.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from p2pgolf.pool.evidence import AttestationEvidence, Evidence, ResultEvidence

KINDS = ("result", "reeval", "reproduce")  # observation kinds, by code


@dataclass(frozen=True)
class EvidenceColumns:
    """Columns of one Evidence's results (`r_*`) and attestations (`a_*`)."""

    candidates: list[str]  # candidate ids, sorted: code -> id
    authors: list[str]  # author keys: code -> key
    classes: list[str]  # hardware class keys, sorted: code -> key
    r_id: list[str]
    r_rank: np.ndarray  # each result's place in record id order
    r_cand: np.ndarray
    r_author: np.ndarray
    r_hw: np.ndarray
    r_y: np.ndarray
    r_budget: np.ndarray
    r_created: np.ndarray  # int64
    r_tokens: np.ndarray  # float64, train_tokens
    r_degraded: np.ndarray  # bool
    r_measure: np.ndarray  # code of (artifact, seed), the measurement; -1 without an artifact
    parent_child: np.ndarray  # (child, parent) result positions of each cited parent that is a result
    parent_of: np.ndarray
    a_id: list[str]
    a_subject: np.ndarray  # the subject's result position; -1 if it is not a result here
    a_author: np.ndarray
    a_hw: np.ndarray
    a_reeval: np.ndarray  # bool: a re-evaluation (else a reproduction)
    a_y: np.ndarray
    _position: dict[str, int] = field(repr=False)  # result id -> position
    _author_code: dict[str, int] = field(repr=False)
    _measure_code: dict[tuple[str, int], int] = field(repr=False)
    _unresolved: list[tuple[int, str]] = field(repr=False)  # (result position, parent id) not a result (yet)
    _unresolved_subjects: list[tuple[int, str]] = field(repr=False)  # (attestation position, subject id)
    _sorted_ids: list[str] = field(repr=False)  # r_id sorted (equal ids in position order)
    # What a user of the columns derived from their records and may reuse (the estimator's
    # values per candidate): name -> dict, never keyed by codes (codes move). Extended columns
    # get a copy, so what one extension learns never reaches another.
    memo: dict[str, dict] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, evidence: Evidence) -> "EvidenceColumns":
        return _EMPTY.extend(evidence.results, evidence.attestations)

    def extend(self, results: Sequence[ResultEvidence], attestations: Sequence[AttestationEvidence]) -> "EvidenceColumns":
        """The columns of this evidence with `results` and `attestations` appended (in order)."""
        n0, m0 = len(self.r_id), len(self.a_id)
        new_cands = {r.candidate for r in results} - set(self.candidates)
        new_classes = ({r.hw for r in results} | {a.hw for a in attestations}) - set(self.classes)
        candidates, cand_remap = _merge_sorted(self.candidates, new_cands)
        classes, class_remap = _merge_sorted(self.classes, new_classes)
        cand_code = {c: i for i, c in enumerate(candidates)} if new_cands or not n0 else None
        hw_code = {h: i for i, h in enumerate(classes)}
        author_code = dict(self._author_code)
        authors = list(self.authors)
        for key in [r.author for r in results] + [a.author for a in attestations]:
            if key not in author_code:
                author_code[key] = len(authors)
                authors.append(key)
        if cand_code is None:
            cand_code = {c: i for i, c in enumerate(candidates)}
        measure_code = dict(self._measure_code)
        measures = np.fromiter((measure_code.setdefault((r.artifact, r.seed), len(measure_code)) if r.artifact else -1 for r in results), np.intp, len(results))
        position = dict(self._position)
        r_id = self.r_id + [r.record_id for r in results]
        for j, r in enumerate(results):
            position[r.record_id] = n0 + j
        # parents cited by the new results, and earlier ones that now resolve
        child, parent, unresolved = [], [], []
        pending = [(j, (p,)) for j, p in self._unresolved] + [(n0 + j, r.parents) for j, r in enumerate(results) if r.parents]
        for j, ps in pending:
            for p in ps:
                q = position.get(p)
                if q is None:
                    unresolved.append((j, p))
                else:
                    child.append(j), parent.append(q)
        subjects = np.concatenate([self.a_subject, np.full(len(attestations), -1, dtype=np.intp)])
        unresolved_subjects = []
        for q, s in self._unresolved_subjects + [(m0 + i, a.subject) for i, a in enumerate(attestations)]:
            j = position.get(s)
            if j is None:
                unresolved_subjects.append((q, s))
            else:
                subjects[q] = j
        n = len(results)
        return EvidenceColumns(
            candidates=candidates,
            authors=authors,
            classes=classes,
            r_id=r_id,
            r_rank=_ranks(self.r_rank, self._sorted_ids, [r.record_id for r in results]) if n0 else _first_ranks(r_id),
            r_cand=np.concatenate([cand_remap[self.r_cand], np.fromiter((cand_code[r.candidate] for r in results), np.intp, n)]),
            r_author=np.concatenate([self.r_author, np.fromiter((author_code[r.author] for r in results), np.intp, n)]),
            r_hw=np.concatenate([class_remap[self.r_hw], np.fromiter((hw_code[r.hw] for r in results), np.intp, n)]),
            r_y=np.concatenate([self.r_y, np.fromiter((r.val_bpb for r in results), float, n)]),
            r_budget=np.concatenate([self.r_budget, np.fromiter((r.budget_s for r in results), float, n)]),
            r_created=np.concatenate([self.r_created, np.fromiter((r.created_ms for r in results), np.int64, n)]),
            r_tokens=np.concatenate([self.r_tokens, np.fromiter((float(r.train_tokens) for r in results), float, n)]),
            r_degraded=np.concatenate([self.r_degraded, np.fromiter((r.degraded for r in results), bool, n)]),
            r_measure=np.concatenate([self.r_measure, measures]),
            parent_child=np.concatenate([self.parent_child, np.asarray(child, dtype=np.intp)]),
            parent_of=np.concatenate([self.parent_of, np.asarray(parent, dtype=np.intp)]),
            a_id=self.a_id + [a.record_id for a in attestations],
            a_subject=subjects,
            a_author=np.concatenate([self.a_author, np.fromiter((author_code[a.author] for a in attestations), np.intp, len(attestations))]),
            a_hw=np.concatenate([class_remap[self.a_hw], np.fromiter((hw_code[a.hw] for a in attestations), np.intp, len(attestations))]),
            a_reeval=np.concatenate([self.a_reeval, np.fromiter((a.method == "reeval" for a in attestations), bool, len(attestations))]),
            a_y=np.concatenate([self.a_y, np.fromiter((a.val_bpb for a in attestations), float, len(attestations))]),
            _position=position,
            _author_code=author_code,
            _measure_code=measure_code,
            _unresolved=unresolved,
            _unresolved_subjects=unresolved_subjects,
            _sorted_ids=_sorted_with(self._sorted_ids, [r.record_id for r in results]) if n0 else sorted(r_id),
            memo={name: dict(values) for name, values in self.memo.items()},
        )

    def position(self, record_id: str) -> int | None:
        """The position of result `record_id`; None if it is not one of the results."""
        return self._position.get(record_id)

    def code_of_class(self, hw: str) -> int:
        """The code of class `hw`; -1 if no record was measured on it."""
        i = int(np.searchsorted(self.classes, hw)) if self.classes else 0
        return i if i < len(self.classes) and self.classes[i] == hw else -1


def _merge_sorted(have: list[str], new: set[str]) -> tuple[list[str], np.ndarray]:
    """`have` (sorted) with `new` merged in, sorted; and the map from old codes to new ones."""
    if not new:
        return have, np.arange(len(have), dtype=np.intp)
    merged = sorted(set(have) | new)
    code = {c: i for i, c in enumerate(merged)}
    return merged, np.fromiter((code[c] for c in have), np.intp, len(have))


def _first_ranks(ids: list[str]) -> np.ndarray:
    order = sorted(range(len(ids)), key=ids.__getitem__)
    rank = np.empty(len(ids), dtype=np.intp)
    rank[order] = np.arange(len(ids))
    return rank


def _ranks(ranks: np.ndarray, sorted_ids: list[str], new: list[str]) -> np.ndarray:
    """The ranks of the ids behind `ranks` (`sorted_ids` in order) with `new` appended: each
    new id goes after the equal ones already there, and an old rank moves up by the new ids
    placed before it. A few bisections instead of sorting 10^5 ids again."""
    if not new:
        return ranks
    order = sorted(range(len(new)), key=new.__getitem__)  # stable: equal new ids keep their order
    slots = np.fromiter((bisect.bisect_right(sorted_ids, new[k]) for k in order), np.intp, len(new))  # nondecreasing
    moved = ranks + np.searchsorted(slots, ranks, side="right")
    fresh = np.empty(len(new), dtype=np.intp)
    fresh[order] = slots + np.arange(len(new))
    return np.concatenate([moved, fresh])


def _sorted_with(sorted_ids: list[str], new: list[str]) -> list[str]:
    out = list(sorted_ids)
    for i in sorted(new):
        bisect.insort_right(out, i)
    return out


def _empty() -> EvidenceColumns:
    i, f = np.zeros(0, dtype=np.intp), np.zeros(0)
    return EvidenceColumns([], [], [], [], i, i, i, i, f, f, np.zeros(0, dtype=np.int64), f, np.zeros(0, dtype=bool), i, i, i, [], i, i, i, np.zeros(0, dtype=bool), f, {}, {}, {}, [], [], [], {})


_EMPTY = _empty()


def columns_of(evidence: Evidence) -> EvidenceColumns:
    """The columns of `evidence`: those it carries (pool/evidence_cache.py attaches them), else
    built now and kept on it (Evidence is immutable, so they stay valid as long as it lives)."""
    cols = evidence.__dict__.get("_columns")
    if cols is None or len(cols.r_id) != len(evidence.results) or len(cols.a_id) != len(evidence.attestations):
        cols = EvidenceColumns.of(evidence)
        with_columns(evidence, cols)
    return cols


def with_columns(evidence: Evidence, cols: EvidenceColumns) -> Evidence:
    """`evidence`, carrying `cols` (which must be its columns)."""
    object.__setattr__(evidence, "_columns", cols)
    return evidence
