"""What one training log of a record folder states: seed, final score, steps, sizes, hardware.

Competition scripts print, among much else: a `Hyperparameters:` block (`  name: value` lines),
`seed:N`, `step:N/M ... train_time:Tms step_avg:Xms`, `Total submission size ...: N bytes`,
`Code size: N bytes`, nvidia-smi's table (`|   0  NVIDIA H100 80GB HBM3   On | ...`, memory
`.../ 81559MiB`), `world_size:N`, and the scores: one or more `<name>_exact val_loss:X val_bpb:Y`
lines, of which the last is the one the challenge counts. `parse_log` reads these; a field the
log does not print is None. It never raises for odd text (a log is free-form), only the
importer decides what a missing field means.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

_EXACT = re.compile(r"(?:^|\s)([A-Za-z0-9_]+_exact)\s+val_loss:\s*([0-9.eE+-]+)\s+val_bpb:\s*([0-9.eE+-]+)")
_STEP = re.compile(r"\bstep:\s*(\d+)/\d+")
_TRAIN_TIME = re.compile(r"\btrain_time:\s*(\d+(?:\.\d+)?)ms")
_STEP_AVG = re.compile(r"\bstep_avg:\s*(\d+(?:\.\d+)?)ms")
_TOTAL = re.compile(r"Total submission size[^:\n]*:\s*(\d+)\s*bytes")
_CODE = re.compile(r"Code size:\s*(\d+)\s*bytes")
_EVAL_TIME = re.compile(r"\beval_time:\s*(\d+(?:\.\d+)?)ms")
_SEED = re.compile(r"^seed:\s*(\d+)\s*$", re.M)
_WORLD = re.compile(r"\bworld_size:\s*(\d+)")
_GPU_ROW = re.compile(r"^\|\s+(\d+)\s+(NVIDIA [^|]*?)\s+(?:On|Off)\s+\|", re.M)
_GPU_MEM = re.compile(r"\b\d+MiB\s*/\s*(\d+)MiB")
_VAL_TOKENS = re.compile(r"val_loader:.*?\btokens:\s*(\d+)")
_HP_LINE = re.compile(r"^\s+([A-Za-z_][A-Za-z0-9_]*):\s?(.*)$")


@dataclass(frozen=True)
class LogInfo:
    """The facts one log prints (None: not printed)."""

    file: str
    seed: int | None = None
    score_line: str | None = None  # the name of the final exact line, e.g. final_int8_zlib_roundtrip_exact
    val_bpb: float | None = None
    val_loss: float | None = None
    steps: int | None = None
    train_time_ms: float | None = None
    step_avg_ms: float | None = None
    eval_time_ms: float | None = None
    artifact_bytes: int | None = None
    code_bytes: int | None = None
    gpus: tuple[str, ...] = ()  # one model name per GPU row of nvidia-smi
    gpu_memory_mib: int | None = None
    world_size: int | None = None
    val_tokens: int | None = None
    hyperparameters: dict[str, str] = field(default_factory=dict)  # the printed block, as text


def parse_log(text: str, file: str = "train.log") -> LogInfo:
    """The facts of one log (see the module docstring)."""
    hp = _hyperparameter_block(text)
    exact = list(_EXACT.finditer(text))
    last = exact[-1] if exact else None
    seed = _last_int(_SEED, text)
    if seed is None and "seed" in hp and hp["seed"].strip().isdigit():
        seed = int(hp["seed"].strip())
    world = _last_int(_WORLD, text)
    if world is None and hp.get("world_size", "").strip().isdigit():
        world = int(hp["world_size"].strip())
    rows: dict[int, str] = {}
    for m in _GPU_ROW.finditer(text):
        rows.setdefault(int(m.group(1)), " ".join(m.group(2).split()))
    mems = [int(m.group(1)) for m in _GPU_MEM.finditer(text)]
    return LogInfo(
        file=file,
        seed=seed,
        score_line=last.group(1) if last else None,
        val_bpb=_float(last.group(3)) if last else None,
        val_loss=_float(last.group(2)) if last else None,
        steps=_last_int(_STEP, text),
        train_time_ms=_last_float(_TRAIN_TIME, text),
        step_avg_ms=_last_float(_STEP_AVG, text),
        eval_time_ms=_last_float(_EVAL_TIME, text[last.start():]) if last else None,
        artifact_bytes=_last_int(_TOTAL, text),
        code_bytes=_last_int(_CODE, text),
        gpus=tuple(rows[i] for i in sorted(rows)),
        gpu_memory_mib=min(mems) if mems else None,
        world_size=world,
        val_tokens=_last_int(_VAL_TOKENS, text),
        hyperparameters=hp,
    )


def _hyperparameter_block(text: str) -> dict[str, str]:
    """The `Hyperparameters:` block: indented `name: value` lines right after the header."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().lower() == "hyperparameters:":
            out: dict[str, str] = {}
            for item in lines[i + 1 :]:
                m = _HP_LINE.match(item)
                if not m:
                    break
                out[m.group(1)] = m.group(2).strip()
            return out
    return {}


def _last_int(pattern: re.Pattern, text: str) -> int | None:
    found = pattern.findall(text)
    return int(found[-1]) if found else None


def _last_float(pattern: re.Pattern, text: str) -> float | None:
    found = pattern.findall(text)
    return _float(found[-1]) if found else None


def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value == value and abs(value) != float("inf") else None
