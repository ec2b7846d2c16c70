"""The knob vocabulary: every setting a config diff may name, and the named base configs.

A candidate is (base config name, config diff). The diff maps knob names to values; each value
is checked against the knob's type and range, so a record from a peer can never ask the trainer
for something unknown or absurd (a node never executes anything a peer sent). Candidate ids
(over base, normalised diff and tokenizer) are computed in protocol/candidates.py.

To add a knob: append a `Knob` to `_KNOBS` with its default as the challenge baseline uses it,
then give every base config a value for it (they are checked to be complete at import time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pgolf.protocol.errors import ProtocolError

MAX_DIFF_ENTRIES = 64
MAX_PARAMETERS = 1_000_000_000  # a config a peer proposes may not ask for more than this


@dataclass(frozen=True)
class Knob:
    """One setting: its type, allowed values, default (the challenge baseline) and meaning."""

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    log_scale: bool = False  # hint for search: mutate multiplicatively
    group: str = "model"

    def check(self, value: Any) -> Any:
        """The value in its canonical type, or ProtocolError naming the knob, value and rule."""
        where = f"knob {self.name}"
        if self.type is bool:
            if not isinstance(value, bool):
                raise ProtocolError(f"expected true or false, got {value!r}", where)
            return value
        if self.type is str:
            if not isinstance(value, str) or value not in (self.choices or ()):
                raise ProtocolError(f"{value!r} is not one of {', '.join(self.choices or ())}", where)
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ProtocolError(f"expected a number, got {value!r}", where)
        if self.type is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise ProtocolError(f"expected an integer, got {value!r}", where)
                value = int(value)
        else:
            if not math.isfinite(value):
                raise ProtocolError(f"{value!r} is not a finite number", where)
            value = float(value) + 0.0  # -0.0 becomes 0.0: one encoding per value
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ProtocolError(f"{value!r} is outside the allowed range [{_fmt(self.low)}, {_fmt(self.high)}]", where)
        return value

    def parse(self, text: str) -> Any:
        """Parse a command-line string (`--set name=value`) into a checked value."""
        where = f"knob {self.name}"
        if self.type is bool:
            return parse_bool_text(text, where)
        if self.type is str:
            return self.check(text.strip())
        try:
            number = float(text) if self.type is float else _parse_int(text)
        except ValueError:
            raise ProtocolError(f"expected {'a number' if self.type is float else 'an integer'}, got {text!r}", where) from None
        return self.check(number)

    def describe_range(self) -> str:
        if self.type is bool:
            return "true|false"
        if self.type is str:
            return "|".join(self.choices or ())
        return f"[{_fmt(self.low)}, {_fmt(self.high)}]"


def parse_bool_text(text: str, where: str) -> bool:
    """A command-line boolean: 1/true/yes/on or 0/false/no/off (any case); ProtocolError else."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ProtocolError(f"expected true or false, got {text!r}", where)


def _parse_int(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def _fmt(x: float | None) -> str:
    if x is None:
        return "-inf"
    return f"{x:g}"


_KNOBS: tuple[Knob, ...] = (
    # model shape
    Knob("num_layers", int, 9, "transformer layers (block applications)", 1, 64),
    Knob("model_dim", int, 512, "residual stream width", 16, 4096, log_scale=True),
    Knob("num_heads", int, 8, "attention query heads", 1, 64),
    Knob("num_kv_heads", int, 4, "key/value heads (grouped-query attention)", 1, 64),
    Knob("mlp_mult", float, 2.0, "MLP hidden size as a multiple of model_dim (ignored if mlp_hidden > 0)", 0.25, 16.0),
    Knob("mlp_hidden", int, 0, "MLP hidden size; 0 means mlp_mult * model_dim", 0, 65536),
    Knob("vocab_size", int, 1024, "vocabulary size; must cover the benchmark's tokenizer", 2, 65536),
    Knob("tie_embeddings", bool, True, "share the input embedding and the output head"),
    Knob("rope_base", float, 10000.0, "RoPE base frequency", 10.0, 1e7, log_scale=True),
    Knob("logit_softcap", float, 30.0, "tanh soft cap on logits; 0 disables it", 0.0, 1000.0),
    Knob("qk_gain_init", float, 1.5, "initial per-head gain on normalised queries", 0.01, 100.0, log_scale=True),
    Knob("tied_embed_init_std", float, 0.005, "init std of the tied embedding", 1e-5, 1.0, log_scale=True),
    Knob("xsa_last_n", int, 0, "exclusive self-attention (each output minus its component along its own value) in the blocks of the last N layers", 0, 64),
    Knob("rope_dims", int, 0, "head dims that RoPE rotates (partial RoPE; even); 0: all", 0, 1024),
    Knob("ln_scale", bool, False, "scale block b's normalised inputs by 1/sqrt(b+1)"),
    Knob("smear_gate", bool, False, "SmearGate: each position mixes in a learned share of the previous position's embedding"),
    Knob("skip_gates", bool, False, "sigmoid gates between each U-Net skip and the stream"),
    Knob("bigram_buckets", int, 0, "BigramHash embedding rows (hashed previous/current token pairs); 0: none", 0, 1 << 20),
    Knob("bigram_dim", int, 128, "width of the BigramHash embedding (projected to model_dim)", 1, 4096),
    Knob("parallel_from", int, 0, "parallel residual lanes from this layer on (decoder layers): attention and MLP read separate lanes and write both through learned weights; 0: none", 0, 64),
    Knob("ve_last_n", int, 0, "value embeddings: a shared token table added to the attention values of the blocks of the last N layers", 0, 64),
    Knob("ve_dim", int, 128, "width of the value-embedding table (projected to the key/value width)", 1, 4096),
    Knob("activation", str, "relu2", "MLP activation", choices=("relu2", "leaky_relu2", "swiglu")),
    Knob("leaky_slope", float, 0.5, "negative slope of leaky_relu2", 0.0, 1.0),
    # depth recurrence
    Knob("unique_blocks", int, 0, "distinct blocks reused across num_layers; 0 means one per layer", 0, 64, group="recurrence"),
    Knob("recurrence", str, "cycle", "how unique blocks map to layers", choices=("cycle", "mirror"), group="recurrence"),
    Knob("num_loops", int, 0, "extra passes over the layers loop_start..loop_end (a looped middle segment); 0: none", 0, 8, group="recurrence"),
    Knob("loop_start", int, 0, "first layer of the looped segment", 0, 63, group="recurrence"),
    Knob("loop_end", int, 0, "last layer of the looped segment (inclusive)", 0, 63, group="recurrence"),
    Knob("loop_from_frac", float, 0.0, "fraction of the wall-clock budget after which training runs the segment looped (evaluation always does)", 0.0, 1.0, group="recurrence"),
    # data and batch
    Knob("train_seq_len", int, 1024, "training sequence length in tokens", 16, 65536, log_scale=True, group="batch"),
    Knob("train_batch_tokens", int, 524288, "tokens per optimiser step (global, all devices)", 256, 1 << 24, log_scale=True, group="batch"),
    Knob("grad_accum_steps", int, 0, "micro-batches per step; 0 chooses from memory", 0, 1024, group="batch"),
    # optimiser: Muon for matrices
    Knob("matrix_lr", float, 0.04, "Muon learning rate for 2-D weights", 1e-5, 1.0, log_scale=True, group="optim"),
    Knob("muon_momentum", float, 0.95, "Muon momentum after warm-up", 0.0, 0.999, group="optim"),
    Knob("muon_momentum_warmup_start", float, 0.85, "Muon momentum at step 0", 0.0, 0.999, group="optim"),
    Knob("muon_momentum_warmup_steps", int, 500, "steps to ramp Muon momentum", 0, 100000, group="optim"),
    Knob("muon_backend_steps", int, 5, "Newton-Schulz iterations", 1, 20, group="optim"),
    Knob("muon_weight_decay", float, 0.0, "decoupled weight decay on Muon matrices", 0.0, 1.0, group="optim"),
    Knob("muon_row_normalize", bool, False, "MuonEq-R: scale each row of the Muon update to unit norm before Newton-Schulz", group="optim"),
    Knob("muon_ns_coeffs", str, "quintic", "Newton-Schulz coefficients: the fixed quintic, or Polar Express's per-iteration ones (the last repeats past 5 steps)", choices=("quintic", "polar_express"), group="optim"),
    # optimiser: Adam for embeddings and scalars
    Knob("embed_lr", float, 0.6, "Adam LR of the untied input embedding", 1e-6, 10.0, log_scale=True, group="optim"),
    Knob("head_lr", float, 0.008, "Adam LR of the untied output head", 1e-6, 10.0, log_scale=True, group="optim"),
    Knob("tied_embed_lr", float, 0.05, "Adam LR of the tied embedding", 1e-6, 10.0, log_scale=True, group="optim"),
    Knob("scalar_lr", float, 0.04, "Adam LR of vectors and scalars", 1e-6, 10.0, log_scale=True, group="optim"),
    Knob("beta1", float, 0.9, "Adam beta1", 0.0, 0.9999, group="optim"),
    Knob("beta2", float, 0.95, "Adam beta2", 0.0, 0.99999, group="optim"),
    Knob("adam_eps", float, 1e-8, "Adam epsilon", 1e-12, 1e-3, log_scale=True, group="optim"),
    Knob("adam_weight_decay", float, 0.0, "decoupled (AdamW) weight decay on vectors, scalars and the untied head", 0.0, 1.0, group="optim"),
    Knob("embed_weight_decay", float, 0.0, "decoupled (AdamW) weight decay on the embedding", 0.0, 1.0, group="optim"),
    Knob("grad_clip_norm", float, 0.0, "global gradient norm clip; 0 disables it", 0.0, 100.0, group="optim"),
    # schedule (fractions of the wall-clock budget, so slow hardware never decays from step 1)
    Knob("warmup_steps", int, 0, "linear LR warm-up steps", 0, 100000, group="schedule"),
    Knob("warmdown_frac", float, 0.2, "final fraction of the wall-clock budget over which LR decays", 0.0, 1.0, group="schedule"),
    Knob("warmdown_steps", int, 0, "LR also decays over the last this many steps, timed at the run's mean step time (the reference's WARMDOWN_ITERS); the longer warm-down wins", 0, 1000000, group="schedule"),
    Knob("wd_taper_from_frac", float, 1.0, "Muon weight decay tapers linearly from this fraction of the wall-clock budget to the end; 1: no taper", 0.0, 1.0, group="schedule"),
    Knob("wd_taper_final_mult", float, 1.0, "the Muon weight decay's multiplier at the end of its taper", 0.0, 1.0, group="schedule"),
    Knob("min_lr_frac", float, 0.0, "LR floor at the end of warmdown, as a fraction of peak", 0.0, 1.0, group="schedule"),
    Knob("ema_decay", float, 0.0, "EMA of weights used for evaluation; 0 disables it", 0.0, 0.99999, group="schedule"),
    Knob("swa_every", int, 0, "SWA: the final weights are the mean of snapshots taken every N steps once the LR multiplier is below swa_start_lr_scale; 0 disables it", 0, 100000, group="schedule"),
    Knob("swa_start_lr_scale", float, 0.5, "SWA collects snapshots while the LR multiplier is below this", 0.0, 1.0, group="schedule"),
    # evaluation and export
    Knob("eval_seq_len", int, 0, "evaluation context length; 0 means train_seq_len", 0, 65536, group="eval"),
    Knob("eval_stride", int, 0, "sliding-window stride at evaluation; 0 means non-overlapping windows", 0, 65536, group="eval"),
    Knob("ttt_steps", int, 0, "legal test-time training: SGD steps on each chunk of validation text after it is scored; 0: none", 0, 64, group="eval"),
    Knob("ttt_lr", float, 0.0001, "test-time training learning rate (plain SGD on every weight)", 1e-7, 1.0, log_scale=True, group="eval"),
    Knob("ttt_chunk_tokens", int, 32768, "scored tokens per test-time training chunk", 256, 1 << 22, log_scale=True, group="eval"),
    Knob("qat", str, "off", "quantisation-aware training of the block matrices at their export bits (straight-through): off, from the first step, or late", choices=("off", "full", "late"), group="export"),
    Knob("qat_from_lr_scale", float, 0.15, "late QAT switches on once the LR multiplier falls below this", 0.0, 1.0, group="export"),
    Knob("quant_bits", int, 8, "bits per weight of 2-D matrices in the artifact", 2, 8, group="export"),
    Knob("compressor", str, "zlib", "artifact compressor (zstd level 22, brotli quality 11)", choices=("zlib", "lzma", "zstd", "brotli"), group="export"),
    Knob("embed_precision", str, "same", "storage of the embedding (and untied head): same as quant_bits, N-bit codes, or fp16", choices=("same", "int8", "int6", "int5", "int4", "fp16"), group="export"),
    Knob("mlp_precision", str, "same", "storage of the MLP matrices: same as quant_bits, N-bit codes, or fp16", choices=("same", "int8", "int6", "int5", "int4", "fp16"), group="export"),
    Knob("fp16_max_numel", int, 0, "matrices with at most this many elements stay fp16; 0: every matrix is quantised", 0, 1 << 20, group="export"),
    Knob("code_container", str, "packed", "integer codes bit-packed densely, or one per byte (compresses better)", choices=("packed", "bytes"), group="export"),
    Knob("byte_shuffle", bool, False, "store float values and scales as byte planes before compression", group="export"),
    Knob("row_clip", str, "quantile", "where each row is clipped before quantising: its 0.9999984 quantile, the best of five quantiles by squared error (GPTQ-lite), or row_clip_sigmas standard deviations (SDClip)", choices=("quantile", "search", "sdclip"), group="export"),
    Knob("row_clip_sigmas", float, 12.85, "the sdclip rule's clip in row standard deviations", 0.5, 64.0, group="export"),
    Knob("gptq", bool, False, "GPTQ: block matrices rounded column by column with error feedback through their inputs' Hessian from calibration on training text", group="export"),
    Knob("gptq_calib_tokens", int, 65536, "training tokens GPTQ calibrates on", 256, 1 << 24, log_scale=True, group="export"),
    Knob("row_scale_rule", str, "fp16_min", "per-row scales floored at the smallest normal fp16 with codes rounded against the stored fp16 scale, or the reference's rule: floored at 1/qmax, codes rounded against the fp32 scale", choices=("fp16_min", "reference"), group="export"),
)

KNOBS: dict[str, Knob] = {k.name: k for k in _KNOBS}
DEFAULTS: dict[str, Any] = {k.name: k.default for k in _KNOBS}

# Named base configs: full assignments of every knob. Differences from the challenge baseline
# are spelled out so that reading one tells you what it is.
BASE_CONFIGS: dict[str, dict[str, Any]] = {
    # OpenAI Parameter Golf's naive baseline: the reference train_gpt.py's defaults, exactly.
    # Its warm-down is 1,200 steps at the mean step time (not a budget fraction), its per-row
    # scales are floored at 1/127, and it keeps matrices of up to 65,536 elements in fp16.
    "naive-baseline": {
        **DEFAULTS,
        "warmdown_frac": 0.0,
        "warmdown_steps": 1200,
        "fp16_max_numel": 65536,
        "row_scale_rule": "reference",
    },
    # A small model that trains usefully on a laptop CPU in minutes.
    "cpu-small": {
        **DEFAULTS,
        "num_layers": 4,
        "model_dim": 128,
        "num_heads": 4,
        "num_kv_heads": 2,
        "train_seq_len": 256,
        "train_batch_tokens": 8192,
        "muon_momentum_warmup_steps": 50,
        "matrix_lr": 0.02,
        "tied_embed_lr": 0.03,
        "scalar_lr": 0.02,
    },
    # Our reading of what the challenge's top records stack, within this vocabulary: a starting
    # point for the search, not a claim about its score. 10 layers with a 3x LeakyReLU^2 MLP fit
    # 16 MB only with mixed precision: int6 attention, int5 MLP, int8 embedding, small matrices
    # in fp16, byte containers under zstd. Longer sequences and batch, Muon with weight decay,
    # high momentum, row-normalised updates and Polar Express coefficients, AdamW decay on the
    # embedding and scalars, a long warm-down, EMA, clipping, sliding-window evaluation; layers
    # 4-5 looped once more from 35% of the budget; late QAT, rows clipped by search and rounded by GPTQ. XSA on
    # the last 4 layers, RoPE on 16 of 64 head dims, LN scale, SmearGate, a 2048-row BigramHash,
    # value embeddings in the last 2 layers, parallel lanes from layer 7, gated skips.
    "frontier": {
        **DEFAULTS,
        "num_layers": 10,
        "xsa_last_n": 4,
        "rope_dims": 16,
        "ln_scale": True,
        "smear_gate": True,
        "skip_gates": True,
        "bigram_buckets": 2048,
        "ve_last_n": 2,
        "parallel_from": 7,
        "num_loops": 1,
        "loop_start": 4,
        "loop_end": 5,
        "loop_from_frac": 0.35,
        "mlp_mult": 3.0,
        "activation": "leaky_relu2",
        "leaky_slope": 0.5,
        "train_seq_len": 2048,
        "train_batch_tokens": 786432,
        "matrix_lr": 0.025,
        "tied_embed_lr": 0.035,
        "scalar_lr": 0.025,
        "muon_momentum": 0.99,
        "muon_momentum_warmup_start": 0.92,
        "muon_momentum_warmup_steps": 1500,
        "muon_weight_decay": 0.04,
        "muon_row_normalize": True,
        "muon_ns_coeffs": "polar_express",
        "adam_weight_decay": 0.02,
        "embed_weight_decay": 0.085,
        "warmdown_frac": 0.4,
        "ema_decay": 0.997,
        "grad_clip_norm": 0.3,
        "eval_stride": 64,
        "quant_bits": 6,
        "qat": "late",
        "mlp_precision": "int5",
        "embed_precision": "int8",
        "fp16_max_numel": 65536,
        "row_clip": "search",
        "gptq": True,
        "code_container": "bytes",
        "byte_shuffle": True,
        "compressor": "zstd",
    },
    # The offline smoke benchmark: byte-level tokens, a tiny model.
    "smoke-tiny": {
        **DEFAULTS,
        "num_layers": 2,
        "model_dim": 64,
        "num_heads": 2,
        "num_kv_heads": 1,
        "vocab_size": 256,
        "train_seq_len": 128,
        "train_batch_tokens": 4096,
        "muon_momentum_warmup_steps": 20,
        "matrix_lr": 0.02,
        "tied_embed_lr": 0.03,
        "scalar_lr": 0.02,
    },
}


def knob(name: str) -> Knob:
    """The knob called `name`, or ProtocolError listing the close names."""
    try:
        return KNOBS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, KNOBS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ProtocolError(f"unknown knob {name!r}{hint}") from None


def base_config(name: str) -> dict[str, Any]:
    """A copy of the named base config, or ProtocolError naming the known bases."""
    if not isinstance(name, str) or name not in BASE_CONFIGS:
        raise ProtocolError(f"unknown base config {name!r}; known: {', '.join(sorted(BASE_CONFIGS))}")
    return dict(BASE_CONFIGS[name])


def check_diff(diff: Mapping[str, Any]) -> dict[str, Any]:
    """Each entry checked against its knob; values in canonical type. Order-independent."""
    if not isinstance(diff, Mapping):
        raise ProtocolError("config diff must be a map of knob names to values")
    if len(diff) > MAX_DIFF_ENTRIES:
        raise ProtocolError(f"config diff has {len(diff)} entries; at most {MAX_DIFF_ENTRIES}")
    return {name: knob(name).check(value) for name, value in diff.items()}


def normalise_diff(base: str, diff: Mapping[str, Any]) -> dict[str, Any]:
    """The diff checked, with entries equal to the base's value dropped, keys sorted."""
    reference = base_config(base)
    checked = check_diff(diff)
    return {k: checked[k] for k in sorted(checked) if checked[k] != reference[k]}


def check_normalised(base: str, diff: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a diff as it arrives from the wire: it must already be normalised (canonical
    value types, nothing equal to the base) and resolve to a consistent config. Returns the
    resolved config."""
    config = base_config(base)
    if not isinstance(diff, Mapping):
        raise ProtocolError("config diff must be a map of knob names to values")
    if len(diff) > MAX_DIFF_ENTRIES:
        raise ProtocolError(f"config diff has {len(diff)} entries; at most {MAX_DIFF_ENTRIES}")
    for name, value in diff.items():
        checked = knob(name).check(value)
        # repr tells -0.0 from 0.0, which compare equal but encode differently
        if type(checked) is not type(value) or repr(checked) != repr(value) or checked == config[name]:
            raise ProtocolError("diff is not normalised: canonical value types, no entries equal to the base", f"knob {name}")
        config[name] = checked
    check_config(config)
    return config


def resolve(base: str, diff: Mapping[str, Any]) -> dict[str, Any]:
    """The full config (every knob) of base + diff, checked for consistency between knobs."""
    config = base_config(base)
    config.update(check_diff(diff))
    check_config(config)
    return config


def check_config(config: Mapping[str, Any]) -> None:
    """Rules that involve several knobs. Raises ProtocolError naming the knobs and values."""
    dim, heads, kv = config["model_dim"], config["num_heads"], config["num_kv_heads"]
    if dim % heads:
        raise ProtocolError(f"model_dim={dim} must be divisible by num_heads={heads}")
    if (dim // heads) % 2:
        raise ProtocolError(f"head dimension model_dim/num_heads={dim // heads} must be even (RoPE)")
    if heads % kv:
        raise ProtocolError(f"num_heads={heads} must be divisible by num_kv_heads={kv}")
    layers, unique = config["num_layers"], config["unique_blocks"]
    if unique > layers:
        raise ProtocolError(f"unique_blocks={unique} cannot exceed num_layers={layers}")
    rope_dims = config["rope_dims"]
    if rope_dims and (rope_dims % 2 or rope_dims > dim // heads):
        raise ProtocolError(f"rope_dims={rope_dims} must be even and at most the head dimension {dim // heads}")
    if config["num_loops"] and not config["loop_start"] <= config["loop_end"] < layers:
        raise ProtocolError(f"the looped segment loop_start={config['loop_start']}..loop_end={config['loop_end']} must lie within the num_layers={layers} layers, start <= end")
    if config["train_batch_tokens"] < config["train_seq_len"]:
        raise ProtocolError(
            f"train_batch_tokens={config['train_batch_tokens']} must hold at least one sequence of train_seq_len={config['train_seq_len']}"
        )
    eval_len = config["eval_seq_len"] or config["train_seq_len"]
    if config["eval_stride"] > eval_len:
        raise ProtocolError(f"eval_stride={config['eval_stride']} cannot exceed the evaluation length {eval_len}")
    if config["swa_every"] > 0 and config["ema_decay"] > 0:
        raise ProtocolError(f"swa_every={config['swa_every']} and ema_decay={config['ema_decay']} cannot both be set: each one decides the final weights")
    params = estimate_parameters(config)
    if params > MAX_PARAMETERS:
        raise ProtocolError(f"config has about {params:,} parameters; the limit is {MAX_PARAMETERS:,}")


def mlp_hidden_size(config: Mapping[str, Any]) -> int:
    """The MLP hidden width a config asks for."""
    return config["mlp_hidden"] or max(1, int(round(config["mlp_mult"] * config["model_dim"])))


def estimate_parameters(config: Mapping[str, Any]) -> int:
    """Approximate trainable parameter count (blocks + embeddings), for bounds and reports."""
    dim = config["model_dim"]
    head_dim = dim // config["num_heads"]
    kv_dim = head_dim * config["num_kv_heads"]
    hidden = mlp_hidden_size(config)
    mlp_mats = 3 if config["activation"] == "swiglu" else 2
    block = dim * dim * 2 + dim * kv_dim * 2 + mlp_mats * dim * hidden
    blocks = config["unique_blocks"] or config["num_layers"]
    embed = config["vocab_size"] * dim * (1 if config["tie_embeddings"] else 2)
    bigram = 0
    if config["bigram_buckets"]:
        width = config["bigram_dim"]
        bigram = config["bigram_buckets"] * width + (dim * width if width != dim else 0)
    value = 0
    if config["ve_last_n"]:
        width = config["ve_dim"]
        value = config["vocab_size"] * width + (kv_dim * width if width != kv_dim else 0)
    return blocks * block + embed + bigram + value


# The knobs that set how fast a config trains (tokens per second on given hardware): the model's
# shape, the batch and the EMA copy. Learning rates, schedule and export do not change speed, so
# configs that differ only there share their throughput history.
THROUGHPUT_KNOBS = (
    "num_layers", "model_dim", "num_heads", "num_kv_heads", "mlp_mult", "mlp_hidden", "vocab_size",
    "tie_embeddings", "unique_blocks", "activation", "train_seq_len", "train_batch_tokens",
    "grad_accum_steps", "ema_decay", "qat", "xsa_last_n", "smear_gate", "skip_gates", "bigram_buckets", "bigram_dim", "ve_last_n", "ve_dim", "parallel_from", "num_loops", "loop_start", "loop_end", "loop_from_frac",
)  # fmt: skip


def throughput_shape(config: Mapping[str, Any]) -> str:
    """A stable key naming a resolved config's speed-relevant knobs (THROUGHPUT_KNOBS): two
    configs with the same key train at the same tokens/s on the same hardware."""
    parts = []
    for name in THROUGHPUT_KNOBS:
        value = config[name]
        if name == "ema_decay":
            value = value > 0  # on or off is what costs time, not the decay rate
        parts.append(f"{name}={value}")
    return ";".join(parts)


def training_flops_per_token(config: Mapping[str, Any]) -> int:
    """Approximate floating-point operations one training token costs (forward and backward):
    6 per weight of the matrices it passes through (every layer application, and the output
    head), plus causal attention's 6 * seq_len * dim per layer. For time estimates, not exact."""
    dim = config["model_dim"]
    head_dim = dim // config["num_heads"]
    kv_dim = head_dim * config["num_kv_heads"]
    mlp_mats = 3 if config["activation"] == "swiglu" else 2
    block = dim * dim * 2 + dim * kv_dim * 2 + mlp_mats * dim * mlp_hidden_size(config)
    layers = config["num_layers"]
    head = config["vocab_size"] * dim
    attention = 6 * config["train_seq_len"] * dim * layers
    return 6 * (layers * block + head) + attention


def _check_base_configs() -> None:
    for name, config in BASE_CONFIGS.items():
        missing = set(KNOBS) - set(config)
        extra = set(config) - set(KNOBS)
        if missing or extra:
            raise RuntimeError(f"base config {name} is incomplete: missing {missing}, unknown {extra}")
        for key, value in config.items():
            KNOBS[key].check(value)
        check_config(config)


_check_base_configs()
