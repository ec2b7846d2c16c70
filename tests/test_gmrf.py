"""pool/gmrf.py: the sparse solve agrees with the dense inverse it replaced, its draws have the
posterior's covariance, and beyond the exact-variance budget the estimate stays close."""

from __future__ import annotations

import numpy as np
import pytest

from p2pgolf.pool import gmrf


def _system(k: int, classes: int, seed: int):
    """A random lineage (roots, one- and two-parent children) observed on a target class and on
    `classes` foreign ones, as the estimator assembles it: (rows, cols, vals, b)."""
    rng = np.random.default_rng(seed)
    rows, cols, vals = [], [], []
    n = k + classes
    b = rng.normal(0.0, 50.0, n)

    def add(idx, coef, prec):
        for a, ca in zip(idx, coef):
            for c, cb in zip(idx, coef):
                rows.append(a), cols.append(c), vals.append(prec * ca * cb)

    for c in range(k):
        if c == 0 or rng.random() < 0.15:
            add([c], [1.0], 44.0)
            continue
        parents = sorted({int(rng.integers(c)) for _ in range(1 if rng.random() < 0.7 else 2)})
        add([c, *parents], [1.0] + [-1.0 / len(parents)] * len(parents), 2500.0)
        add([c], [1.0], 4.4e-3)
    for j in range(classes):
        add([k + j], [1.0], 4.0)
    for c in range(k):
        if rng.random() < 0.6:
            add([c], [1.0], float(rng.uniform(1e3, 4e4)))
        for j in range(classes):
            if rng.random() < 0.3:
                add([c, k + j], [1.0, 1.0], float(rng.uniform(1e3, 4e4)))
    return np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp), np.asarray(vals), b


def _dense(rows, cols, vals, b):
    a = np.zeros((len(b), len(b)))
    np.add.at(a, (rows, cols), vals)
    cov = np.linalg.inv(a)
    return cov @ b, cov


@pytest.mark.parametrize("seed,classes", [(1, 0), (2, 3), (3, 5)])
def test_the_sparse_solve_agrees_with_the_dense_inverse(seed, classes):
    rows, cols, vals, b = _system(120, classes, seed)
    mean, cov = _dense(rows, cols, vals, b)
    got = gmrf.solve(rows, cols, vals, b, 120)
    assert got.exact_var
    np.testing.assert_allclose(got.mean, mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got.var, np.diag(cov), rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(got.small_cov, cov[120:, 120:], rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(got.candidate_cov(), cov[:120, :120], rtol=1e-7, atol=1e-13)


def test_joint_draws_have_the_posterior_covariance():
    rows, cols, vals, b = _system(30, 2, 4)
    _, cov = _dense(rows, cols, vals, b)
    draws = gmrf.solve(rows, cols, vals, b, 30).draw(np.random.default_rng(0), 40_000)
    assert draws.shape == (40_000, 30)
    empirical = np.cov(draws, rowvar=False)
    scale = np.sqrt(np.outer(np.diag(cov[:30, :30]), np.diag(cov[:30, :30])))
    assert np.max(np.abs(empirical - cov[:30, :30]) / scale) < 0.05  # correlations within 0.05


def test_beyond_the_variance_budget_the_variances_are_estimated_closely():
    rows, cols, vals, b = _system(300, 3, 5)
    mean, cov = _dense(rows, cols, vals, b)
    got = gmrf.solve(rows, cols, vals, b, 300, variance_budget=0)
    assert not got.exact_var
    np.testing.assert_allclose(got.mean, mean, rtol=1e-9, atol=1e-9)  # the mean is exact either way
    ratio = got.var[:300] / np.diag(cov)[:300]
    assert np.median(np.abs(ratio - 1.0)) < 0.05 and np.max(np.abs(ratio - 1.0)) < 0.5


def test_exact_variances_hold_where_the_factor_has_entries_that_cancel_to_zero():
    # C = [[1,1,1],[1,2,1],[1,1,3]]: eliminating the first unknown makes the (3,2) entry of L exactly
    # 0, which SuperLU leaves out of L's pattern, though Z's (3,2) entry is not 0 (a KeyError in a
    # simulator run before). Every ordering, and random integer systems with such cancellations.
    import itertools


    def check(m: np.ndarray) -> None:
        r, c = np.nonzero(m)
        got = gmrf.solve(r, c, m[r, c], np.ones(len(m)), len(m))
        assert got.exact_var
        np.testing.assert_allclose(got.var, np.diag(np.linalg.inv(m)), rtol=1e-9, atol=1e-12)

    base = np.array([[1.0, 1, 1], [1, 2, 1], [1, 1, 3]])
    for p in itertools.permutations(range(3)):
        check(base[np.ix_(p, p)])
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(3, 9))
        f = np.tril(rng.integers(-1, 2, size=(n, n)).astype(float) * (rng.random((n, n)) < 0.4), -1) + np.eye(n)
        check(f @ np.diag(rng.integers(1, 3, size=n).astype(float)) @ f.T)  # L D L' with small integers: exact cancellations are common
