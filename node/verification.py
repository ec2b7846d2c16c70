"""Checking a claim by re-evaluating its artifact, and the signed `reeval` attestation it yields.

Used by `p2pgolf verify` and by the research loop's verify operator:

    reason = not_reevaluable(signed)          # None, or why this record cannot be re-evaluated
    outcome = verify_artifact(signed, path, bench, identity, data_dir=, backend=, device=)
        # size and digest against the record, then trainer.reeval.run_reeval (a child process),
        # then an Attestation(method="reeval") signed by `identity`
    outcome.agrees, outcome.measured, outcome.claimed, outcome.tolerance, outcome.attestation

Guarantees: an artifact whose SHA-256 is not the record's, or that is over the benchmark's size
cap, is refused before it is evaluated (VerifyError); a claim scored on a capped split is
re-scored on the same cap; `agrees` uses the estimator's own tolerance for re-evaluations
(pool.estimator: check_z x sqrt(2) x reeval_sd + check_slack), so what this prints is what the
estimator will conclude. Script candidates are not re-evaluable: their artifacts can only be
loaded by their own script; the message says to reproduce them instead.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pgolf.protocol.benchmarks import Benchmark
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.records import Attestation, HardwareClass, Metrics
from p2pgolf.protocol.signing import SignedRecord, sign_record


class VerifyError(Exception):
    """The claim cannot be checked this way (the message says why and what to do instead)."""


@dataclass(frozen=True)
class VerifyOutcome:
    subject: str
    claimed: float
    measured: float
    tolerance: float
    agrees: bool
    reeval_s: float  # what the check cost (child start-up included)
    attestation: SignedRecord
    reeval: Any  # trainer.reeval.Reeval

    @property
    def verdict(self) -> str:
        return "confirmed" if self.agrees else "refuted"


def reeval_tolerance() -> float:
    """How far a re-evaluation may differ from its claim and still agree (bpb): the estimator's."""
    from p2pgolf.pool.estimator import EstimatorConfig

    c = EstimatorConfig()
    return c.check_z * math.sqrt(2.0) * c.reeval_sd + c.check_slack


def is_script_base(base: str) -> bool:
    try:
        from p2pgolf.protocol.candidates import is_script_base as official  # protocol v2 (script candidates)
    except ImportError:
        return base.startswith("script:")
    return official(base)


def not_reevaluable(signed: SignedRecord) -> str | None:
    """Why `signed` cannot be checked by re-evaluation, or None if it can."""
    if signed.kind != "result":
        return f"record {signed.id[:12]} is an {signed.kind}, not a result: verify the result it attests instead"
    record = signed.record
    if is_script_base(record.base):
        return (
            f"record {signed.id[:12]} is a script candidate ({record.base[:19]}...): its artifact can only be loaded by its own "
            "script, so it cannot be re-evaluated here; check it by reproduction instead (train the same candidate once its "
            "script is approved; the research loop's replicate does this)"
        )
    if not record.artifact:
        return f"record {signed.id[:12]} names no artifact, so there is nothing to re-evaluate; check it by reproduction instead"
    return None


def eval_token_cap(signed: SignedRecord) -> int:
    """The token cap the claim was scored under (0: the whole validation split)."""
    metrics = signed.record.metrics
    return int(metrics.eval_tokens) if metrics.eval_partial else 0


def check_artifact(signed: SignedRecord, path: Path, bench: Benchmark) -> int:
    """The artifact file's size, after checking its digest against the record and its size
    against the benchmark's cap and the record's own count. VerifyError otherwise."""
    from p2pgolf.trainer.artifact import code_bytes

    record = signed.record
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha != record.artifact:
        raise VerifyError(f"the artifact's SHA-256 is {sha[:12]}, not {record.artifact[:12]} as record {signed.id[:12]} says")
    if len(data) > record.metrics.artifact_bytes:
        raise VerifyError(f"the artifact file alone is {len(data):,} bytes, more than the {record.metrics.artifact_bytes:,} the record claims in all")
    counted = len(data) + code_bytes("torch")
    if counted > bench.size_cap:
        raise VerifyError(f"the artifact counts {counted:,} bytes with this node's code, over the size cap of {bench.size_cap:,}")
    return len(data)


def verify_artifact(
    signed: SignedRecord,
    path: Path,
    bench: Benchmark,
    identity: Identity,
    *,
    data_dir: Path | None = None,
    backend: str = "auto",
    device: str = "auto",
    timeout_s: float = 900.0,
    now_ms: int | None = None,
) -> VerifyOutcome:
    """Check and re-evaluate `signed`'s artifact at `path`; returns the signed attestation and
    the verdict. VerifyError if the record or the file cannot be checked this way."""
    from p2pgolf.trainer.reeval import ReevalError, run_reeval

    reason = not_reevaluable(signed)
    if reason:
        raise VerifyError(reason)
    if signed.bench != bench.id:
        raise VerifyError(f"record {signed.id[:12]} is for benchmark {signed.bench[:12]}..., not {bench.name}")
    check_artifact(signed, path, bench)
    started = time.perf_counter()
    try:
        measured = run_reeval(path, bench.name, data_dir=data_dir, backend=backend, device=device, eval_token_cap=eval_token_cap(signed), timeout_s=timeout_s,
                              tokenizer=signed.record.tokenizer)  # fmt: skip
    except ReevalError as exc:
        raise VerifyError(str(exc)) from None
    seconds = time.perf_counter() - started
    claimed = float(signed.record.metrics.val_bpb)
    tolerance = reeval_tolerance()
    agrees = abs(measured.val_bpb - claimed) <= tolerance
    attestation = Attestation(
        bench=signed.bench,
        author=identity.public_hex,
        created_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        subject=signed.id,
        method="reeval",
        tokenizer=signed.record.tokenizer,
        hw=HardwareClass.from_wire(measured.hw),
        seed=signed.record.seed,
        metrics=Metrics(
            val_bpb=float(measured.val_bpb),
            val_loss=float(measured.val_loss),
            steps=0,  # nothing was trained here
            train_tokens=0,
            artifact_bytes=int(measured.artifact_bytes),
            eval_tokens=int(measured.eval_tokens),
            eval_partial=bool(measured.eval_partial),
        ),
        artifact=signed.record.artifact,
        trainer=measured.trainer,
        note=f"reeval: claimed {claimed:.6f}, measured {measured.val_bpb:.6f} ({'agrees' if agrees else 'disagrees'}, tol {tolerance:.4f})",
    )
    return VerifyOutcome(
        subject=signed.id,
        claimed=claimed,
        measured=float(measured.val_bpb),
        tolerance=tolerance,
        agrees=agrees,
        reeval_s=seconds,
        attestation=sign_record(attestation, identity.signing_key),
        reeval=measured,
    )


class LoopVerifier:
    """The research loop's verifier: fetch a claim's artifact through the node, re-evaluate it in
    a child process (off trio's thread), and publish the attestation through the node."""

    def __init__(self, node: Any, bench: Benchmark, *, data_dir: Path | None = None, backend: str = "auto", device: str = "auto", fetch_timeout_s: float = 120.0) -> None:
        self.node = node
        self.bench = bench
        self.data_dir = data_dir
        self.backend = backend
        self.device = device
        self.fetch_timeout_s = fetch_timeout_s

    async def verify(self, signed: SignedRecord) -> VerifyOutcome:
        import trio

        reason = not_reevaluable(signed)
        if reason:
            raise VerifyError(reason)
        path = await self._fetch(signed)
        call = lambda: verify_artifact(signed, path, self.bench, self.node.identity, data_dir=self.data_dir, backend=self.backend, device=self.device)  # noqa: E731
        outcome = await trio.to_thread.run_sync(call, abandon_on_cancel=True)
        await self.node.publish(outcome.attestation.raw)
        return outcome

    async def _fetch(self, signed: SignedRecord) -> Path:
        """The artifact, asking again every second until `fetch_timeout_s`: a node that has just
        started may not be connected yet to the peers that hold it."""
        import trio

        from p2pgolf.node.blob_exchange import BlobFetchError

        deadline = trio.current_time() + self.fetch_timeout_s
        while True:
            left = deadline - trio.current_time()
            try:
                return await self.node.fetch_blob(signed.record.artifact, kind="artifact", author=signed.author, timeout_s=max(left, 1.0))
            except BlobFetchError:
                if trio.current_time() + 1.0 >= deadline:
                    raise
            await trio.sleep(1.0)
