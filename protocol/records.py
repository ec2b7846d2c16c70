"""Record kinds and their validation: `result` and `attestation`.

A record body is a plain map (the wire form). `parse_body` turns a decoded map into a frozen
dataclass after checking every field (exact key set, types, ranges, sizes, knob vocabulary,
timestamps) and raises `ProtocolError` naming the field for anything else. Version 2: a
candidate is (base, diff, tokenizer) where base is a built-in base config or a script
(protocol/candidates.py); only v2 bodies are accepted. `Result.to_wire()`
and `Attestation.to_wire()` give back the map that is encoded and signed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pgolf.protocol import candidates
from p2pgolf.protocol.errors import ProtocolError

PROTOCOL_VERSION = 2
MAX_PARENTS = 8
MAX_NOTE_CHARS = 280
MAX_SHORT_STR = 80
FUTURE_SKEW_MS = 10 * 60 * 1000  # a record may be stamped at most 10 minutes ahead of us
EARLIEST_MS = 1_700_000_000_000  # 2023-11-14: nothing older can be a p2pgolf record

ACCELERATORS = ("cuda", "rocm", "mps", "cpu", "xpu", "tpu", "other")
ATTESTATION_METHODS = ("reeval", "reproduce")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class HardwareClass:
    """Where a result was measured: accelerator kind and model, device count, memory per device."""

    accel: str
    model: str
    count: int = 1
    memory_mib: int = 0

    @property
    def key(self) -> str:
        """A stable string naming the class, used to group comparable results."""
        return f"{self.accel}:{self.model}:x{self.count}"

    def to_wire(self) -> dict[str, Any]:
        return {"accel": self.accel, "model": self.model, "count": self.count, "memory_mib": self.memory_mib}

    @classmethod
    def from_wire(cls, value: Any, where: str = "hw") -> "HardwareClass":
        m = _exact_map(value, ("accel", "model", "count", "memory_mib"), where)
        return cls(
            accel=_choice(m["accel"], ACCELERATORS, f"{where}.accel"),
            model=_text(m["model"], MAX_SHORT_STR, f"{where}.model", empty_ok=False),
            count=_int(m["count"], 1, 4096, f"{where}.count"),
            memory_mib=_int(m["memory_mib"], 0, 1 << 40, f"{where}.memory_mib"),
        )


@dataclass(frozen=True)
class Metrics:
    """What a run measured. val_bpb is the score (after the artifact round trip)."""

    val_bpb: float
    val_loss: float
    steps: int
    train_tokens: int
    artifact_bytes: int
    eval_tokens: int
    eval_partial: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {
            "val_bpb": float(self.val_bpb),
            "val_loss": float(self.val_loss),
            "steps": int(self.steps),
            "train_tokens": int(self.train_tokens),
            "artifact_bytes": int(self.artifact_bytes),
            "eval_tokens": int(self.eval_tokens),
            "eval_partial": bool(self.eval_partial),
        }

    @classmethod
    def from_wire(cls, value: Any, where: str = "metrics") -> "Metrics":
        m = _exact_map(value, ("val_bpb", "val_loss", "steps", "train_tokens", "artifact_bytes", "eval_tokens", "eval_partial"), where)
        return cls(
            val_bpb=_float(m["val_bpb"], 0.0, 100.0, f"{where}.val_bpb", open_low=True),
            val_loss=_float(m["val_loss"], 0.0, 100.0, f"{where}.val_loss", open_low=True),
            steps=_int(m["steps"], 0, 10**12, f"{where}.steps"),
            train_tokens=_int(m["train_tokens"], 0, 10**16, f"{where}.train_tokens"),
            artifact_bytes=_int(m["artifact_bytes"], 0, 10**12, f"{where}.artifact_bytes"),
            eval_tokens=_int(m["eval_tokens"], 0, 10**13, f"{where}.eval_tokens"),
            eval_partial=_bool(m["eval_partial"], f"{where}.eval_partial"),
        )


@dataclass(frozen=True)
class Result:
    """A candidate's measured outcome on one benchmark and hardware class."""

    bench: str
    author: str
    created_ms: int
    base: str
    diff: Mapping[str, Any]
    tokenizer: str
    hw: HardwareClass
    budget_s: float
    seed: int
    metrics: Metrics
    parents: tuple[str, ...] = ()
    artifact: str | None = None
    trainer: str = ""
    note: str = ""
    kind: str = field(default="result", init=False)

    @property
    def candidate(self) -> str:
        """Id of the configuration (base, normalised diff, tokenizer); same for every seed and author."""
        return candidates.candidate_id(self.base, self.diff, self.tokenizer)

    @property
    def is_script(self) -> bool:
        """True if the candidate is a script (base `script:<sha256>`), not a built-in config."""
        return candidates.is_script_base(self.base)

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "kind": "result",
            "bench": self.bench,
            "author": self.author,
            "created_ms": int(self.created_ms),
            "base": self.base,
            "diff": candidates.normalise_diff(self.base, self.diff),
            "tokenizer": self.tokenizer,
            "parents": sorted(set(self.parents)),
            "hw": self.hw.to_wire(),
            "budget_s": float(self.budget_s),
            "seed": int(self.seed),
            "metrics": self.metrics.to_wire(),
            "artifact": self.artifact,
            "trainer": self.trainer,
            "note": self.note,
        }


@dataclass(frozen=True)
class Attestation:
    """Another node's re-measurement of a result: its artifact re-evaluated, or the run reproduced."""

    bench: str
    author: str
    created_ms: int
    subject: str
    method: str
    tokenizer: str
    hw: HardwareClass
    seed: int
    metrics: Metrics
    artifact: str | None = None
    trainer: str = ""
    note: str = ""
    kind: str = field(default="attestation", init=False)

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "kind": "attestation",
            "bench": self.bench,
            "author": self.author,
            "created_ms": int(self.created_ms),
            "subject": self.subject,
            "method": self.method,
            "tokenizer": self.tokenizer,
            "hw": self.hw.to_wire(),
            "seed": int(self.seed),
            "metrics": self.metrics.to_wire(),
            "artifact": self.artifact,
            "trainer": self.trainer,
            "note": self.note,
        }


Record = Result | Attestation

_RESULT_KEYS = ("v", "kind", "bench", "author", "created_ms", "base", "diff", "tokenizer", "parents", "hw", "budget_s", "seed", "metrics", "artifact", "trainer", "note")
_ATTESTATION_KEYS = ("v", "kind", "bench", "author", "created_ms", "subject", "method", "tokenizer", "hw", "seed", "metrics", "artifact", "trainer", "note")


def parse_body(body: Any, *, now_ms: int | None = None) -> Record:
    """Validate a decoded record body and return it as a Result or Attestation."""
    if not isinstance(body, dict):
        raise ProtocolError("record body must be a map")
    version = body.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError(f"unsupported protocol version {version!r}; this node speaks {PROTOCOL_VERSION}", "v")
    kind = body.get("kind")
    if kind == "result":
        m = _exact_map(body, _RESULT_KEYS, "record")
    elif kind == "attestation":
        m = _exact_map(body, _ATTESTATION_KEYS, "record")
    else:
        raise ProtocolError(f"unknown record kind {kind!r}; expected result or attestation", "kind")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    common = dict(
        bench=_hex64(m["bench"], "bench"),
        author=_hex64(m["author"], "author"),
        created_ms=_int(m["created_ms"], EARLIEST_MS, now_ms + FUTURE_SKEW_MS, "created_ms"),
        tokenizer=candidates.check_tokenizer(m["tokenizer"]),
        hw=HardwareClass.from_wire(m["hw"]),
        seed=_int(m["seed"], 0, 2**32 - 1, "seed"),
        metrics=Metrics.from_wire(m["metrics"]),
        artifact=None if m["artifact"] is None else _hex64(m["artifact"], "artifact"),
        trainer=_text(m["trainer"], MAX_SHORT_STR, "trainer"),
        note=_text(m["note"], MAX_NOTE_CHARS, "note"),
    )
    if kind == "attestation":
        return Attestation(
            subject=_hex64(m["subject"], "subject"),
            method=_choice(m["method"], ATTESTATION_METHODS, "method"),
            **common,
        )
    base = m["base"]
    diff = m["diff"]
    candidates.check_normalised(base, diff)
    parents = m["parents"]
    if not isinstance(parents, list) or len(parents) > MAX_PARENTS:
        raise ProtocolError(f"must be a list of at most {MAX_PARENTS} record ids", "parents")
    for i, parent in enumerate(parents):
        _hex64(parent, f"parents[{i}]")
    if parents != sorted(set(parents)):
        raise ProtocolError("must be sorted and without duplicates", "parents")
    return Result(
        base=base,
        diff=diff,
        parents=tuple(parents),
        budget_s=_float(m["budget_s"], 0.0, 86400.0, "budget_s", open_low=True),
        **common,
    )


_KEY_SETS: dict[tuple[str, ...], frozenset[str]] = {}


def _exact_map(value: Any, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError("must be a map", where)
    wanted = _KEY_SETS.get(keys)
    if wanted is None:  # a few fixed tuples: each set made once
        wanted = _KEY_SETS[keys] = frozenset(keys)
    if value.keys() != wanted:
        missing = [k for k in keys if k not in value]
        unknown = sorted(str(k) for k in value if k not in keys)
        parts = []
        if missing:
            parts.append(f"missing field(s) {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown field(s) {', '.join(unknown)}")
        raise ProtocolError("; ".join(parts), where)
    return value


def _hex64(value: Any, where: str) -> str:
    if type(value) is not str or not _HEX64.fullmatch(value):
        raise ProtocolError("must be 64 lowercase hex characters", where)
    return value


def _int(value: Any, low: int, high: int, where: str) -> int:
    if type(value) is not int:
        raise ProtocolError(f"must be an integer, got {type(value).__name__}", where)
    if not low <= value <= high:
        raise ProtocolError(f"{value} is outside [{low}, {high}]", where)
    return value


def _float(value: Any, low: float, high: float, where: str, *, open_low: bool = False) -> float:
    if type(value) is not float:
        raise ProtocolError(f"must be a float, got {type(value).__name__}", where)
    ok = (low < value if open_low else low <= value) and value <= high
    if not ok:
        raise ProtocolError(f"{value!r} is outside {'(' if open_low else '['}{low:g}, {high:g}]", where)
    return value


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise ProtocolError("must be true or false", where)
    return value


def _choice(value: Any, choices: tuple[str, ...], where: str) -> str:
    if type(value) is not str or value not in choices:
        raise ProtocolError(f"{value!r} is not one of {', '.join(choices)}", where)
    return value


def _text(value: Any, max_chars: int, where: str, *, empty_ok: bool = True) -> str:
    if type(value) is not str:
        raise ProtocolError("must be a string", where)
    if len(value) > max_chars:
        raise ProtocolError(f"{len(value)} characters; at most {max_chars}", where)
    if not empty_ok and not value:
        raise ProtocolError("must not be empty", where)
    if _CONTROL.search(value):
        raise ProtocolError("control characters are not allowed", where)
    return value
