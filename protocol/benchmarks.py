"""Benchmark ids: which task, validation data, budget and size cap a result was measured on.

Results from different benchmarks never mix, and each benchmark has its own gossip topic. The
id is a hash over exactly the things that make two measurements comparable. val_bpb is
tokenizer-agnostic, so the tokenizer is part of the candidate (protocol/candidates.py), not of
the id: a benchmark only names the tokenizer the built-in trainer uses on its data by default.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from p2pgolf.protocol import canonical
from p2pgolf.protocol.errors import ProtocolError

BENCHMARK_DOMAIN = b"p2pgolf/benchmark/v2\n"
TOPIC_PREFIX = "/p2pgolf/records/2/"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# sha256 of the challenge tokenizer file fineweb_1024_bpe.model (sp1024).
SP1024_TOKENIZER_SHA256 = "849ea920119b5135ace5016137e82ab397738fc29d723d5f9a6b74c4e31af191"
# The challenge's validation text is identified by where it lives (its bytes are ~120 MB and are
# not shipped): sha256 of this descriptor. Every tokenizer variant of the dataset tokenizes the
# same first 50,000 documents, so one descriptor covers them all.
CHALLENGE_VAL_DESCRIPTOR = "hf:willdepueoai/parameter-golf:datasets/fineweb10B_*/fineweb_val_*.bin:first-50000-docs"
# Tokenizer variants with a known file digest (None: the variant exists but its file is not pinned here).
BYTE256_TOKENIZER_SHA256 = hashlib.sha256(b"byte-level-256").hexdigest()
TOKENIZERS: dict[str, str | None] = {
    "sp1024": SP1024_TOKENIZER_SHA256,
    "sp4096": None,
    "sp8192": None,
    "byte256": BYTE256_TOKENIZER_SHA256,
}
# The smoke benchmark's validation tokens are generated (trainer.smoke); this is the sha256 of
# their bytes, checked by a test so every machine generates the same data.
SMOKE_VAL_SHA256 = "510d25ecbf8ecb5d73a9d02e105c03b459119a774bb17b73e23d939a284f6599"  # trainer/smoke.py val_sha256()


@dataclass(frozen=True)
class Benchmark:
    """What a result is comparable under. Hashed into the id: task, val_digest, budget_s and
    size_cap. Not hashed: `name` (a label), `tokenizer` (the variant the built-in trainer uses
    by default on this data) and `tokenizer_digest` (that tokenizer file's sha256)."""

    name: str
    task: str
    val_digest: str
    tokenizer_digest: str
    budget_s: float
    size_cap: int
    tokenizer: str = "sp1024"

    def __post_init__(self) -> None:
        for field in ("val_digest", "tokenizer_digest"):
            if not _HEX64.match(getattr(self, field)):
                raise ProtocolError("must be 64 lowercase hex characters", f"benchmark {field}")
        if not 0 < self.budget_s <= 86400:
            raise ProtocolError(f"{self.budget_s} is outside (0, 86400] seconds", "benchmark budget_s")
        if not 0 < self.size_cap <= 10**12:
            raise ProtocolError(f"{self.size_cap} is outside (0, 10^12] bytes", "benchmark size_cap")

    @property
    def id(self) -> str:
        payload = canonical.encode(
            {
                "task": self.task,
                "val": self.val_digest,
                "budget_s": float(self.budget_s),
                "size_cap": int(self.size_cap),
            }
        )
        return hashlib.sha256(BENCHMARK_DOMAIN + payload).hexdigest()

    @property
    def topic(self) -> str:
        """The gossip topic of this benchmark."""
        return f"{TOPIC_PREFIX}{self.id}"

    def with_budget(self, budget_s: float) -> "Benchmark":
        """The same task and data under another budget (a different benchmark id)."""
        if float(budget_s) == float(self.budget_s):
            return self
        base_name = self.name.split("@", 1)[0]
        return replace(self, name=f"{base_name}@{budget_s:g}s", budget_s=float(budget_s))


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            name="parameter-golf/sp1024-10min",
            task="parameter-golf",
            val_digest=_sha256_text(CHALLENGE_VAL_DESCRIPTOR),
            tokenizer_digest=SP1024_TOKENIZER_SHA256,
            budget_s=600.0,
            size_cap=16_000_000,
            tokenizer="sp1024",
        ),
        Benchmark(
            name="smoke",
            task="smoke-bytes",
            val_digest=SMOKE_VAL_SHA256,
            tokenizer_digest=BYTE256_TOKENIZER_SHA256,
            budget_s=60.0,
            size_cap=16_000_000,
            tokenizer="byte256",
        ),
    )
}


def benchmark(name: str) -> Benchmark:
    """The named benchmark; `NAME@SECONDSs` picks another budget. ProtocolError if unknown."""
    base, _, budget = name.partition("@")
    if base not in BENCHMARKS:
        raise ProtocolError(f"unknown benchmark {base!r}; known: {', '.join(sorted(BENCHMARKS))}")
    bench = BENCHMARKS[base]
    if budget:
        try:
            seconds = float(budget.removesuffix("s"))
        except ValueError:
            raise ProtocolError(f"bad budget {budget!r} in benchmark name; expected for example smoke@30s") from None
        bench = bench.with_budget(seconds)
    return bench


def by_id(bench_id: str) -> Benchmark | None:
    """A known benchmark with this id (default budgets only), if any."""
    for bench in BENCHMARKS.values():
        if bench.id == bench_id:
            return bench
    return None
