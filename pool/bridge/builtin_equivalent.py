"""Is a record's configuration a built-in candidate? The naive-baseline knob diff it amounts to.

The early competition records are the challenge's baseline script with other hyperparameter
values; our knob vocabulary names the baseline's settings as that script does
(NUM_LAYERS -> num_layers). A folder's configuration is called *expressible* when every
hyperparameter its script reads is either a knob of the same meaning (its lower-case name, or
`_RENAMED`: `WARMDOWN_ITERS` is `warmdown_steps`, the same wall-clock warm-down over the last N
steps at the mean step time; the later records' loop start and weight decays have our names), or one with no effect on the score (`_NO_EFFECT`: logging,
validation cadence, the compile warm-up that is undone),
and the resulting knobs pass the vocabulary's checks. This judges names and values only: a
script that changed the model's code without a new hyperparameter would pass, which is why
`pool explain` shows it as "equivalent built-in candidate", beside the script candidate, never
instead of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pgolf.protocol import knobs
from p2pgolf.protocol.errors import ProtocolError

BASE = "naive-baseline"
TOKENIZER = "sp1024"  # the built-in trainer's tokenizer on the challenge data
_NO_EFFECT = frozenset({
    "ITERATIONS", "VAL_LOSS_EVERY", "TRAIN_LOG_EVERY", "VAL_BATCH_SIZE", "WARMUP_STEPS", "RUN_ID",
    "DATA_PATH", "TOKENIZER_PATH", "SEED", "MAX_WALLCLOCK_SECONDS",
})  # fmt: skip
_RENAMED = {
    "WARMDOWN_ITERS": "warmdown_steps", "ENABLE_LOOPING_AT": "loop_from_frac",
    "MUON_WD": "muon_weight_decay", "ADAM_WD": "adam_weight_decay", "EMBED_WD": "embed_weight_decay",
    "BIGRAM_VOCAB_SIZE": "bigram_buckets", "XSA_LAST_N": "xsa_last_n", "ROPE_DIMS": "rope_dims", "LN_SCALE": "ln_scale",
    "VE_DIM": "ve_dim", "MUON_ROW_NORMALIZE": "muon_row_normalize", "PARALLEL_START_LAYER": "parallel_from",
    "NUM_LOOPS": "num_loops", "LOOP_START": "loop_start", "LOOP_END": "loop_end",
}  # fmt: skip


@dataclass(frozen=True)
class BuiltinEquivalent:
    """The built-in candidate a script configuration amounts to, or why there is none."""

    base: str | None
    diff: dict[str, Any]
    reason: str  # "" when expressible, else the first name or rule that is not
    tokenizer: str = TOKENIZER

    @property
    def candidate(self) -> str | None:
        """The built-in candidate's id, or None when there is none."""
        from p2pgolf.protocol.candidates import candidate_id

        return candidate_id(self.base, self.diff, self.tokenizer) if self.base else None


def builtin_equivalent(values: Mapping[str, Any]) -> BuiltinEquivalent:
    """The knob diff over naive-baseline of a script configuration (every hyperparameter's value as run)."""
    config: dict[str, Any] = {}
    for name in sorted(values):
        if name in _NO_EFFECT:
            continue
        if name == "VOCAB_SIZE" and values[name] != 1024:
            return BuiltinEquivalent(None, {}, f"VOCAB_SIZE={values[name]} needs another tokenizer than the built-in trainer's sp1024")
        knob = knobs.KNOBS.get(_RENAMED.get(name, name.lower()))
        if knob is None:
            return BuiltinEquivalent(None, {}, f"{name} has no built-in knob")
        value = values[name]
        if knob.type is float and type(value) is int:
            value = float(value)
        config[knob.name] = value
    try:
        diff = knobs.normalise_diff(BASE, config)
        knobs.resolve(BASE, diff)
    except ProtocolError as exc:
        return BuiltinEquivalent(None, {}, str(exc))
    return BuiltinEquivalent(BASE, diff, "")
