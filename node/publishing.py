"""Turn a finished local run (the trainer's result.json) into a signed Result record.

`sign_run(data, identity)` is the one way a run becomes a record, used by `p2pgolf publish`
and the research loop. It refuses runs whose status is not "ok", checks that the benchmark id
matches the benchmark name when the name is known, and builds every field through the protocol
types, so a record it returns is one every peer accepts. Mistakes are ProtocolError naming the
field of result.json.

One measurement, one record: a record's fields all come from the run, its creation time too
(result.json's created_ms; for a run from before that field, the file's modification time), and
Ed25519 signatures are deterministic, so signing the same run with the same key twice gives the
same record id. `sign_run_dir` also remembers the signed record in the run directory
(RECORD_FILE) and gives back that exact record when the same key signs the run again, so a run
the research loop published (with its lineage, or as an attestation) and `p2pgolf publish
RUN_DIR` afterwards are one record, not two.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pgolf.protocol.benchmarks import BENCHMARKS, benchmark
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.protocol.identity import Identity
from p2pgolf.protocol.records import HardwareClass, Metrics, Result
from p2pgolf.protocol.signing import SignedRecord, sign_record

RESULT_FILE = "result.json"
RECORD_FILE = "record.p2pgolf"  # the signed record of the run, as its first signer made it
MAX_RESULT_BYTES = 1 << 20
RUN_FIELDS = ("bench", "bench_name", "base", "diff", "seed", "budget_s", "hw", "metrics", "artifact_sha256", "trainer", "status", "parents", "note")
_FLOAT_METRICS = ("val_bpb", "val_loss")


def sign_run(data: dict[str, Any], identity: Identity, *, now_ms: int | None = None) -> SignedRecord:
    """The signed Result of a run whose result.json decoded to `data`."""
    return sign_record(result_from_run(data, identity.public_hex, now_ms=now_ms), identity.signing_key)


def result_from_run(data: dict[str, Any], author: str, *, now_ms: int | None = None) -> Result:
    """The (unsigned) Result of a run; ProtocolError naming the field for anything wrong."""
    if not isinstance(data, dict):
        raise ProtocolError("must be a JSON object", RESULT_FILE)
    missing = [f for f in RUN_FIELDS if f not in data]
    if missing:
        raise ProtocolError(f"missing field(s) {', '.join(missing)}", RESULT_FILE)
    status = data["status"]
    if status != "ok":
        raise ProtocolError(f"the run's status is {status!r}; only runs with status 'ok' can be published", "status")
    bench_id, name = data["bench"], data["bench_name"]
    if isinstance(name, str) and name.split("@", 1)[0] in BENCHMARKS:
        expected = benchmark(name).id
        if bench_id != expected:
            raise ProtocolError(f"{bench_id!r} is not the id of benchmark {name!r} ({expected})", "bench")
    hw = data["hw"]
    metrics = data["metrics"]
    if not isinstance(hw, dict):
        raise ProtocolError("must be an object", "hw")
    if not isinstance(metrics, dict):
        raise ProtocolError("must be an object", "metrics")
    # JSON writes 3.0 as 3 sometimes; the wire wants floats where the protocol says float.
    metrics = {k: (float(v) if k in _FLOAT_METRICS and type(v) is int else v) for k, v in metrics.items()}
    budget = data["budget_s"]
    if type(budget) is int:
        budget = float(budget)
    parents = data["parents"]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ProtocolError("must be a list of record ids", "parents")
    diff = data["diff"]
    if not isinstance(diff, dict):
        raise ProtocolError("must be an object of knob names to values", "diff")
    note = data["note"] if data["note"] is not None else ""
    tokenizer = data.get("tokenizer")
    if tokenizer is None and isinstance(name, str) and name.split("@", 1)[0] in BENCHMARKS:
        tokenizer = benchmark(name).tokenizer  # a result.json written before candidates named their tokenizer
    if tokenizer is None:
        raise ProtocolError("missing field tokenizer (the tokenizer variant the run used, e.g. sp1024)", RESULT_FILE)
    result = Result(
        bench=bench_id,
        author=author,
        created_ms=run_created_ms(data) if now_ms is None else now_ms,
        base=data["base"],
        diff=diff,
        tokenizer=tokenizer,
        hw=HardwareClass.from_wire(hw),
        budget_s=budget,
        seed=data["seed"],
        metrics=Metrics.from_wire(metrics),
        parents=tuple(sorted(set(parents))),
        artifact=data["artifact_sha256"],
        trainer=data["trainer"],
        note=note,
    )
    return result


def run_created_ms(data: dict[str, Any]) -> int:
    """When the run's result was written (result.json's created_ms), else now."""
    value = data.get("created_ms")
    if type(value) is int and value > 0:
        return value
    return int(time.time() * 1000)


def sign_run_dir(run_dir: Path, identity: Identity, *, build: Callable[[dict[str, Any]], Any] | None = None, reuse: bool = True) -> SignedRecord:
    """The signed record of the run in `run_dir`: the one remembered in its RECORD_FILE if this
    key made it for this very run (and `reuse`), else a fresh one (`build(data)` -> an unsigned
    Result or Attestation, default `result_from_run`), which is then remembered (best effort: a
    read-only run directory still publishes). The research loop, which knows the run's lineage,
    signs with reuse=False; `p2pgolf publish`, which does not, reuses what the loop signed."""
    data = read_run(run_dir)
    if "created_ms" not in data:  # a run from before created_ms: its file's time is its time
        try:
            data = {**data, "created_ms": int((run_dir / RESULT_FILE).stat().st_mtime * 1000)}
        except OSError:
            pass
    known = remembered_record(run_dir, identity.public_hex, data) if reuse else None
    if known is not None:
        return known
    record = build(data) if build is not None else result_from_run(data, identity.public_hex)
    signed = sign_record(record, identity.signing_key)
    try:
        tmp = run_dir / (RECORD_FILE + ".tmp")
        tmp.write_bytes(signed.raw)
        os.replace(tmp, run_dir / RECORD_FILE)
    except OSError:
        pass
    return signed


def remembered_record(run_dir: Path, author: str, data: dict[str, Any]) -> SignedRecord | None:
    """The record RECORD_FILE holds, if it verifies, is `author`'s and measures this run
    (benchmark, artifact, seed and score); else None."""
    from p2pgolf.protocol.signing import decode_record

    try:
        signed = decode_record((run_dir / RECORD_FILE).read_bytes())
    except (OSError, ProtocolError):
        return None
    record = signed.record
    metrics = data.get("metrics") or {}
    same = (
        record.author == author
        and record.bench == data.get("bench")
        and record.artifact == data.get("artifact_sha256")
        and record.seed == data.get("seed")
        and record.metrics.val_bpb == metrics.get("val_bpb")
    )
    return signed if same else None


def read_run(path: Path) -> dict[str, Any]:
    """The decoded result.json of a run directory (or of the file itself)."""
    file = path / RESULT_FILE if path.is_dir() else path
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise ProtocolError(f"cannot read {file}: {exc.strerror or exc}") from None
    if len(text) > MAX_RESULT_BYTES:
        raise ProtocolError(f"{file} is {len(text)} bytes; a result.json is at most {MAX_RESULT_BYTES}")
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{file} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{file} must hold a JSON object")
    return data
