"""Deterministic, realistic signed records for the pool, trust and transfer tests.

Records are made with real keys through `protocol.signing.sign_record`, so everything the
tests store passed the same validation and verification a peer's record would.
"""

from __future__ import annotations

from p2pgolf.protocol.benchmarks import benchmark, by_id
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.records import Attestation, HardwareClass, Metrics, Result
from p2pgolf.protocol.signing import SignedRecord, sign_record

SMOKE = benchmark("smoke").id
GOLF = benchmark("parameter-golf/sp1024-10min").id
T0 = 1_760_000_000_000  # 2025-10-09, a fixed clock for reproducible records
HOUR = 3_600_000

CPU = HardwareClass("cpu", "Xeon", 1, 0)
H100 = HardwareClass("cuda", "H100 80GB HBM3", 8, 81559)

_DIFFS = (
    {},
    {"num_layers": 3},
    {"model_dim": 128, "num_heads": 4},
    {"matrix_lr": 0.03},
    {"activation": "swiglu", "mlp_mult": 3.0},
    {"tie_embeddings": False, "head_lr": 0.01},
)


def identity(n: int) -> Identity:
    """The n-th fixed test identity (n in 1..255)."""
    return Identity.from_seed(bytes([n]) * 32)


def metrics(val_bpb: float, steps: int = 100) -> Metrics:
    return Metrics(val_bpb=val_bpb, val_loss=val_bpb * 0.69, steps=steps, train_tokens=steps * 4096, artifact_bytes=120_000, eval_tokens=65_536)


def result(
    who: Identity,
    *,
    i: int = 0,
    bench: str = SMOKE,
    created_ms: int | None = None,
    diff: dict | None = None,
    parents: tuple[str, ...] = (),
    val_bpb: float | None = None,
    hw: HardwareClass = CPU,
    note: str = "",
) -> SignedRecord:
    """A signed result; `i` varies the diff, seed, score and time so records differ."""
    record = Result(
        bench=bench,
        author=who.public_hex,
        created_ms=T0 + i * 60_000 if created_ms is None else created_ms,
        base="smoke-tiny",
        diff=_DIFFS[i % len(_DIFFS)] if diff is None else diff,
        tokenizer="byte256",
        hw=hw,
        budget_s=by_id(bench).budget_s if by_id(bench) else 60.0,  # a result's budget is its benchmark's
        seed=i,
        metrics=metrics(2.5 - (i % 97) / 100 if val_bpb is None else val_bpb),
        parents=parents,
        trainer="torch-2.6/cpu",
        note=note,
    )
    return sign_record(record, who.signing_key)


def attestation(who: Identity, subject: SignedRecord, *, i: int = 0, val_bpb: float = 2.41) -> SignedRecord:
    """A signed re-evaluation of `subject` by `who`."""
    record = Attestation(
        bench=subject.bench,
        author=who.public_hex,
        created_ms=subject.created_ms + 1000 + i,
        subject=subject.id,
        method="reeval",
        tokenizer=subject.record.tokenizer,
        hw=CPU,
        seed=i,
        metrics=metrics(val_bpb),
    )
    return sign_record(record, who.signing_key)


def batch(n: int, *, who: Identity | None = None, start: int = 0, bench: str = SMOKE) -> list[SignedRecord]:
    """n distinct results (indices start..start+n-1), each after the first citing a parent."""
    who = who or identity(1)
    out: list[SignedRecord] = []
    for i in range(start, start + n):
        parents = (out[-1].id,) if out and i % 3 else ()
        out.append(result(who, i=i, bench=bench, parents=parents))
    return out
