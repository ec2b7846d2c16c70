"""A growing list of real evidence (results and attestations) with fresh record ids, for the
estimator and bandit tests."""

from __future__ import annotations

from p2pgolf.pool.evidence import AttestationEvidence, Evidence, result_evidence

ME = "a" * 64
BASE = "naive-baseline"
HW = "cpu:x"


class EvidencePool:
    def __init__(self):
        self.results = []
        self.attestations = []
        self.n = 0

    def rid(self) -> str:
        self.n += 1
        return f"{self.n:064x}"

    def add(self, diff, value, *, author=ME, parents=(), hw=HW):
        r = result_evidence(self.rid(), base=BASE, diff=diff, author=author, hw=hw, val_bpb=value, budget_s=600, parents=parents)
        self.results.append(r)
        return r

    def attest(self, subject, value, *, author=ME, hw=HW, method="reproduce"):
        self.attestations.append(AttestationEvidence(self.rid(), subject, author, method, hw, value))

    @property
    def evidence(self) -> Evidence:
        return Evidence(tuple(self.results), tuple(self.attestations))
