"""Evidence of one benchmark, read from the pool incrementally: a decision pays only for the
records that arrived since the last one.

The pool is a grow-only set (pool/store.py), so the evidence of every record read once stays
valid: `EvidenceCache.evidence()` reads the rows added after the last it saw (by SQLite rowid)
and appends their evidence. A stored record passed `decode_record` on its way in, so its body
is read without validating it again, and its candidate id is the one the store computed.

The evidence carries its columns (pool/evidence_columns.py), extended by the new records when
they come after the ones already read (the usual case), so the estimator's arrays are not built
again for every decision either.

Guarantee (tests/test_decision_scale.py): `evidence()` equals `pool.evidence.from_store` of the
same pool, record for record and in the same order (results, then attestations, each by
created_ms and id).
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

from p2pgolf.pool.bridge.provenance import imported_author, is_imported
from p2pgolf.pool.evidence import DEGRADED_NOTE_PREFIX, AttestationEvidence, Evidence, ResultEvidence
from p2pgolf.pool.evidence_columns import columns_of, with_columns


class EvidenceCache:
    """`from_store(store, bench)`, kept up to date by reading only new rows. Thread-safe."""

    def __init__(self, store: Any, bench: str) -> None:
        self.store = store
        self.bench = bench
        self._after = 0  # the largest rowid read
        self._results: list[ResultEvidence] = []
        self._attestations: list[AttestationEvidence] = []
        self._evidence: Evidence | None = None  # what the last call returned, with its columns
        self._diffs: dict[str, dict] = {}  # candidate id -> the diff its results share
        self._lock = threading.Lock()

    def evidence(self) -> Evidence:
        """Everything the pool holds for the benchmark now."""
        with self._lock:
            rows = self.store.rows_after(self.bench, self._after)
            if not rows and self._evidence is not None:
                return self._evidence
            new_results, new_attestations = [], []
            for rowid, rid, kind, candidate, raw in rows:
                body = msgpack.unpackb(msgpack.unpackb(raw, raw=False)["body"], raw=False)
                if kind == "result":
                    # one diff per candidate (the id fixes it): ~10^5 dicts fewer for each garbage collection to walk
                    body["diff"] = self._diffs.setdefault(candidate, body["diff"])
                    new_results.append(_result(rid, candidate, body))
                else:
                    new_attestations.append(_attestation(rid, body))
            if rows:
                self._after = rows[-1][0]
            appended = _merge(self._results, new_results) & _merge(self._attestations, new_attestations)
            previous = self._evidence
            evidence = Evidence(tuple(self._results), tuple(self._attestations))
            if previous is not None and appended and "_columns" in previous.__dict__:
                with_columns(evidence, columns_of(previous).extend(new_results, new_attestations))
            self._evidence = evidence
            return evidence


def _merge(have: list, new: list) -> bool:
    """Append `new` keeping (created_ms, record_id) order; records usually arrive in that order.
    True if `new` went after everything in `have` (so positions already known did not move)."""
    if not new:
        return True
    new.sort(key=_order)
    if have and _order(new[0]) < _order(have[-1]):
        have.extend(new)
        have.sort(key=_order)
        return False
    have.extend(new)
    return True


def _order(e: Any) -> tuple[int, str]:
    return (e.created_ms, e.record_id)


def _hw_key(hw: dict) -> str:
    return f"{hw['accel']}:{hw['model']}:x{hw['count']}"  # protocol.records.HardwareClass.key


def _result(rid: str, candidate: str, body: dict) -> ResultEvidence:
    note = body["note"]
    metrics = body["metrics"]
    return ResultEvidence(
        record_id=rid,
        candidate=candidate,
        base=body["base"],
        diff=body["diff"],
        author=imported_author(body["author"]) if is_imported(note) else body["author"],
        hw=_hw_key(body["hw"]),
        val_bpb=float(metrics["val_bpb"]),
        budget_s=float(body["budget_s"]),
        parents=tuple(sorted(set(body["parents"]))),
        created_ms=int(body["created_ms"]),
        seed=int(body["seed"]),
        tokenizer=body["tokenizer"],
        artifact=body["artifact"],
        train_tokens=int(metrics["train_tokens"]),
        degraded=note.startswith(DEGRADED_NOTE_PREFIX),
    )


def _attestation(rid: str, body: dict) -> AttestationEvidence:
    return AttestationEvidence(
        record_id=rid,
        subject=body["subject"],
        author=body["author"],
        method=body["method"],
        hw=_hw_key(body["hw"]),
        val_bpb=float(body["metrics"]["val_bpb"]),
        created_ms=int(body["created_ms"]),
    )
