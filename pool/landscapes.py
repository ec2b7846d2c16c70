"""A family of simulated landscapes and network shapes for the collective-search benchmark.

The simulator's original landscape (pool/simulation.py, `Landscape`) is one structure with
seeded magnitudes; a search tuned on it can win there and nowhere else. This module draws
landscapes from a family of structures real competitors met, each seeded:

- `per_knob_transfer`: every knob's optimum and weight move by hardware class, by amounts drawn
  per (knob, class): on some knobs an H100 result carries to a Mac exactly, on others it misleads.
- `interactions`: the best learning rate grows with the batch (square-root scaling) and the best
  MLP width shrinks with depth, so single-knob moves measured elsewhere mislead.
- `narrow`: a narrow optimum in Muon momentum (worth 0.004-0.008 bpb, 0.004 wide) that a
  smooth surrogate pooled over nodes easily misses.
- `rank_reversal`: on one class (drawn) SwiGLU hurts and mirrored recurrence is worse than
  cycling: the sign of an architecture gain flips between classes.
- `heavy_noise`: the base landscape with three times the evaluation noise.

A `Scenario` pairs a landscape kind with a network: mixed hardware (round robin), a swarm of
one class, two nodes, or a seeded size of 2-16 nodes. `FAMILY` is what the benchmark runs.

Guarantees: `make_landscape(kind, seed)` is deterministic; "base" is exactly the simulator's
`Landscape.seeded(seed)`; every landscape's `optimum(hw)` is at or below the true value of any
config the simulator's search space can express (checked by a test over random configs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

KINDS = ("base", "per_knob_transfer", "interactions", "narrow", "rank_reversal", "heavy_noise")

# the discrete values the simulator's space reaches (powers of two between its bounds)
_BATCHES = tuple(1 << b for b in range(13, 21))


@dataclass(frozen=True)
class Scenario:
    """One member of the benchmark's family: a landscape kind and a network."""

    name: str
    landscape: str = "base"
    nodes: int = 4
    hardware: str = "mixed"  # "mixed" (round robin over the classes) or a class index "0".."2"
    node_range: tuple[int, int] | None = None  # nodes drawn per seed in [lo, hi] (overrides nodes)

    def nodes_for(self, seed: int) -> int:
        if self.node_range is None:
            return self.nodes
        lo, hi = self.node_range
        return int(np.random.default_rng([seed, 31]).integers(lo, hi + 1))


FAMILY: tuple[Scenario, ...] = (
    Scenario("base"),
    Scenario("per_knob_transfer", "per_knob_transfer"),
    Scenario("interactions", "interactions"),
    Scenario("narrow", "narrow"),
    Scenario("rank_reversal", "rank_reversal"),
    Scenario("heavy_noise", "heavy_noise"),
    Scenario("two_nodes", "per_knob_transfer", nodes=2),
    Scenario("nodes_2_16", "per_knob_transfer", node_range=(2, 16)),
    Scenario("same_class_h100_8", "per_knob_transfer", nodes=8, hardware="0"),
    Scenario("same_class_m2_8", "per_knob_transfer", nodes=8, hardware="2"),
)
SCENARIOS = {s.name: s for s in FAMILY}


def make_landscape(kind: str, seed: int):
    """The seeded landscape of `kind` (see KINDS)."""
    from p2pgolf.pool.simulation import HARDWARE, Landscape

    if kind not in KINDS:
        raise ValueError(f"unknown landscape kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "base":
        return Landscape.seeded(seed)
    if kind == "heavy_noise":
        land = Landscape.seeded(seed)
        return replace(land, hardware={k: replace(h, noise_sd=3.0 * h.noise_sd) for k, h in land.hardware.items()})
    return FamilyLandscape.seeded(kind, seed, HARDWARE)


@dataclass(frozen=True)
class KnobTransfer:
    """How one knob's effect looks on one class: its optimum moved by `shift` (in the knob's
    own coordinate: log for learning rate, linear otherwise) and its curvature times `weight`."""

    shift: float = 0.0
    weight: float = 1.0


@dataclass(frozen=True)
class FamilyLandscape:
    """The base landscape's structure with per-(knob, class) transfer, interactions, a narrow
    optimum or a rank reversal switched on by `kind`. Same interface as `Landscape`."""

    kind: str
    level: float
    swiglu: float
    leaky: float
    mirror: float
    cycle: float
    compose: float
    best_lr: float
    best_mlp: float
    best_momentum: float
    transfer: Mapping[tuple[str, str], KnobTransfer]  # (knob, class) -> transfer
    hardware: Mapping[str, Any]  # class -> HardwareModel
    lr_batch_exponent: float = 0.0  # interactions: best lr ~ (batch / best batch)^exponent
    mlp_per_layer: float = 0.0  # interactions: best mlp_mult moves by this per layer from 11
    narrow_depth: float = 0.0  # narrow: the momentum well's depth (bpb)
    narrow_at: float = 0.95
    narrow_width: float = 0.004
    reversed_class: str = ""  # rank_reversal: where SwiGLU hurts and mirroring loses to cycling

    @classmethod
    def seeded(cls, kind: str, seed: int, hardware: Sequence[Any]) -> "FamilyLandscape":
        r = np.random.default_rng([seed, 11, KINDS.index(kind)])
        classes = [h.key for h in hardware]
        transfer: dict[tuple[str, str], KnobTransfer] = {}
        spread = {"matrix_lr": 0.5, "mlp_mult": 0.8, "muon_momentum": 0.02, "num_layers": 2.5}
        for knob, sd in spread.items():
            for j, hw in enumerate(classes):
                if j == 0 or kind != "per_knob_transfer":
                    transfer[(knob, hw)] = KnobTransfer()
                    continue
                # about half of the knobs carry across exactly; the rest move, by class
                moves = r.random() < 0.5
                transfer[(knob, hw)] = KnobTransfer(float(r.normal(0.0, sd)) if moves else 0.0, float(math.exp(r.normal(0.0, 0.4))) if moves else 1.0)
        return cls(
            kind=kind,
            level=1.22,
            swiglu=0.012 * r.uniform(0.7, 1.3),
            leaky=0.004 * r.uniform(0.5, 1.5),
            mirror=0.012 * r.uniform(0.7, 1.3),
            cycle=0.003 * r.uniform(0.5, 1.5),
            compose=0.010 * r.uniform(0.7, 1.3),
            best_lr=0.04 * math.exp(r.normal(0.0, 0.3)),
            best_mlp=float(r.uniform(2.0, 3.5)),
            best_momentum=float(r.uniform(0.93, 0.96)),
            transfer=transfer,
            hardware={h.key: h for h in hardware},
            lr_batch_exponent=0.5 if kind == "interactions" else 0.0,
            mlp_per_layer=-0.15 * r.uniform(0.6, 1.4) if kind == "interactions" else 0.0,
            narrow_depth=float(r.uniform(0.004, 0.008)) if kind == "narrow" else 0.0,
            narrow_at=float(r.uniform(0.965, 0.985)),
            reversed_class=classes[int(r.integers(1, len(classes)))] if kind == "rank_reversal" else "",
        )

    # -- the terms, each a function of the knobs it names (so the optimum can be enumerated)

    def _t(self, knob: str, hw: str) -> KnobTransfer:
        return self.transfer.get((knob, hw), KnobTransfer())

    def _arch(self, act: str, rec: str, ub: int, layers: int, hw: str) -> float:
        flip = -1.0 if hw == self.reversed_class else 1.0
        g = -self.swiglu * flip if act == "swiglu" else (-self.leaky if act == "leaky_relu2" else 0.0)
        mirrored = False
        if 0 < ub < layers:
            if ub == 1:
                g += 0.02
            elif ub <= 5:
                mirrored = rec == "mirror"
                if flip < 0:
                    g -= self.cycle if not mirrored else -0.5 * self.mirror
                else:
                    g -= self.mirror if mirrored else self.cycle
            else:
                g -= 0.002
        if mirrored and act == "swiglu" and flip > 0:
            g -= self.compose
        t = self._t("num_layers", hw)
        g += 0.0006 * t.weight * (layers - 11 - t.shift) ** 2
        return g

    def _lr(self, lr: float, batch: int, hw: str) -> float:
        t = self._t("matrix_lr", hw)
        h = self.hardware[hw]
        best = self.best_lr * math.exp(t.shift) * (batch / 2.0**h.best_batch_log2) ** self.lr_batch_exponent
        return 0.01 * t.weight * np.log(lr / best) ** 2

    def _mlp(self, mlp: float, layers: int, hw: str) -> float:
        t = self._t("mlp_mult", hw)
        best = self.best_mlp + t.shift + self.mlp_per_layer * (layers - 11)
        return 0.004 * t.weight * (mlp - best) ** 2

    def _momentum(self, m: float, hw: str) -> float:
        t = self._t("muon_momentum", hw)
        g = 0.5 * t.weight * (m - self.best_momentum - t.shift) ** 2
        if self.narrow_depth:
            g = g - self.narrow_depth * np.exp(-0.5 * ((m - self.narrow_at) / self.narrow_width) ** 2)
        return g

    def _schedule(self, batch: int, warmdown: float, hw: str) -> float:
        h = self.hardware[hw]
        return h.batch_curv * (np.log2(batch) - h.best_batch_log2) ** 2 + h.warmdown_curv * (warmdown - h.best_warmdown) ** 2

    def in_narrow_well(self, config: Mapping[str, Any]) -> bool:
        """Whether a config's Muon momentum lies in the narrow optimum's well (within two widths
        of its centre, where it is worth at least 13% of its depth); False where there is none."""
        return bool(self.narrow_depth) and abs(float(config["muon_momentum"]) - self.narrow_at) <= 2.0 * self.narrow_width

    def true_bpb(self, config: Mapping[str, Any], hw: str) -> float:
        h = self.hardware[hw]
        c = config
        layers, batch = int(c["num_layers"]), int(c["train_batch_tokens"])
        common = self._arch(c["activation"], c["recurrence"], int(c["unique_blocks"]), layers, hw)
        common += self._lr(float(c["matrix_lr"]), batch, hw) + self._mlp(float(c["mlp_mult"]), layers, hw) + self._momentum(float(c["muon_momentum"]), hw)
        return float(self.level + h.offset + h.scale * common + self._schedule(batch, float(c["warmdown_frac"]), hw))

    def optimum(self, hw: str) -> float:
        """The lowest true val_bpb over the simulator's space: discrete knobs enumerated, each
        continuous knob minimised on a fine grid given the discrete knobs it interacts with."""
        from p2pgolf.pool.simulation import SIM_SPACE

        dims = {d.name: d for d in SIM_SPACE}
        h = self.hardware[hw]

        def grid(name: str, n: int = 4001) -> np.ndarray:
            d = dims[name]
            u = np.linspace(0.0, 1.0, n)
            return np.exp(np.log(d.low) + u * (np.log(d.high) - np.log(d.low))) if d.log else d.low + u * (d.high - d.low)

        lrs, mlps, moms, wds = grid("matrix_lr"), grid("mlp_mult"), grid("muon_momentum", 20001), grid("warmdown_frac")
        mom = float(np.min(self._momentum(moms, hw)))
        layer_range = range(int(dims["num_layers"].low), int(dims["num_layers"].high) + 1)
        per_layer = {
            layers: float(np.min(self._mlp(mlps, layers, hw)))
            + min(
                self._arch(act, rec, ub, layers, hw)
                for act in ("relu2", "leaky_relu2", "swiglu")
                for rec in ("cycle", "mirror")
                for ub in range(0, min(8, layers) + 1)
            )
            for layers in layer_range
        }
        best = math.inf
        for batch in _BATCHES:
            lr = float(np.min(self._lr(lrs, batch, hw)))
            sched = float(np.min(self._schedule(batch, wds, hw)))
            best = min(best, self.level + h.offset + h.scale * (min(per_layer.values()) + lr + mom) + sched)
        return best
