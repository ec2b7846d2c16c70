"""Evidence: the plain values the estimator reads, built from signed records or pool rows.

The estimator and the bandit never see SQLite or signatures; they see these frozen values, so
the node (from its PoolStore) and the simulator (from synthetic measurements) feed the same
code. A `ResultEvidence` says "author measured candidate on hardware class hw: val_bpb"; an
`AttestationEvidence` says "author re-measured record subject: val_bpb". Converting a record
never fails for a record that passed `protocol.signing.decode_record`. A result's evidence
keeps what says which measurement it is (artifact digest and seed) and how fast its run trained
(train_tokens in budget_s, and whether its note says "degraded: ..."), so the estimator can count
one measurement once and weigh a run slowed by its machine's load down.

A result whose note marks it as imported from a competition folder (pool/bridge/provenance.py)
is someone else's run that its signer only transcribed: its evidence author is
`imported_author(signer)`, which the estimator weighs as an unknown key until it is reproduced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pgolf.pool.bridge.provenance import imported_author, is_imported
from p2pgolf.protocol import candidates
from p2pgolf.protocol.signing import SignedRecord

# How a result's note says its run was degraded (written by trainer.throughput, NOTE_PREFIX).
DEGRADED_NOTE_PREFIX = "degraded: "


# The tokenizer of evidence built without one (the simulator's, tests'): the challenge's default.
DEFAULT_TOKENIZER = "sp1024"


@dataclass(frozen=True, slots=True)  # slots: a pool holds ~10^5 of these, and each full garbage collection walks them
class ResultEvidence:
    """One measured result: candidate (base, diff, tokenizer) on a hardware class, by an author."""

    record_id: str
    candidate: str
    base: str
    diff: Mapping[str, Any]
    author: str
    hw: str
    val_bpb: float
    budget_s: float
    parents: tuple[str, ...] = ()
    created_ms: int = 0
    seed: int = 0
    tokenizer: str = DEFAULT_TOKENIZER
    artifact: str | None = None  # sha256 of the artifact: with the seed, names the measurement
    train_tokens: int = 0  # tokens trained in budget_s: the run's speed, 0 when not known
    degraded: bool = False  # the author marked the run degraded (its note)
    kind: str = field(default="result", init=False)


@dataclass(frozen=True, slots=True)
class AttestationEvidence:
    """A re-measurement of record `subject`: its artifact re-evaluated or its run reproduced."""

    record_id: str
    subject: str
    author: str
    method: str  # "reeval" or "reproduce"
    hw: str
    val_bpb: float
    created_ms: int = 0
    kind: str = field(default="attestation", init=False)


@dataclass(frozen=True)
class Evidence:
    """Everything the estimator reads for one benchmark."""

    results: tuple[ResultEvidence, ...] = ()
    attestations: tuple[AttestationEvidence, ...] = ()

    def __add__(self, other: "Evidence") -> "Evidence":
        return Evidence(self.results + other.results, self.attestations + other.attestations)

    def __len__(self) -> int:
        return len(self.results) + len(self.attestations)


def result_evidence(
    record_id: str,
    *,
    base: str,
    diff: Mapping[str, Any],
    author: str,
    hw: str,
    val_bpb: float,
    budget_s: float,
    parents: Iterable[str] = (),
    created_ms: int = 0,
    seed: int = 0,
    tokenizer: str = DEFAULT_TOKENIZER,
    artifact: str | None = None,
    train_tokens: int = 0,
    degraded: bool = False,
) -> ResultEvidence:
    """A ResultEvidence with its candidate id computed (raises ProtocolError for a bad diff).
    Both kinds of candidate: a script's diff is taken by shape, whether or not the script is held."""
    normal = candidates.normalise_diff(base, diff)
    return ResultEvidence(
        record_id=record_id,
        candidate=candidates.candidate_id(base, normal, tokenizer),
        base=base,
        diff=normal,
        author=author,
        hw=hw,
        val_bpb=float(val_bpb),
        budget_s=float(budget_s),
        parents=tuple(sorted(set(parents))),
        created_ms=int(created_ms),
        seed=int(seed),
        tokenizer=tokenizer,
        artifact=artifact,
        train_tokens=int(train_tokens),
        degraded=bool(degraded),
    )


def from_signed(signed: SignedRecord) -> ResultEvidence | AttestationEvidence:
    """The evidence carried by one verified record."""
    record = signed.record
    if record.kind == "attestation":
        return AttestationEvidence(
            record_id=signed.id,
            subject=record.subject,
            author=record.author,
            method=record.method,
            hw=record.hw.key,
            val_bpb=float(record.metrics.val_bpb),
            created_ms=int(record.created_ms),
        )
    return result_evidence(
        signed.id,
        base=record.base,
        diff=record.diff,
        author=imported_author(record.author) if is_imported(record.note) else record.author,
        hw=record.hw.key,
        val_bpb=record.metrics.val_bpb,
        budget_s=record.budget_s,
        parents=record.parents,
        created_ms=record.created_ms,
        seed=record.seed,
        tokenizer=record.tokenizer,
        artifact=record.artifact,
        train_tokens=record.metrics.train_tokens,
        degraded=record.note.startswith(DEGRADED_NOTE_PREFIX),
    )


def from_records(records: Iterable[SignedRecord], *, bench: str | None = None) -> Evidence:
    """Evidence from verified records; with `bench`, records of other benchmarks are skipped."""
    results: list[ResultEvidence] = []
    attestations: list[AttestationEvidence] = []
    for signed in records:
        if bench is not None and signed.bench != bench:
            continue
        item = from_signed(signed)
        (attestations if item.kind == "attestation" else results).append(item)
    return Evidence(tuple(results), tuple(attestations))


def from_store(store: Any, bench: str) -> Evidence:
    """Evidence for one benchmark from a PoolStore (anything with `query(bench=, kind=)`
    returning SignedRecords)."""
    records = list(store.query(bench=bench, kind="result")) + list(store.query(bench=bench, kind="attestation"))
    return from_records(records, bench=bench)
