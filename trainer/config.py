"""One run's full configuration: the resolved knobs plus the run settings, checked up front.

What it guarantees: `make_run_config` either returns a `RunConfig` every backend can run, or
raises ProtocolError naming the knob or setting, the value and the rule, before any data is
read or any model is built. The config is plain data (`to_json`/`from_json` round-trip), so a
child process or another backend (MLX) gets exactly what the parent checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pgolf.protocol import knobs
from p2pgolf.protocol.benchmarks import Benchmark, benchmark
from p2pgolf.protocol.errors import ProtocolError
from p2pgolf.trainer.run_plan import check_config_cost

__all__ = [
    "BACKENDS", "COMPILE_MODES", "DEVICES", "RunConfig", "make_run_config", "benchmark_vocab_size", "resolve_benchmark",
    "effective_bench_name", "standard_budget_s",
]  # fmt: skip

BACKENDS = ("auto", "torch", "mlx")
DEVICES = ("auto", "cpu", "cuda", "mps")
COMPILE_MODES = ("auto", "on", "off")  # auto: compile where it pays off at once (CUDA)
MAX_SEED = 2**32 - 1

# Tokenizer vocabulary of each benchmark task: a model must have at least this many rows.
_TASK_VOCAB = {"parameter-golf": 1024, "smoke-bytes": 256}


def benchmark_vocab_size(bench: Benchmark) -> int:
    """How many token ids the benchmark's data uses (0 when only its data can say: custom text)."""
    return _TASK_VOCAB.get(bench.task, 0)


def resolve_benchmark(bench_name: str, data_dir: str | None, budget_s: float | None = None) -> Benchmark:
    """A protocol benchmark by name (NAME or NAME@SECONDSs), or `custom` / `custom/...` for the
    dataset built by `p2pgolf data build` in `data_dir`; under `budget_s` if given."""
    if bench_name == "custom" or bench_name.startswith("custom/"):
        from p2pgolf.trainer.datasets import DataError, custom_benchmark

        if data_dir is None:
            raise ProtocolError(f"benchmark {bench_name} needs --data-dir pointing at a dataset built with `p2pgolf data build`")
        try:
            bench = custom_benchmark(data_dir, budget_s=600.0)
        except DataError as exc:
            raise ProtocolError(str(exc)) from None
    else:
        bench = benchmark(bench_name)
    return bench if budget_s is None else bench.with_budget(budget_s)


def effective_bench_name(bench: Benchmark, budget_s: float) -> str:
    """The name of the benchmark a run under `budget_s` counts for: the plain name at the
    benchmark's standard budget ("smoke"), NAME@SECONDSs under any other ("smoke@30s"), so
    what config.json and result.json say is the benchmark the run's id belongs to."""
    from p2pgolf.protocol.benchmarks import BENCHMARKS

    plain = bench.name.split("@", 1)[0]
    standard = BENCHMARKS.get(plain)
    if standard is not None and float(standard.budget_s) == float(budget_s):
        return plain
    return bench.with_budget(budget_s).name if float(bench.budget_s) != float(budget_s) else bench.name


def standard_budget_s(bench_name: str) -> float | None:
    """The standard budget of a named protocol benchmark (None for custom data)."""
    from p2pgolf.protocol.benchmarks import BENCHMARKS

    standard = BENCHMARKS.get(bench_name.split("@", 1)[0])
    return None if standard is None else float(standard.budget_s)


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs to know, and nothing about peers."""

    bench_name: str  # the benchmark the run counts for: "smoke", or "smoke@30s" under another budget
    base: str
    diff: Mapping[str, Any]  # normalised
    knobs: Mapping[str, Any]  # every knob, resolved
    seed: int
    budget_s: float
    backend: str = "auto"
    device: str = "auto"
    eval_token_cap: int = 0  # 0: the whole validation split; else score at most this many targets
    compile: str = "auto"  # torch.compile: auto (CUDA only), on (also CPU; minutes, untimed), off
    data_dir: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # free-form notes for the log
    tokenizer: str = ""  # the candidate's tokenizer variant; "" is the benchmark's own

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer the run trains and is scored with (what its record names)."""
        return self.tokenizer or self.bench.tokenizer

    @property
    def bench(self) -> Benchmark:
        """The benchmark under this run's budget (its id is what results are filed under)."""
        return resolve_benchmark(self.bench_name, self.data_dir, self.budget_s)

    def to_json(self) -> dict[str, Any]:
        return {
            "bench_name": self.bench_name,
            "bench": self.bench.id,
            "base": self.base,
            "diff": dict(self.diff),
            "knobs": dict(self.knobs),
            "seed": self.seed,
            "budget_s": self.budget_s,
            "backend": self.backend,
            "device": self.device,
            "eval_token_cap": self.eval_token_cap,
            "compile": self.compile,
            "data_dir": self.data_dir,
            "extra": dict(self.extra),
            "tokenizer": self.tokenizer,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "RunConfig":
        """Rebuild and re-check a config written by `to_json`."""
        return make_run_config(
            obj["bench_name"],
            obj["base"],
            obj["diff"],
            seed=obj["seed"],
            budget_s=obj["budget_s"],
            backend=obj["backend"],
            device=obj["device"],
            eval_token_cap=obj["eval_token_cap"],
            compile=obj.get("compile", "auto"),
            data_dir=obj["data_dir"],
            extra=obj.get("extra", {}),
            tokenizer=obj.get("tokenizer") or None,
        )


def make_run_config(
    bench_name: str,
    base: str,
    diff: Mapping[str, Any],
    *,
    seed: int = 0,
    budget_s: float | None = None,
    backend: str = "auto",
    device: str = "auto",
    eval_token_cap: int = 0,
    compile: str = "auto",
    data_dir: str | Path | None = None,
    extra: Mapping[str, Any] | None = None,
    tokenizer: str | None = None,
) -> RunConfig:
    """A checked RunConfig. `budget_s=None` takes the benchmark's own budget; `tokenizer=None`
    the benchmark's own tokenizer (else a challenge variant such as sp4096, on parameter-golf)."""
    data_dir = None if data_dir is None else str(data_dir)
    bench = resolve_benchmark(bench_name, data_dir)
    config = knobs.resolve(base, diff)
    normalised = knobs.normalise_diff(base, diff)
    if type(seed) is not int or not 0 <= seed <= MAX_SEED:
        raise ProtocolError(f"seed {seed!r} must be an integer in [0, {MAX_SEED}]")
    budget = bench.budget_s if budget_s is None else budget_s
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 86400:
        raise ProtocolError(f"budget {budget!r} must be a number of seconds in (0, 86400]")
    if backend not in BACKENDS:
        raise ProtocolError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise ProtocolError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if compile not in COMPILE_MODES:
        raise ProtocolError(f"compile mode {compile!r} is not one of {', '.join(COMPILE_MODES)}")
    if type(eval_token_cap) is not int or eval_token_cap < 0:
        raise ProtocolError(f"eval token cap {eval_token_cap!r} must be a non-negative integer (0 means all)")
    seqs = config["train_batch_tokens"] // config["train_seq_len"]
    accum = config["grad_accum_steps"]
    if accum and seqs % accum:
        raise ProtocolError(
            f"grad_accum_steps={accum} must divide the {seqs} sequences of a step (train_batch_tokens / train_seq_len)",
            "knob grad_accum_steps",
        )
    check_config_cost(config, bench.size_cap, normalised)
    variant = "" if tokenizer in (None, bench.tokenizer) else tokenizer
    need = benchmark_vocab_size(bench)
    if variant:
        from p2pgolf.trainer.datasets import CHALLENGE_VARIANTS

        if bench.task != "parameter-golf" or variant not in CHALLENGE_VARIANTS:
            known = ", ".join(CHALLENGE_VARIANTS) if bench.task == "parameter-golf" else bench.tokenizer
            raise ProtocolError(f"tokenizer {variant!r} is not one benchmark {bench.name} has data for; known: {known}")
        need = CHALLENGE_VARIANTS[variant]
    if need and config["vocab_size"] < need:
        raise ProtocolError(
            f"vocab_size={config['vocab_size']} is smaller than the {need} token ids of benchmark {bench.name}"
            + (f" in tokenizer {variant}" if variant else ""),
            "knob vocab_size",
        )
    return RunConfig(
        bench_name=effective_bench_name(bench, float(budget)),
        base=base,
        diff=normalised,
        knobs=config,
        seed=seed,
        budget_s=float(budget),
        backend=backend,
        device=device,
        eval_token_cap=eval_token_cap,
        compile=compile,
        data_dir=data_dir,
        extra=dict(extra or {}),
        tokenizer=variant,
    )
