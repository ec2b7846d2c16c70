"""What a record folder's submission*.json states, in one shape whatever its layout.

Layouts seen in the competition: the score as `val_bpb` or `mean_val_bpb`; per-seed numbers in
`seed_results` (a map of seed to metrics) or in `seeds` (a list of seed numbers, or a list of
maps with a `seed` field); sizes as `bytes_total`/`bytes_code` or `artifact_bytes`, or none;
`hardware` a free string or absent; `date` as YYYY-MM-DD or an ISO time. `parse_submission`
reads any of them and raises FolderError naming the field for anything it cannot use; it does
not judge (the importer decides what a seed needs).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from p2pgolf.pool.bridge.errors import FolderError


@dataclass(frozen=True)
class SeedNumbers:
    """One seed's numbers as the JSON states them (None where it says nothing)."""

    seed: int
    val_bpb: float | None = None
    val_loss: float | None = None
    steps: int | None = None
    artifact_bytes: int | None = None
    train_time_s: float | None = None
    eval_time_s: float | None = None


@dataclass(frozen=True)
class Submission:
    """The fields of a submission.json the bridge uses."""

    file: str
    author: str = ""
    github_id: str = ""
    name: str = ""
    date_ms: int | None = None
    track: str = ""
    val_bpb: float | None = None  # the headline score (val_bpb, else mean_val_bpb)
    val_loss: float | None = None
    seeds: tuple[SeedNumbers, ...] = ()
    hardware: str = ""
    bytes_total: int | None = None
    bytes_code: int | None = None
    steps: int | None = None
    wallclock_s: float | None = None
    pr: int | None = None
    extra_keys: tuple[str, ...] = field(default=())


def parse_submission(text: str, file: str = "submission.json") -> Submission:
    """Parse the text of a submission.json; FolderError(file, field, why) if it cannot be used."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FolderError(file, "", f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise FolderError(file, "", "expected a JSON object")
    headline = _number(doc, "val_bpb", file)
    if headline is None:
        headline = _number(doc, "mean_val_bpb", file)
    seeds = _seeds(doc, file)
    return Submission(
        file=file,
        author=_text(doc, "author"),
        github_id=_text(doc, "github_id"),
        name=_text(doc, "name"),
        date_ms=_date(doc, file),
        track=_text(doc, "track"),
        val_bpb=headline,
        val_loss=_number(doc, "val_loss", file) if "val_loss" in doc else _number(doc, "mean_val_loss", file),
        seeds=seeds,
        hardware=_text(doc, "hardware") or _text(doc, "gpu"),
        bytes_total=_count(doc, "bytes_total", file) if "bytes_total" in doc else _count(doc, "artifact_bytes", file),
        bytes_code=_count(doc, "bytes_code", file),
        steps=_count(doc, "steps", file) if "steps" in doc else _count(doc, "step_stop", file),
        wallclock_s=_number(doc, "wallclock_seconds", file),
        pr=_count(doc, "pr", file) if "pr" in doc else _count(doc, "pr_number", file),
        extra_keys=tuple(sorted(k for k in doc if isinstance(k, str))),
    )


def _seeds(doc: dict, file: str) -> tuple[SeedNumbers, ...]:
    out: dict[int, SeedNumbers] = {}
    results = doc.get("seed_results")
    if results is not None:
        if not isinstance(results, dict):
            raise FolderError(file, "seed_results", "expected a map of seed to metrics")
        for key, metrics in results.items():
            seed = _seed_value(key, file, f"seed_results.{key}")
            out[seed] = _seed_numbers(seed, metrics, file, f"seed_results.{key}")
    listed = doc.get("seeds")
    if listed is not None:
        if not isinstance(listed, list):
            raise FolderError(file, "seeds", "expected a list of seeds")
        for i, item in enumerate(listed):
            where = f"seeds[{i}]"
            if isinstance(item, dict):
                seed = _seed_value(item.get("seed"), file, f"{where}.seed")
                out[seed] = _seed_numbers(seed, item, file, where)
            else:
                seed = _seed_value(item, file, where)
                out.setdefault(seed, SeedNumbers(seed))
    if not out and "seed" in doc:
        seed = _seed_value(doc["seed"], file, "seed")
        out[seed] = SeedNumbers(seed)
    return tuple(out[s] for s in sorted(out))


def _seed_numbers(seed: int, metrics: Any, file: str, where: str) -> SeedNumbers:
    if not isinstance(metrics, dict):
        # some folders give just the score per seed
        if isinstance(metrics, (int, float)) and not isinstance(metrics, bool):
            return SeedNumbers(seed, val_bpb=_finite(metrics, file, where))
        raise FolderError(file, where, "expected the seed's metrics as a map")
    return SeedNumbers(
        seed=seed,
        val_bpb=_number(metrics, "val_bpb", file, where),
        val_loss=_number(metrics, "val_loss", file, where),
        steps=_count(metrics, "steps", file, where),
        artifact_bytes=_count(metrics, "artifact_bytes", file, where) if "artifact_bytes" in metrics else _count(metrics, "bytes_total", file, where),
        train_time_s=_number(metrics, "train_time_s", file, where),
        eval_time_s=_number(metrics, "eval_time_s", file, where),
    )


def _seed_value(value: Any, file: str, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if type(value) is not int or not 0 <= value <= 2**32 - 1:
        raise FolderError(file, where, f"{value!r} is not a seed (an integer in [0, 2^32-1])")
    return value


def _text(doc: dict, key: str) -> str:
    value = doc.get(key)
    return " ".join(value.split()) if isinstance(value, str) else ""


def _number(doc: dict, key: str, file: str, where: str = "") -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    return _finite(value, file, f"{where}.{key}" if where else key)


def _finite(value: Any, file: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FolderError(file, where, f"{value!r} is not a finite number")
    return float(value)


def _count(doc: dict, key: str, file: str, where: str = "") -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    name = f"{where}.{key}" if where else key
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or value < 0:
        raise FolderError(file, name, f"{value!r} is not a non-negative integer")
    return value


def _date(doc: dict, file: str) -> int | None:
    value = doc.get("date")
    if value is None:
        return None
    if not isinstance(value, str):
        raise FolderError(file, "date", f"{value!r} is not a date")
    text = value.strip().replace("Z", "+00:00")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise FolderError(file, "date", f"{value!r} is neither YYYY-MM-DD nor an ISO time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)
