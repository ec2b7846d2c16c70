"""Build valid, varied records for tests (not a fixture file: plain functions)."""

from __future__ import annotations

import time

from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.records import Attestation, HardwareClass, Metrics, Result
from p2pgolf.protocol.signing import SignedRecord, sign_record

CPU = HardwareClass("cpu", "Test CPU", 2, 24000)
H100 = HardwareClass("cuda", "NVIDIA H100 80GB HBM3", 1, 81559)


def make_result(
    identity: Identity,
    *,
    bench: str = "smoke",
    base: str = "smoke-tiny",
    diff: dict | None = None,
    val_bpb: float = 2.5,
    seed: int = 0,
    hw: HardwareClass = CPU,
    parents: tuple[str, ...] = (),
    created_ms: int | None = None,
    note: str = "",
    tokenizer: str | None = None,
) -> Result:
    return Result(
        bench=benchmark(bench).id,
        author=identity.public_hex,
        created_ms=created_ms if created_ms is not None else int(time.time() * 1000),
        base=base,
        diff=diff or {},
        tokenizer=tokenizer or benchmark(bench).tokenizer,
        hw=hw,
        budget_s=benchmark(bench).budget_s,
        seed=seed,
        metrics=Metrics(val_bpb=val_bpb, val_loss=val_bpb * 0.69, steps=100, train_tokens=409600, artifact_bytes=123456, eval_tokens=65536),
        parents=parents,
        artifact=None,
        trainer="test/0",
        note=note,
    )


def signed_result(identity: Identity, **kwargs) -> SignedRecord:
    return sign_record(make_result(identity, **kwargs), identity.signing_key)


def signed_attestation(identity: Identity, subject: SignedRecord, *, val_bpb: float, method: str = "reeval") -> SignedRecord:
    att = Attestation(
        bench=subject.bench,
        author=identity.public_hex,
        created_ms=int(time.time() * 1000),
        subject=subject.id,
        method=method,
        tokenizer=subject.record.tokenizer,
        hw=CPU,
        seed=0,
        metrics=Metrics(val_bpb=val_bpb, val_loss=val_bpb * 0.69, steps=0, train_tokens=0, artifact_bytes=123456, eval_tokens=65536),
    )
    return sign_record(att, identity.signing_key)
