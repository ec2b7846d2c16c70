"""The estimator's linear algebra: a sparse Gaussian posterior with a small dense block.

The estimator's precision matrix has two parts. The first `k` unknowns (candidates) are
coupled only through lineage (a child to its parents) and observations on this class: a sparse
block C. The last `s` unknowns (a foreign class's offset, per-knob transfer terms) are few but
touch many candidates: a dense block D, coupled to C through B (k x s). `solve` eliminates the
small block by its Schur complement S = D - B' C^-1 B, so the cost follows the sparse
factorisation of C (scipy's SuperLU, with a symmetric minimum-degree ordering) and never forms a
dense k x k matrix:

    y = S^-1 (b_s - W' b_c),  x = C^-1 b_c - W y,  W = C^-1 B
    Var(x_i) = (C^-1)_ii + (W S^-1 W')_ii,  Cov(y) = S^-1

(C^-1)_ii comes from the factor by Takahashi's recursion (the selected inverse on the factor's
pattern), exact. Its cost grows with the factor's fill (the sum over columns of the squared
column counts): a lineage whose parents cross-link at random (as keys that cite random parents
can make it) fills the factor, and above `EXACT_VARIANCE_BUDGET` the diagonal is estimated
instead by the Rao-Blackwellised Monte Carlo estimator (Siden, Lindgren, Bolin, Villani 2018):
Var(x_i) = 1/C_ii + Var(sum_j!=i C_ij x_j) / C_ii^2 over `MC_DRAWS` exact joint draws, so the
time a decision takes stays bounded whatever lineage the pool holds (`exact_var` says which).

Joint draws (`draw`) are exact either way: x = P' L'^-1 D^-1/2 z - W y, y ~ N(0, S^-1) (with
P C P' = L D L', the first term is C^-1 P' L D^1/2 z: one triangular solve, which scipy's
`spsolve_triangular` runs for many draws at once about 5x faster than SuperLU's full solve).

Guarantees (tests/test_gmrf.py): the mean and, under the budget, the variances agree with the
dense inverse to rounding; draws have the posterior's covariance; nothing of size k x k is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EXACT_VARIANCE_BUDGET = 400_000  # Takahashi's cost (sum of squared factor column counts), ~0.3 s of Python
MC_DRAWS = 48  # draws of the Monte Carlo variance estimate beyond the budget


@dataclass
class GaussianSolution:
    """Mean and marginal variances of x ~ N(A^-1 b, A^-1), with exact joint draws of its first `k`."""

    mean: np.ndarray
    var: np.ndarray
    k: int
    exact_var: bool
    small_cov: np.ndarray  # covariance of the last n - k unknowns (s x s)
    _lu: object = field(repr=False, default=None)
    _sqrt_d: np.ndarray | None = field(repr=False, default=None)
    _upper: object = field(repr=False, default=None)  # L' (CSR), unit upper triangular
    _perm: np.ndarray | None = field(repr=False, default=None)
    _w: np.ndarray | None = field(repr=False, default=None)
    _small_chol: np.ndarray | None = field(repr=False, default=None)

    def draw(self, rng: np.random.Generator, size: int = 1) -> np.ndarray:
        """Joint draws of the first `k` unknowns' deviations from the mean, shape (size, k)."""
        if self.k == 0:
            return np.zeros((size, 0))
        z = rng.standard_normal((self.k, size))
        dev = _conditional_draws(self._upper, self._sqrt_d, self._perm, z)
        if self._w is not None and self._w.shape[1]:
            y = self._small_chol @ rng.standard_normal((self._w.shape[1], size))
            dev -= self._w @ y
        return dev.T

    def candidate_cov(self) -> np.ndarray:
        """The dense covariance of the first `k` unknowns (k x k: for small systems only)."""
        if self.k == 0:
            return np.zeros((0, 0))
        cinv = self._lu.solve(np.eye(self.k))
        if self._w is not None and self._w.shape[1]:
            cinv += self._w @ self.small_cov @ self._w.T
        return (cinv + cinv.T) / 2.0


def solve(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, b: np.ndarray, k: int, *, variance_budget: int = EXACT_VARIANCE_BUDGET) -> GaussianSolution:
    """The posterior of the Gaussian with precision A (given as (row, col, value) triples, summed
    where they repeat; symmetric, positive definite) and information vector b, where the first
    `k` unknowns form the sparse block."""
    import scipy.sparse as sparse
    from scipy.sparse.linalg import splu

    n = len(b)
    s = n - k
    a = sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))
    if k == 0:
        dense = a.toarray()
        cov = np.linalg.inv(dense) if n else np.zeros((0, 0))
        cov = (cov + cov.T) / 2.0
        return GaussianSolution(cov @ b, np.diag(cov).copy(), 0, True, cov)
    c = a[:k, :k].tocsc()
    lu = splu(c, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    if not np.array_equal(lu.perm_r, lu.perm_c):  # pragma: no cover - SuperLU pivoted off the diagonal
        raise np.linalg.LinAlgError("the lineage block is not positive definite (SuperLU pivoted)")
    lower = lu.L.tocsc()
    d = lu.U.diagonal()
    if np.any(d <= 0):
        raise np.linalg.LinAlgError("the lineage block is not positive definite")
    sqrt_d = np.sqrt(d)
    perm = lu.perm_c
    upper = lower.T.tocsr()
    upper.sort_indices()  # once here, not in every spsolve_triangular call
    b_c, b_s = b[:k], b[k:]
    x = lu.solve(b_c)
    counts = np.diff(lower.indptr) - 1
    cost = float(np.dot(counts.astype(float), counts))
    exact = cost <= variance_budget
    if exact and lower.nnz == k:  # a diagonal block (L is the identity): the inverse is 1/d
        var_c = (1.0 / d)[perm]
    elif exact:
        var_c = _takahashi_diagonal(lower, d)[perm]
    else:
        var_c = _mc_diagonal(c, upper, sqrt_d, perm, np.random.default_rng(0))
    w = small_cov = small_chol = None
    if s:
        bmat = a[:k, k:].toarray()
        dmat = a[k:, k:].toarray()
        w = lu.solve(bmat)
        schur = dmat - bmat.T @ w
        small_cov = np.linalg.inv((schur + schur.T) / 2.0)
        small_cov = (small_cov + small_cov.T) / 2.0
        y = small_cov @ (b_s - w.T @ b_c)
        x = x - w @ y
        var_c = var_c + np.einsum("ij,ij->i", w @ small_cov, w)
        small_chol = np.linalg.cholesky(small_cov + np.eye(s) * 1e-14)
        mean = np.concatenate([x, y])
        var = np.concatenate([var_c, np.diag(small_cov)])
    else:
        small_cov = np.zeros((0, 0))
        mean, var = x, var_c
    return GaussianSolution(mean, var, k, exact, small_cov, lu, sqrt_d, upper, perm, w, small_chol)


def _conditional_draws(upper, sqrt_d, perm, z: np.ndarray) -> np.ndarray:
    """Draws of N(0, C^-1) from standard normals z (k x size): with P C P' = L D L',
    C^-1 = P' L'^-1 D^-1 L^-1 P, so v = L'^-1 D^-1/2 z has covariance P C^-1 P' and P' v (the
    entries of v in the order `perm`) has covariance C^-1."""
    from scipy.sparse.linalg import spsolve_triangular

    v = spsolve_triangular(upper, z / sqrt_d[:, None], lower=False, unit_diagonal=True, overwrite_b=True)  # b: a temporary
    return v[perm]


def _takahashi_diagonal(lower, d: np.ndarray) -> np.ndarray:
    """diag(Z), Z = (L D L')^-1 with L unit lower triangular (CSC): Takahashi's recursion, column
    by column from the last, touching only Z's entries on the symbolic pattern of L (closed under
    the elimination, so every entry a column needs is already known). SuperLU leaves out entries
    that cancel to exactly zero, so the pattern is closed here first: those entries are zeros of
    L but not of Z."""
    k = len(d)
    indptr = lower.indptr.tolist()
    indices = lower.indices.tolist()
    data = lower.data.tolist()
    inv_d = (1.0 / d).tolist()
    values = [{indices[p]: data[p] for p in range(indptr[j], indptr[j + 1]) if indices[p] > j} for j in range(k)]
    pattern = [set(v) for v in values]
    for j in range(k):  # the elimination tree: j's parent is its first row below; it inherits j's rows
        if pattern[j]:
            parent = min(pattern[j])
            pattern[parent] |= pattern[j] - {parent}
    zdiag = [0.0] * k
    zcol: list[dict[int, float] | None] = [None] * k
    for j in range(k - 1, -1, -1):
        below = [(r, values[j].get(r, 0.0)) for r in pattern[j]]
        col: dict[int, float] = {}
        acc = 0.0
        for r, l_r in below:
            v = 0.0
            for t, l_t in below:
                if r == t:
                    v -= l_t * zdiag[r]
                elif r < t:
                    v -= l_t * zcol[r][t]
                else:
                    v -= l_t * zcol[t][r]
            col[r] = v
            acc += l_r * v
        zcol[j] = col
        zdiag[j] = inv_d[j] - acc
    return np.asarray(zdiag)


def _mc_diagonal(c, upper, sqrt_d, perm, rng: np.random.Generator) -> np.ndarray:
    """diag(C^-1) by the simple Rao-Blackwellised estimator over MC_DRAWS exact draws."""
    k = c.shape[0]
    diag = c.diagonal()
    xs = _conditional_draws(upper, sqrt_d, perm, rng.standard_normal((k, MC_DRAWS)))
    off = c @ xs - diag[:, None] * xs  # sum over j != i of C_ij x_j, per draw
    return 1.0 / diag + np.mean(off**2, axis=1) / diag**2
