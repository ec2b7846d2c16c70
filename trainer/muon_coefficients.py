"""Newton-Schulz coefficients of Muon's orthogonalisation, shared by the torch and MLX backends.

Each iteration maps X to a*X + (b*A + c*A@A) @ X with A = X @ X^T. "quintic" is the fixed
(3.4445, -4.775, 2.0315) of Keller Jordan's Muon, used at every iteration. "polar_express" is
the per-iteration minimax schedule of Polar Express (Amsel et al., 2025), as the competition's
later records use it at 5 iterations; its first tuple is aggressive and the later ones converge,
so past its five tuples the last one repeats.
"""

from __future__ import annotations

__all__ = ["COEFFICIENT_SETS", "coefficients"]

_QUINTIC = (3.4445, -4.7750, 2.0315)
_POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
COEFFICIENT_SETS = ("quintic", "polar_express")


def coefficients(name: str, steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of `steps` iterations under the set called `name`."""
    if name == "quintic":
        return [_QUINTIC] * steps
    if name == "polar_express":
        return [_POLAR_EXPRESS[min(i, len(_POLAR_EXPRESS) - 1)] for i in range(steps)]
    raise ValueError(f"Newton-Schulz coefficients {name!r} are not one of {', '.join(COEFFICIENT_SETS)}")
