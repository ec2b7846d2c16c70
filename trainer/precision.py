"""Per-tensor precision and storage of the artifact: which bits each tensor gets, and how codes
and floats are laid out before compression.

The competition's records keep the tied embedding at fp16 or int8 while block matrices go to
int6 (MLPs to int5); an int6 embedding costs about 0.05 bpb. Small matrices pass through in
fp16, as the reference does below 65,536 elements. Codes stored one per byte ("bytes"
containers) compress better than densely bit-packed codes, whose fields straddle byte
boundaries; byte shuffling (all first bytes of fp16 values, then all second bytes) helps the
compressor on the float parts in the same way.

`Layout()` is today's behaviour: every matrix at `quant_bits`, packed, unshuffled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from p2pgolf.trainer.row_quantiser import CLIP_RULES, SCALE_RULES

__all__ = ["Layout", "PRECISIONS", "CONTAINERS", "SCALE_RULES", "EMBEDDING_NAMES", "is_mlp_matrix"]

# "same": follow quant_bits; "intN": N-bit integer codes; "fp16": no quantisation.
PRECISIONS = ("same", "int8", "int6", "int5", "int4", "fp16")
CONTAINERS = ("packed", "bytes")
EMBEDDING_NAMES = ("tok_emb.weight", "lm_head.weight")
_MLP_PARTS = (".mlp.fc.weight", ".mlp.gate.weight", ".mlp.proj.weight")


def is_mlp_matrix(name: str) -> bool:
    return name.endswith(_MLP_PARTS)


@dataclass(frozen=True)
class Layout:
    """How each 2-D matrix is stored (its bits, or fp16) and how bytes are arranged."""

    embed_precision: str = "same"
    mlp_precision: str = "same"
    fp16_max_numel: int = 0  # matrices with at most this many elements stay fp16 (0: none)
    container: str = "packed"
    byte_shuffle: bool = False
    # "reference": train_gpt.py's per-row rule (scales floored at 1/qmax, codes rounded against
    # the fp32 scale); "fp16_min": floored at the smallest normal fp16, rounded against the
    # fp16 scale that is stored.
    scale_rule: str = "fp16_min"
    clip: str = "quantile"  # where each row is clipped (trainer/row_quantiser.py)
    clip_sigmas: float = 12.85  # the "sdclip" rule's clip, in row standard deviations
    gptq: bool = False  # error feedback through calibration Hessians where export is given them

    def __post_init__(self) -> None:
        for field, value, allowed in (("embed_precision", self.embed_precision, PRECISIONS), ("mlp_precision", self.mlp_precision, PRECISIONS), ("container", self.container, CONTAINERS), ("scale_rule", self.scale_rule, SCALE_RULES), ("clip", self.clip, CLIP_RULES)):
            if value not in allowed:
                raise ValueError(f"{field}={value!r} is not one of {', '.join(allowed)}")
        if self.fp16_max_numel < 0:
            raise ValueError(f"fp16_max_numel={self.fp16_max_numel} is negative")

    @classmethod
    def from_knobs(cls, knobs: Mapping[str, Any]) -> "Layout":
        """The layout a full knob config asks for."""
        return cls(knobs["embed_precision"], knobs["mlp_precision"], knobs["fp16_max_numel"], knobs["code_container"], knobs["byte_shuffle"], knobs["row_scale_rule"], knobs["row_clip"], knobs["row_clip_sigmas"], knobs["gptq"])

    @property
    def is_legacy(self) -> bool:
        """True when files written with it are readable by format-1 readers (no container or
        shuffle flag in the tensor table)."""
        return self.container == "packed" and not self.byte_shuffle

    def matrix_bits(self, name: str, shape: tuple[int, ...], quant_bits: int) -> int | None:
        """Bits of the integer codes of the matrix `name`, or None when it is stored as fp16."""
        numel = 1
        for d in shape:
            numel *= int(d)
        if numel <= self.fp16_max_numel:
            return None
        if name in EMBEDDING_NAMES:
            precision = self.embed_precision
        elif is_mlp_matrix(name):
            precision = self.mlp_precision
        else:
            precision = "same"
        if precision == "same":
            return quant_bits
        if precision == "fp16":
            return None
        return int(precision.removeprefix("int"))
