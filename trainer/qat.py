"""Quantisation-aware training: which matrices train through a fake quantiser, at which bits, and
when it is on. Backend-free; trainer/model_torch.py and trainer/train_mlx.py apply it.

During QAT each Muon matrix (the blocks' weights) is used in the forward pass as its per-row
quantised value at the bits its export will give it (`Layout.matrix_bits`: quant_bits, the MLP's
own precision, or none when it stays fp16): scale = max(row max / qmax, floor), codes rounded and
clamped to +-qmax, the floor being the export's (`row_scale_rule`). The gradient passes straight
through to the float weight (straight-through estimator), so the weights learn to sit where
rounding costs little. `qat="full"` trains so from the first step; `"late"` switches on once the
warm-down has brought the LR multiplier below `qat_from_lr_scale` (after the warm-up steps, and
the multiplier only falls from there, so it stays on), as the records' late QAT does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from p2pgolf.trainer.model_spec import parameter_role
from p2pgolf.trainer.precision import Layout
from p2pgolf.trainer.row_quantiser import MIN_SCALE

__all__ = ["qat_bits", "qat_on", "scale_floor"]


def qat_bits(config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """Bits of the fake quantiser for each matrix that trains through one (empty when QAT is off)."""
    if config["qat"] == "off":
        return {}
    layout = Layout.from_knobs(config)
    bits = {}
    for name, shape in shapes.items():
        if parameter_role(name, tuple(shape)) == "muon":
            b = layout.matrix_bits(name, tuple(shape), config["quant_bits"])
            if b is not None:
                bits[name] = b
    return bits


def qat_on(config: Mapping[str, Any], step: int, lr_mult: float) -> bool:
    """Whether step number `step`, about to run at LR multiplier `lr_mult`, trains through the quantiser."""
    mode = config["qat"]
    if mode == "full":
        return True
    return mode == "late" and step >= config["warmup_steps"] and lr_mult < config["qat_from_lr_scale"]


def scale_floor(config: Mapping[str, Any], bits: int) -> float:
    """The smallest per-row scale the export uses, so training sees the codes export writes."""
    return 1.0 / (2 ** (bits - 1) - 1) if config["row_scale_rule"] == "reference" else MIN_SCALE
