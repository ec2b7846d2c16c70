"""One record folder -> the result records it supports, signed later by the importer's key.

`import_folder` reads a folder (pool/bridge/folder.py) and builds one `Result` per seed that a
log or the submission.json supports:
- candidate: the script (`script:<sha256 of the file whose hyperparameters were run>`), its
  hyperparameters as run (pool/bridge/hparams.py) minus the script's defaults, and the tokenizer
  (`sp<VOCAB_SIZE>`);
- val_bpb / val_loss: the log's final `*_exact` line when it has one, else the JSON's per-seed
  numbers (or its headline when it states a single run); steps, train tokens (steps x
  TRAIN_BATCH_TOKENS), artifact bytes and validation tokens as logged, else as stated;
- hardware: the log's nvidia-smi rows, else the JSON's string, else (10min_16mb only, whose
  rules fix it) 8xH100 SXM;
- created_ms: the JSON's date, else the folder name's YYYY-MM-DD;
- note: the provenance marker (pool/bridge/provenance.py) with track, folder, GitHub id, PR,
  log file and seed.
Anything that stops a folder (no score, no loss, size over the cap, no date, unreadable script,
an unknown track) raises FolderError naming the file and field, and nothing of the folder is
kept. Seeds a folder lists without numbers for them are reported in `skipped`, not invented.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from p2pgolf.pool.bridge import hardware_text
from p2pgolf.pool.bridge.builtin_equivalent import BuiltinEquivalent, builtin_equivalent
from p2pgolf.pool.bridge.errors import FolderError
from p2pgolf.pool.bridge.folder import RecordFolder, find_files, read_text
from p2pgolf.pool.bridge.hparams import merge_hyperparameters
from p2pgolf.pool.bridge.provenance import make_note
from p2pgolf.pool.bridge.run_command import readme_env
from p2pgolf.pool.bridge.submission_json import SeedNumbers, Submission, parse_submission
from p2pgolf.pool.bridge.train_log import LogInfo, parse_log
from p2pgolf.protocol.benchmarks import benchmark
from p2pgolf.protocol.candidates import script_base
from p2pgolf.protocol.records import HardwareClass, Metrics, Result

SIZE_CAP = 16_000_000
TRACKS = {"10min_16mb": "parameter-golf/sp1024-10min", "non_record_16mb": "parameter-golf/sp1024-10min"}
TRACK_HARDWARE = {"10min_16mb": HardwareClass("cuda", "NVIDIA H100 80GB HBM3", 8, 81559)}
TRAINER = "parameter-golf-script"
_SEED_IN_NAME = re.compile(r"seed[_-]?(\d+)", re.I)
_DATE_IN_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})")


@dataclass(frozen=True)
class FolderImport:
    """What one folder yields: its records (unsigned) and what the report says about it."""

    folder: RecordFolder
    records: tuple[Result, ...]
    script_sha: str
    builtin: BuiltinEquivalent
    hyperparameter_sources: dict[str, str]
    skipped: tuple[str, ...] = ()  # seeds or logs not imported, each with its reason
    hardware_from: str = ""  # "log", "submission.json" or "track rule"
    provenance: dict[str, Any] = field(default_factory=dict)


def import_folder(path: str | Path, importer: str) -> FolderImport:
    """The records of the folder at `path`, authored by `importer` (hex key). FolderError if none."""
    from p2pgolf.protocol.script_hparams import read_hyperparameters

    folder = find_files(path)
    root = folder.path
    sub = parse_submission(read_text(root, folder.submission), folder.submission.name) if folder.submission else None
    script_bytes = folder.script.read_bytes()
    script_name = folder.script.name
    try:
        vocab = read_hyperparameters(script_bytes)
    except Exception as exc:  # ScriptParseError (a ProtocolError) names what could not be read
        raise FolderError(script_name, "hyperparameters", str(exc)) from None
    readme_name = folder.readme.name if folder.readme else "README.md"
    env = readme_env(read_text(root, folder.readme)) if folder.readme else {}
    logs = [parse_log(read_text(root, p), str(p.relative_to(root))) for p in folder.logs]

    track = folder.track or (sub.track if sub else "")
    if track.startswith("track_"):
        track = track[len("track_"):]
    if track not in TRACKS:
        raise FolderError(folder.name, "track", f"{track or 'none'!r} is not a known track ({', '.join(TRACKS)}); put the folder under records/track_<name>/ or state it in submission.json")

    default_seed = _default_seed(vocab, env, readme_name)
    skipped: list[str] = []
    runs: dict[int, tuple[LogInfo | None, SeedNumbers | None]] = {}
    for info in logs:
        if info.val_bpb is None:
            skipped.append(f"{info.file}: no final *_exact val_loss/val_bpb line")
            continue
        seed = info.seed if info.seed is not None else _seed_from_name(info.file)
        if seed is None:
            seed = default_seed
        if seed is None:
            skipped.append(f"{info.file}: no seed printed, in its name or in the script")
            continue
        if seed in runs:
            skipped.append(f"{info.file}: a second log of seed {seed}")
            continue
        runs[seed] = (info, None)
    json_seeds = list(sub.seeds) if sub else []
    for numbers in json_seeds:
        log = runs.get(numbers.seed, (None, None))[0]
        if log is None and numbers.val_bpb is None:
            skipped.append(f"seed {numbers.seed}: listed in {sub.file} without a val_bpb or a log")
            continue
        runs[numbers.seed] = (log, numbers)
    if not runs and sub is not None and sub.val_bpb is not None and not json_seeds and "mean_val_bpb" not in sub.extra_keys:
        seed = default_seed if default_seed is not None else 0
        runs[seed] = (None, SeedNumbers(seed, val_bpb=sub.val_bpb, val_loss=sub.val_loss, steps=sub.steps, artifact_bytes=sub.bytes_total))
    if not runs:
        where = sub.file if sub else folder.name
        raise FolderError(where, "val_bpb", "no per-seed score: no log with a final *_exact line and no val_bpb (or seed_results) for a single run" + (f" ({'; '.join(skipped)})" if skipped else ""))

    created_ms = _created_ms(folder, sub)
    hw, hw_from = _hardware(logs, sub, track, folder)
    bench_name = TRACKS[track]
    records: list[Result] = []
    sources: dict[str, str] = {}
    builtin: BuiltinEquivalent | None = None
    for seed in sorted(runs):
        log, numbers = runs[seed]
        merged = merge_hyperparameters(vocab, env, readme_name, log.hyperparameters if log else {}, log.file if log else "")
        if not sources:
            sources = dict(merged.source)  # the first seed's (each seed's log may differ; the diff is checked per record)
        budget = _budget(track, vocab, env, readme_name, log, sub)
        metrics = _metrics(seed, log, numbers, sub, merged.values, len(runs))
        if metrics.artifact_bytes > SIZE_CAP:
            where = log.file if log and log.artifact_bytes else (sub.file if sub else folder.name)
            raise FolderError(where, "artifact bytes", f"{metrics.artifact_bytes:,} bytes is over the {SIZE_CAP:,}-byte cap")
        tokenizer = f"sp{merged.values['VOCAB_SIZE']}" if isinstance(merged.values.get("VOCAB_SIZE"), int) else "sp1024"
        bench = benchmark(bench_name).with_budget(budget)
        note = make_note({
            "track": track, "folder": folder.name, "github": sub.github_id if sub else "",
            "pr": sub.pr if sub and sub.pr else None, "log": log.file if log else (sub.file if sub else ""), "seed": seed,
        })  # fmt: skip
        records.append(Result(
            bench=bench.id, author=importer, created_ms=created_ms, base=script_base(hashlib.sha256(script_bytes).hexdigest()),
            diff=merged.diff, tokenizer=tokenizer, hw=hw, budget_s=float(budget), seed=seed, metrics=metrics,
            parents=(), artifact=None, trainer=TRAINER, note=note,
        ))  # fmt: skip
        if builtin is None:
            builtin = builtin_equivalent(merged.values)
    return FolderImport(
        folder=folder,
        records=tuple(records),
        script_sha=hashlib.sha256(script_bytes).hexdigest(),
        builtin=builtin,
        hyperparameter_sources=sources,
        skipped=tuple(skipped),
        hardware_from=hw_from,
        provenance={"track": track, "folder": folder.name, "author": sub.author if sub else "", "github": sub.github_id if sub else "", "pr": sub.pr if sub else None, "script": folder.script.name, "entry": folder.entry.name},
    )


def _default_seed(vocab: Any, env: dict[str, str], readme_name: str) -> int | None:
    if "SEED" in env and env["SEED"].strip().isdigit():
        return int(env["SEED"].strip())
    if "SEED" in vocab.params and isinstance(vocab.params["SEED"].default, int) and not isinstance(vocab.params["SEED"].default, bool):
        return vocab.params["SEED"].default
    return None


def _seed_from_name(name: str) -> int | None:
    m = _SEED_IN_NAME.search(Path(name).name)
    return int(m.group(1)) if m else None


def _created_ms(folder: RecordFolder, sub: Submission | None) -> int:
    if sub is not None and sub.date_ms is not None:
        return sub.date_ms
    m = _DATE_IN_NAME.match(folder.name)
    if m:
        return int(datetime.strptime(m.group(1), "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)
    raise FolderError(sub.file if sub else folder.name, "date", "no date in submission.json nor YYYY-MM-DD at the start of the folder name")


def _hardware(logs: list[LogInfo], sub: Submission | None, track: str, folder: RecordFolder) -> tuple[HardwareClass, str]:
    for info in logs:
        hw = hardware_text.from_log(info.gpus, info.world_size, info.gpu_memory_mib)
        if hw is not None:
            return hw, "log"
    if sub is not None and sub.hardware:
        hw = hardware_text.from_text(sub.hardware)
        if hw is not None:
            return hw, sub.file
    if track in TRACK_HARDWARE:
        return TRACK_HARDWARE[track], "track rule"
    where = sub.file if sub else folder.name
    said = f" ({sub.hardware!r} names no known GPU and count)" if sub and sub.hardware else ""
    raise FolderError(where, "hardware", f"no device lines in the logs and no hardware string{said}")


def _budget(track: str, vocab: Any, env: dict[str, str], readme_name: str, log: LogInfo | None, sub: Submission | None) -> float:
    if track == "10min_16mb":
        return 600.0
    text = None
    if log is not None and "max_wallclock_seconds" in log.hyperparameters:
        text = log.hyperparameters["max_wallclock_seconds"]
    elif "MAX_WALLCLOCK_SECONDS" in env:
        text = env["MAX_WALLCLOCK_SECONDS"]
    if text is not None:
        try:
            seconds = float(text)
        except ValueError:
            seconds = 0.0
    elif sub is not None and sub.wallclock_s:
        seconds = sub.wallclock_s
    else:
        param = vocab.params.get("MAX_WALLCLOCK_SECONDS")
        seconds = float(param.default) if param is not None and isinstance(param.default, (int, float)) else 0.0
    if not 0 < seconds <= 86400:
        raise FolderError(log.file if log else (sub.file if sub else readme_name), "max_wallclock_seconds", f"no training budget in (0, 86400] s stated (got {seconds:g})")
    return seconds


def _metrics(seed: int, log: LogInfo | None, numbers: SeedNumbers | None, sub: Submission | None, values: dict[str, Any], n_runs: int) -> Metrics:
    single = sub is not None and n_runs == 1
    val_bpb = (log.val_bpb if log else None) or (numbers.val_bpb if numbers else None)
    val_loss = (log.val_loss if log and log.val_bpb is not None else None) or (numbers.val_loss if numbers else None) or (sub.val_loss if single else None)
    where = log.file if log else (sub.file if sub else "")
    if val_bpb is None or not 0 < val_bpb <= 100:
        raise FolderError(where, "val_bpb", f"seed {seed}: {val_bpb!r} is not a score in (0, 100]")
    if val_loss is None or not 0 < val_loss <= 100:
        raise FolderError(where, "val_loss", f"seed {seed}: not stated (the log's *_exact line or the JSON's val_loss)")
    steps = (log.steps if log else None) or (numbers.steps if numbers else None) or (sub.steps if single else None) or 0
    artifact = (log.artifact_bytes if log else None) or (numbers.artifact_bytes if numbers else None) or (sub.bytes_total if sub else None) or 0
    batch = values.get("TRAIN_BATCH_TOKENS")
    tokens = steps * batch if isinstance(batch, int) and not isinstance(batch, bool) else 0
    return Metrics(
        val_bpb=float(val_bpb), val_loss=float(val_loss), steps=int(steps), train_tokens=int(tokens),
        artifact_bytes=int(artifact), eval_tokens=int(log.val_tokens or 0) if log else 0, eval_partial=False,
    )  # fmt: skip
