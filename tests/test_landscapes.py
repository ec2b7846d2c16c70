"""The simulator's landscape family: seeded, the base kind unchanged, honest optima, and the
structure each kind claims (per-class transfer, interactions, a narrow well, a rank reversal)."""

from __future__ import annotations

import numpy as np
import pytest

from p2pgolf.pool.estimator import CandidateInfo
from p2pgolf.pool.landscapes import FAMILY, KINDS, SCENARIOS, make_landscape
from p2pgolf.pool.proposals import mutate
from p2pgolf.pool.simulation import BASE, HARDWARE, SIM_SPACE, Landscape
from p2pgolf.protocol import knobs

FAST, MID, SLOW = (h.key for h in HARDWARE)


def _random_configs(seed: int, n: int = 60) -> list[dict]:
    """Configs the simulator's search can reach: chains of its own single-knob mutations."""
    rng = np.random.default_rng(seed)
    out, diff = [], {}
    for _ in range(n):
        info = CandidateInfo("x", BASE, diff, (), "", (), (), (), 1.0, 1)
        p = mutate(info, rng, space=SIM_SPACE, step=0.4)
        if p is not None:
            diff = dict(p.diff)
            out.append(knobs.resolve(BASE, diff))
    return out


def test_every_kind_is_deterministic_and_base_is_the_simulators_landscape():
    assert make_landscape("base", 3) == Landscape.seeded(3)
    for kind in KINDS:
        assert make_landscape(kind, 5) == make_landscape(kind, 5)
    assert make_landscape("per_knob_transfer", 1) != make_landscape("per_knob_transfer", 2)
    with pytest.raises(ValueError, match="unknown landscape kind 'flat'"):
        make_landscape("flat", 0)


@pytest.mark.parametrize("kind", KINDS)
def test_the_optimum_is_at_or_below_every_reachable_config(kind):
    for seed in (0, 1):
        land = make_landscape(kind, seed)
        configs = [knobs.base_config(BASE), *_random_configs(seed)]
        for hw in (FAST, MID, SLOW):
            best = land.optimum(hw)
            assert best <= min(land.true_bpb(c, hw) for c in configs) + 1e-12


def test_per_knob_transfer_moves_some_knobs_by_class_and_leaves_others():
    moved = kept = 0
    for seed in range(6):
        land = make_landscape("per_knob_transfer", seed)
        for (knob, hw), t in land.transfer.items():
            if hw == FAST:
                assert t.shift == 0.0 and t.weight == 1.0  # the reference class
            elif t.shift == 0.0:
                kept += 1
            else:
                moved += 1
    assert moved > 5 and kept > 5


def test_interactions_make_the_best_learning_rate_follow_the_batch():
    land = make_landscape("interactions", 0)
    base = knobs.base_config(BASE)
    lrs = np.exp(np.linspace(np.log(0.005), np.log(0.2), 400))

    def best_lr(batch):
        return lrs[int(np.argmin([land.true_bpb({**base, "train_batch_tokens": batch, "matrix_lr": float(x)}, FAST) for x in lrs]))]

    assert best_lr(1 << 20) > 1.8 * best_lr(1 << 17)  # square-root scaling: 8x the batch, ~2.8x the rate


def test_the_narrow_optimum_is_deep_and_narrow():
    land = make_landscape("narrow", 0)
    base = knobs.base_config(BASE)
    at = {**base, "muon_momentum": land.narrow_at}
    beside = {**base, "muon_momentum": land.narrow_at + 4 * land.narrow_width}
    assert land.true_bpb(beside, FAST) - land.true_bpb(at, FAST) > 0.003
    # the well, as the benchmark counts it: within two widths of its centre
    assert land.in_narrow_well(at) and land.in_narrow_well({**base, "muon_momentum": land.narrow_at - 1.9 * land.narrow_width})
    assert not land.in_narrow_well(beside) and not land.in_narrow_well({**base, "muon_momentum": land.narrow_at + 2.1 * land.narrow_width})
    assert not make_landscape("per_knob_transfer", 0).in_narrow_well(at)  # no well there


def test_a_rank_reversal_flips_swiglu_on_one_class_only():
    land = make_landscape("rank_reversal", 0)
    base = knobs.base_config(BASE)
    swiglu = {**base, "activation": "swiglu"}
    gain = {hw: land.true_bpb(base, hw) - land.true_bpb(swiglu, hw) for hw in (FAST, MID, SLOW)}
    assert gain[FAST] > 0
    assert gain[land.reversed_class] < 0
    assert sum(g > 0 for g in gain.values()) == 2


def test_heavy_noise_triples_the_noise_and_the_family_names_its_networks():
    base, heavy = make_landscape("base", 0), make_landscape("heavy_noise", 0)
    for hw in (FAST, SLOW):
        assert heavy.hardware[hw].noise_sd == pytest.approx(3 * base.hardware[hw].noise_sd)
    assert {s.name for s in FAMILY} == set(SCENARIOS)
    sizes = {SCENARIOS["nodes_2_16"].nodes_for(seed) for seed in range(40)}
    assert min(sizes) >= 2 and max(sizes) <= 16 and len(sizes) > 8
    assert SCENARIOS["two_nodes"].nodes == 2
    assert {SCENARIOS["same_class_h100_8"].hardware, SCENARIOS["same_class_m2_8"].hardware} == {"0", "2"}
