"""Backend-free facts about the model that torch and MLX must agree on.

What it guarantees: one definition, shared by every backend, of
- `block_schedule`: which unique block each layer runs (depth recurrence, cycle or mirror);
- `ModelSpec.layer_order`: the blocks one forward pass runs, with the looped middle segment
  (`num_loops` extra passes over layers loop_start..loop_end) when looping is on, and
  `ModelSpec.num_skips`, the U-Net skip weights that covers both orders;
- `ModelSpec`: the shape and fixed settings of a model, read from a resolved knob config;
- `parameter_role`: which optimiser group trains a parameter, by its shared name and shape
  ("muon" for the blocks' weight matrices, "embed", "head" and "scalar" for Adam), and
  `role_lr`, the knob that sets each group's peak learning rate.
No tensor library is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pgolf.protocol.knobs import mlp_hidden_size

__all__ = ["BIGRAM_MULTIPLIERS", "BIGRAM_SCALE_INIT", "PARALLEL_RESID_INIT", "VALUE_EMBED_INIT_STD", "VALUE_EMBED_SCALE_INIT", "CONTROL_PARAMETER_SUFFIXES", "ModelSpec", "ROLES", "block_schedule", "parameter_role", "role_lr", "role_weight_decay"]

# Parameters that are gains and mixes rather than weights: Adam trains them, never Muon.
CONTROL_PARAMETER_SUFFIXES = ("resid_mix", "attn_scale", "mlp_scale", "q_gain", "skip_weights", "skip_gates", "smear_gate", "ve_scale", "parallel_post", "parallel_resid")
PARALLEL_RESID_INIT = 1.1  # each lane's own carry at init (the records'); the cross weights start at 1
VALUE_EMBED_INIT_STD = 0.01  # the table starts small and random, its projection at zero
VALUE_EMBED_SCALE_INIT = 0.1
# BigramHash: (previous, current) token -> bucket (a*current XOR b*previous) mod (buckets - 1), the
# first position in bucket buckets - 1, as the records hash; in int64 so any vocabulary is exact.
BIGRAM_MULTIPLIERS = (36313, 27191)
BIGRAM_SCALE_INIT = 0.05
ROLES = ("muon", "embed", "head", "scalar")


def block_schedule(num_layers: int, unique_blocks: int, recurrence: str) -> list[int]:
    """Which unique block each layer runs. `unique_blocks == 0` means one block per layer.

    cycle:  0 1 2 3 0 1 2 3 ...;  mirror: 0 1 2 3 3 2 1 0 0 1 ... (the way back is reversed).
    """
    unique = unique_blocks or num_layers
    if not 1 <= unique <= num_layers:
        raise ValueError(f"unique_blocks={unique_blocks} must be in [0, num_layers={num_layers}]")
    if recurrence == "cycle":
        return [layer % unique for layer in range(num_layers)]
    if recurrence == "mirror":
        period = 2 * unique
        return [p if p < unique else period - 1 - p for p in (layer % period for layer in range(num_layers))]
    raise ValueError(f"unknown recurrence {recurrence!r}; expected cycle or mirror")


def parameter_role(name: str, shape: tuple[int, ...]) -> str:
    """The optimiser group of the parameter called `name` (a shared name, see model_torch)."""
    if name == "tok_emb.weight":
        return "embed"
    if name == "lm_head.weight":
        return "head"
    if name in ("bigram.embed.weight", "value_embed.embed.weight"):
        return "embed"  # an embedding table: Adam at the token LR, as the records train it
    if name in ("bigram.proj.weight", "value_embed.proj.weight"):
        return "muon"
    if name.startswith("blocks.") and len(shape) == 2 and name.rsplit(".", 1)[-1] not in CONTROL_PARAMETER_SUFFIXES:
        return "muon"
    return "scalar"


def role_lr(role: str, config: Mapping[str, Any]) -> float:
    """Peak learning rate of an optimiser group under a resolved knob config."""
    if role == "muon":
        return config["matrix_lr"]
    if role == "embed":
        return config["tied_embed_lr"] if config["tie_embeddings"] else config["embed_lr"]
    if role == "head":
        return config["head_lr"]
    if role == "scalar":
        return config["scalar_lr"]
    raise ValueError(f"unknown parameter role {role!r}; expected one of {', '.join(ROLES)}")


def role_weight_decay(role: str, config: Mapping[str, Any]) -> float:
    """Decoupled weight decay of an optimiser group (AdamW's for the Adam groups, applied as
    p *= 1 - lr * decay before the step)."""
    if role == "muon":
        return config["muon_weight_decay"]
    if role == "embed":
        return config["embed_weight_decay"]
    if role in ("head", "scalar"):
        return config["adam_weight_decay"]
    raise ValueError(f"unknown parameter role {role!r}; expected one of {', '.join(ROLES)}")


@dataclass(frozen=True)
class ModelSpec:
    """The shape and fixed settings of one model (no weights)."""

    vocab_size: int
    num_layers: int
    model_dim: int
    num_heads: int
    num_kv_heads: int
    mlp_hidden: int
    activation: str = "relu2"
    leaky_slope: float = 0.5
    unique_blocks: int = 0
    recurrence: str = "cycle"
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    num_loops: int = 0
    loop_start: int = 0
    loop_end: int = 0
    xsa_last_n: int = 0
    rope_dims: int = 0
    ln_scale: bool = False
    smear_gate: bool = False
    skip_gates: bool = False
    bigram_buckets: int = 0
    bigram_dim: int = 128
    ve_last_n: int = 0
    ve_dim: int = 128
    parallel_from: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ModelSpec":
        """The spec of a resolved knob config (protocol.knobs.resolve)."""
        return cls(
            vocab_size=config["vocab_size"],
            num_layers=config["num_layers"],
            model_dim=config["model_dim"],
            num_heads=config["num_heads"],
            num_kv_heads=config["num_kv_heads"],
            mlp_hidden=mlp_hidden_size(config),
            activation=config["activation"],
            leaky_slope=config["leaky_slope"],
            unique_blocks=config["unique_blocks"],
            recurrence=config["recurrence"],
            tie_embeddings=config["tie_embeddings"],
            tied_embed_init_std=config["tied_embed_init_std"],
            logit_softcap=config["logit_softcap"],
            rope_base=config["rope_base"],
            qk_gain_init=config["qk_gain_init"],
            num_loops=config["num_loops"],
            loop_start=config["loop_start"],
            loop_end=config["loop_end"],
            xsa_last_n=config["xsa_last_n"],
            rope_dims=config["rope_dims"],
            ln_scale=config["ln_scale"],
            smear_gate=config["smear_gate"],
            skip_gates=config["skip_gates"],
            bigram_buckets=config["bigram_buckets"],
            bigram_dim=config["bigram_dim"],
            ve_last_n=config["ve_last_n"],
            ve_dim=config["ve_dim"],
            parallel_from=config["parallel_from"],
        )

    @property
    def schedule(self) -> tuple[int, ...]:
        return tuple(block_schedule(self.num_layers, self.unique_blocks, self.recurrence))

    def layer_order(self, looping: bool) -> tuple[int, ...]:
        """The unique block each step of the forward pass runs. Looping repeats the layers
        loop_start..loop_end `num_loops` more times in place (0 1 [2 3] 4 with two loops:
        0 1 2 3 2 3 2 3 4); the first half of the order feeds the U-Net skips, as without."""
        blocks = self.schedule
        if not looping or not self.num_loops:
            return blocks
        segment = list(range(self.loop_start, self.loop_end + 1))
        layers = [*range(self.loop_start), *segment * (self.num_loops + 1), *range(self.loop_end + 1, self.num_layers)]
        return tuple(blocks[layer] for layer in layers)

    @property
    def xsa_blocks(self) -> frozenset[int]:
        """Blocks that run exclusive self-attention: those of the last `xsa_last_n` layers (a
        block shared with earlier layers runs it there too)."""
        return self._blocks_of_last_layers(self.xsa_last_n)

    @property
    def ve_blocks(self) -> frozenset[int]:
        """Blocks whose attention values get the value embedding: those of the last `ve_last_n` layers."""
        return self._blocks_of_last_layers(self.ve_last_n)

    def _blocks_of_last_layers(self, n: int) -> frozenset[int]:
        schedule = self.schedule
        return frozenset(schedule[layer] for layer in range(max(0, self.num_layers - n), self.num_layers))

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * (self.model_dim // self.num_heads)

    def ln_factor(self, block: int) -> float:
        """The factor on block `block`'s normalised inputs: 1/sqrt(block + 1) with ln_scale."""
        return 1.0 / (block + 1) ** 0.5 if self.ln_scale else 1.0

    @property
    def num_skips(self) -> int:
        """Skip weights: enough for the longer (looped) order; the plain one uses the first ones."""
        depth = len(self.layer_order(True))
        return min(depth // 2, depth - depth // 2)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads
