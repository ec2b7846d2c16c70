"""Transfer between hardware classes learned per knob (pool/knob_features.py and the
estimator's `knob_transfer_sd`): a class that disagrees on one knob is discounted on that
knob, not on every knob, and with few overlaps the transfer stays uncertain."""

from __future__ import annotations

import math

import numpy as np

from p2pgolf.pool.estimator import EstimatorConfig, estimate
from p2pgolf.pool.evidence import Evidence, result_evidence
from p2pgolf.pool.knob_features import N_FEATURES, feature_names, features
from p2pgolf.pool.trust_weights import static_status

ME = "a" * 64
FRIEND = "b" * 64
BASE = "naive-baseline"
HERE, THERE = "cuda:fast", "mps:slow"
ON = EstimatorConfig(knob_transfer_sd=0.05)
OFF = EstimatorConfig(knob_transfer_sd=0.0)


def _truth(lr: float, batch: int, hw: str) -> float:
    """Both classes agree on the learning rate; the slow class wants a small batch."""
    v = 1.3 + 0.02 * math.log(lr / 0.04) ** 2
    best = 19.0 if hw == HERE else 15.0
    return v + 0.004 * (math.log2(batch) - best) ** 2 + (0.4 if hw == THERE else 0.0)


def _pool(overlaps: int, seed: int = 0) -> tuple[Evidence, list[dict]]:
    """`overlaps` configs measured on both classes; 8 more measured only on the slow one."""
    rng = np.random.default_rng(seed)
    grid = [{"matrix_lr": float(lr), "train_batch_tokens": int(b)} for lr in (0.01, 0.02, 0.04, 0.08, 0.16) for b in (1 << 14, 1 << 16, 1 << 18, 1 << 20)]
    rng.shuffle(grid)
    shared, only_there = grid[:overlaps], grid[overlaps : overlaps + 8]
    out, n = [], 0
    for diff in shared:
        for hw, author in ((HERE, ME), (THERE, FRIEND)):
            n += 1
            out.append(result_evidence(f"{n:064x}", base=BASE, diff=diff, author=author, hw=hw, val_bpb=_truth(diff["matrix_lr"], diff["train_batch_tokens"], hw) + rng.normal(0, 0.002), budget_s=600))
    for diff in only_there:
        n += 1
        out.append(result_evidence(f"{n:064x}", base=BASE, diff=diff, author=FRIEND, hw=THERE, val_bpb=_truth(diff["matrix_lr"], diff["train_batch_tokens"], THERE) + rng.normal(0, 0.002), budget_s=600))
    return Evidence(tuple(out)), only_there


def _errors(post, configs) -> np.ndarray:
    from p2pgolf.protocol import candidates

    out = []
    for diff in configs:
        c = candidates.candidate_id(BASE, diff, "sp1024")
        out.append(post.estimate(c).mean - _truth(diff["matrix_lr"], diff["train_batch_tokens"], HERE))
    return np.abs(out)


def test_features_are_fixed_length_pure_and_zero_for_scripts():
    f = features(BASE, {"matrix_lr": 0.02})
    assert f.shape == (N_FEATURES,) == (len(feature_names()),)
    assert np.array_equal(f, features(BASE, {"matrix_lr": 0.02}))
    assert not np.array_equal(f, features(BASE, {"matrix_lr": 0.08}))
    assert not features("script:" + "0" * 64, {}).any()
    assert np.isfinite(f).all()


def test_transfer_is_learned_on_the_knob_that_differs_and_not_on_the_one_that_carries():
    evidence, _ = _pool(16)
    post = estimate(evidence, static_status(ME, pinned=[FRIEND]), HERE, config=ON)
    mean, sd = post.knob_transfer[THERE]
    names = feature_names()
    batch = [names.index("train_batch_tokens"), names.index("train_batch_tokens^2")]
    lr = [names.index("matrix_lr"), names.index("matrix_lr^2")]
    assert np.abs(mean[batch]).max() > 0.05  # the slow class's batch optimum sits elsewhere...
    assert np.abs(mean[lr]).max() < 0.02  # ...while the learning rate carries
    assert (sd > 0).all()


def test_per_knob_transfer_predicts_a_candidate_measured_only_elsewhere_better_than_one_discount():
    evidence, only_there = _pool(16)
    status = static_status(ME, pinned=[FRIEND])
    off = estimate(evidence, status, HERE, config=OFF)
    on = estimate(evidence, status, HERE, config=ON)
    assert estimate(evidence, status, HERE).knob_transfer == {}  # off by default until a benchmark shows a gain
    assert off.knob_transfer == {}  # switched off, the model is the one before per-knob transfer
    assert on.knob_transfer
    assert _errors(on, only_there).mean() < 0.5 * _errors(off, only_there).mean()


def test_with_few_overlaps_the_transfer_stays_uncertain():
    status = static_status(ME, pinned=[FRIEND])
    few = estimate(_pool(3)[0], status, HERE, config=ON)
    many = estimate(_pool(16)[0], status, HERE, config=ON)
    assert few.knob_transfer[THERE][1].mean() > many.knob_transfer[THERE][1].mean()


def test_the_posterior_with_transfer_does_not_depend_on_record_order():
    evidence, _ = _pool(10)
    status = static_status(ME, pinned=[FRIEND])
    a = estimate(evidence, status, HERE, config=ON)
    b = estimate(Evidence(tuple(reversed(evidence.results))), status, HERE, config=ON)
    order = [b.index[c] for c in a.candidates]
    assert np.allclose(a.mean, b.mean[order]) and np.allclose(a.sd, b.sd[order])
    assert a.mean.shape == a.sd.shape and np.isfinite(a.mean).all() and (a.sd > 0).all()
