"""One external proposer as an operator of the research loop, and its record.

`ProposerOperator.request(...)` builds the situation, spawns the proposer (spawn.py), checks
its answer (answer.py), logs every dropped proposal with its reason, and appends one line per
request to research/proposers.jsonl (the experiment number, seconds, offered, kept, dropped
reasons, tokens reported, error). From that record come the meta level's view of it
(`failed_outcomes`: a request that gave nothing is an outcome of gain 0) and the usage shown
by `p2pgolf status --json` (`usage_summary`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from p2pgolf.node.proposers.answer import Answer, read_answer
from p2pgolf.node.proposers.spawn import spawn
from p2pgolf.node.proposers.spec import ProposerSpec

log = logging.getLogger(__name__)

PROPOSERS_JOURNAL = "proposers.jsonl"
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_BYTES = 256 * 1024


class ProposerOperator:
    """One proposer with its journal. `request` never raises for anything the proposer does."""

    def __init__(self, spec: ProposerSpec, journal_dir: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.spec = spec
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.path = journal_dir / PROPOSERS_JOURNAL
        journal_dir.mkdir(parents=True, exist_ok=True)

    @property
    def operator(self) -> str:
        return self.spec.operator

    def request(self, doc: Mapping[str, Any], n: int, **check: Any) -> tuple[Answer, float]:
        """Ask once; returns the checked answer and the seconds it took. `check` is passed to
        answer.read_answer (tokenizer, runnable, vocabularies, known_record)."""
        stdin = encode(doc)
        result = spawn(self.spec.argv, stdin, timeout_s=self.timeout_s, max_bytes=self.max_bytes)
        if result.error is not None:
            answer = Answer(dropped=[f"request failed: {result.error}"])
            if result.stderr_tail.strip():
                log.info("proposer %s stderr: %s", self.spec.name, result.stderr_tail.strip()[-300:])
        else:
            try:
                answer = read_answer(result.stdout, self.operator, **check)
            except Exception as exc:  # a bug in checking costs this request, never the node
                log.exception("proposer %s: its answer could not be checked", self.spec.name)
                answer = Answer(dropped=[f"answer could not be checked: {type(exc).__name__}: {str(exc)[:200]}"])
        for reason in answer.dropped:
            log.warning("proposer %s: dropped: %s", self.spec.name, reason)
        offered = len(answer.proposals) + sum(1 for r in answer.dropped if r.startswith("proposal "))
        self._append({
            "n": n, "at": time.time(), "proposer": self.spec.name, "seconds": round(result.seconds, 3), "offered": offered,
            "kept": len(answer.proposals), "dropped": answer.dropped[:20], "tokens": answer.tokens, "error": result.error,
        })  # fmt: skip
        return answer, result.seconds

    def entries(self) -> list[dict[str, Any]]:
        return [e for e in read_journal(self.path) if e.get("proposer") == self.spec.name]

    def failed_outcomes(self, budget_s: float) -> list[tuple[int, Any]]:
        """(experiment number, Outcome) for each request that gave nothing to run."""
        from p2pgolf.pool.bandit import Outcome

        return [(int(e["n"]), Outcome(self.operator, False, 0.0, 1.0 + float(e["seconds"]) / max(budget_s, 1.0), experiment=False)) for e in self.entries() if not e.get("kept")]

    def seconds_of(self, n: int) -> float:
        """Seconds the requests made while choosing experiment `n` took."""
        return sum(float(e["seconds"]) for e in self.entries() if e.get("n") == n)

    def usage_today(self, now: float | None = None) -> dict[str, Any]:
        return usage_summary(self.path, now).get(self.spec.name, {"requests": 0, "tokens": 0, "kept": 0, "dropped": 0, "failed": 0})

    def _append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The proposers' journal lines (torn lines skipped)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and isinstance(e.get("proposer"), str) and type(e.get("n")) is int:
            out.append(e)
    return out


def usage_summary(path: Path, now: float | None = None) -> dict[str, dict[str, Any]]:
    """Per proposer, since midnight UTC: requests, tokens it reported, proposals kept and
    dropped, failed requests; and over all time: requests_total, tokens_total."""
    now = time.time() if now is None else now
    midnight = now - now % 86400
    out: dict[str, dict[str, Any]] = {}
    for e in read_journal(path):
        u = out.setdefault(e["proposer"], {"requests": 0, "tokens": 0, "kept": 0, "dropped": 0, "failed": 0, "requests_total": 0, "tokens_total": 0})
        u["requests_total"] += 1
        u["tokens_total"] += int(e.get("tokens") or 0)
        if float(e.get("at", 0)) >= midnight:
            u["requests"] += 1
            u["tokens"] += int(e.get("tokens") or 0)
            u["kept"] += int(e.get("kept") or 0)
            u["dropped"] += len(e.get("dropped") or ())
            u["failed"] += 1 if e.get("error") else 0
    return out


def encode(doc: Any) -> bytes:
    """Strict JSON (a non-finite number becomes null)."""
    return json.dumps(_finite(doc), sort_keys=True, separators=(",", ":")).encode()


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return str(x)


def merged_history(numbered: list[tuple[int, Any]], operators: list["ProposerOperator"], budget_s: float) -> list[Any]:
    """The meta level's history: the journal's (n, Outcome) pairs with each proposer's empty
    requests placed before the experiment whose choice they were part of."""
    keyed = [(n, 1, k, o) for k, (n, o) in enumerate(numbered)]
    for op in operators:
        keyed += [(n, 0, k, o) for k, (n, o) in enumerate(op.failed_outcomes(budget_s))]
    return [o for *_, o in sorted(keyed, key=lambda t: t[:3])]
