"""Where rows are clipped before quantising (trainer/row_quantiser.py): the reference quantile, a
per-row search (GPTQ-lite), and SDClip; measured on heavy-tailed rows like trained weights'."""

from __future__ import annotations

import numpy as np
import pytest

from p2pgolf.protocol import knobs
from p2pgolf.trainer.artifact import export_artifact, export_options, load_artifact
from p2pgolf.trainer.row_quantiser import quantise_codes


def _heavy_tailed(rows=64, cols=512, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_t(3, size=(rows, cols)) * 0.02).astype(np.float32)


def _row_errors(m, bits, **kw):
    codes, scales = quantise_codes(m, bits, **kw)
    qmax = 2 ** (bits - 1) - 1
    recon = (codes.reshape(m.shape).astype(np.float32) - qmax) * scales.astype(np.float32)[:, None]
    return np.square(m - recon).mean(axis=1)


@pytest.mark.parametrize("rule", ["fp16_min", "reference"])
@pytest.mark.parametrize("bits", [4, 6])
def test_search_is_never_worse_than_the_default_quantile_on_any_row_and_better_overall(rule, bits):
    m = _heavy_tailed()
    if rule == "reference":
        m = m * 40  # rows above the reference's 1/qmax scale floor, where clipping matters
    default = _row_errors(m, bits, rule=rule)
    searched = _row_errors(m, bits, rule=rule, clip="search")
    assert np.all(searched <= default)
    assert searched.mean() < default.mean()


def test_sdclip_saturates_beyond_k_sigmas_and_resolves_the_rest_finer():
    m = _heavy_tailed(rows=8)
    m[:, 0] = 1.0  # one outlier per row, ~25 sigmas out
    codes, scales = quantise_codes(m, 6, clip="sdclip", clip_sigmas=3.0)
    codes = codes.reshape(m.shape).astype(int) - 31
    std = m.std(axis=1, ddof=1)
    assert np.all(codes[:, 0] == 31)  # the outlier saturates at the largest code
    np.testing.assert_allclose(scales.astype(np.float32), 3.0 * std / 31, rtol=1e-3)
    plain, _ = quantise_codes(m, 6)
    plain = plain.reshape(m.shape).astype(int) - 31
    # the bulk of each row spreads over many more codes than when the outlier sets the scale
    assert len(np.unique(codes[:, 1:])) > 3 * len(np.unique(plain[:, 1:]))


def test_the_clip_knobs_reach_the_artifact_and_bad_rules_are_named():
    state = {"blocks.0.mlp.fc.weight": _heavy_tailed(rows=128, cols=256)}
    errors = {}
    for clip in ("quantile", "search", "sdclip"):
        config = knobs.resolve("smoke-tiny", {"row_clip": clip, "quant_bits": 4, "row_clip_sigmas": 4.0})
        loaded = load_artifact(export_artifact(state, config, **export_options(config))).state
        errors[clip] = float(np.square(loaded["blocks.0.mlp.fc.weight"] - state["blocks.0.mlp.fc.weight"]).mean())
    assert errors["search"] < errors["quantile"] and len(set(errors.values())) == 3
    with pytest.raises(ValueError, match="row clip rule 'gptq' is not one of quantile, search, sdclip"):
        quantise_codes(state["blocks.0.mlp.fc.weight"], 6, clip="gptq")
