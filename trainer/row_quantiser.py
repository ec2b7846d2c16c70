"""Per-row symmetric quantisation of a weight matrix: where each row is clipped, how its scale is
floored, and against which scale its codes are rounded. Backend-free (numpy), so torch and MLX
models export the same codes.

Clip rules (`row_clip`), each giving one clip value per row; values beyond it saturate:
- "quantile": the row's 0.9999984 quantile of |w| (the reference's; ignores a few outliers);
- "search": the best of the 0.999, 0.9995, 0.9999 and 0.99999 quantiles, the default quantile
  and the row's maximum, chosen per row by the squared error of the dequantised row (the
  records' "GPTQ-lite" chooses per matrix); never worse than "quantile" on any row;
- "sdclip": `clip_sigmas` times the row's standard deviation (SDClip; the records pair it with
  full GPTQ at 10-20 sigmas).
Scale rules (`row_scale_rule`): "fp16_min" floors scales at the smallest normal fp16 and rounds
codes against the fp16 scale that is stored; "reference" is train_gpt.py's: floored at 1/qmax,
codes rounded against the fp32 scale, and its quantile computed in float32 as torch does.

Guarantee: codes lie in [0, 2*qmax] (offset by qmax); with rule "quantile" and "fp16_min" the
codes and scales are the ones earlier versions wrote.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLIP_QUANTILE", "CLIP_RULES", "MIN_SCALE", "SCALE_RULES", "SEARCH_QUANTILES", "gptq_codes", "quantise_codes", "row_clips", "row_quantile_fp32"]

CLIP_QUANTILE = 0.9999984
MIN_SCALE = 2.0**-14  # smallest normal fp16: a smaller scale would lose precision in storage
CLIP_RULES = ("quantile", "search", "sdclip")
SCALE_RULES = ("fp16_min", "reference")
SEARCH_QUANTILES = (0.999, 0.9995, 0.9999, 0.99999, CLIP_QUANTILE, 1.0)


def quantise_codes(matrix: np.ndarray, bits: int, *, rule: str = "fp16_min", clip: str = "quantile", clip_sigmas: float = 12.85) -> tuple[np.ndarray, np.ndarray]:
    """(one unsigned code per byte, row-major; fp16 scale per row) of a 2-D matrix."""
    m = np.asarray(matrix, dtype=np.float32)
    qmax = 2 ** (bits - 1) - 1
    return _codes(m, row_clips(m, bits, rule=rule, clip=clip, clip_sigmas=clip_sigmas), qmax, rule)


def row_clips(matrix: np.ndarray, bits: int, *, rule: str = "fp16_min", clip: str = "quantile", clip_sigmas: float = 12.85) -> np.ndarray:
    """The clip value of each row under the clip rule (for "search": the candidate whose
    dequantised row is closest, rows being independent)."""
    if rule not in SCALE_RULES:
        raise ValueError(f"row scale rule {rule!r} is not one of {', '.join(SCALE_RULES)}")
    if clip not in CLIP_RULES:
        raise ValueError(f"row clip rule {clip!r} is not one of {', '.join(CLIP_RULES)}")
    m = np.asarray(matrix, dtype=np.float32)
    if clip == "sdclip":
        std = m.std(axis=1, ddof=1) if m.shape[1] > 1 else np.zeros(m.shape[0], np.float32)
        return (np.float32(clip_sigmas) * std).astype(np.float32)
    if clip == "quantile":
        return _quantile(m, CLIP_QUANTILE, rule)
    qmax = 2 ** (bits - 1) - 1
    best_clip, best_err = None, None
    for q in SEARCH_QUANTILES:
        candidate = _quantile(m, q, rule)
        codes, scales = _codes(m, candidate, qmax, rule)
        recon = (codes.reshape(m.shape).astype(np.float32) - qmax) * scales.astype(np.float32)[:, None]
        err = np.square(m - recon).mean(axis=1)
        if best_err is None:
            best_clip, best_err = candidate.copy(), err
            continue
        better = err < best_err
        best_clip[better], best_err[better] = candidate[better], err[better]
    return best_clip


def _quantile(m: np.ndarray, q: float, rule: str) -> np.ndarray:
    if not m.size:
        return np.zeros(m.shape[0], np.float32)
    if q >= 1.0:
        return np.abs(m).max(axis=1)
    return row_quantile_fp32(m, q) if rule == "reference" else np.quantile(np.abs(m), q, axis=1)


def _scales(clip: np.ndarray, qmax: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(the fp16 scales stored, the float32 scales codes are rounded against) for row clips."""
    if rule == "reference":
        exact = np.maximum(clip.astype(np.float32) / np.float32(qmax), np.float32(1.0 / qmax)).astype(np.float32)
        return exact.astype(np.float16), exact
    stored = np.maximum(clip / qmax, MIN_SCALE).astype(np.float16)
    return stored, stored.astype(np.float32)


def _clipped(m: np.ndarray, clip: np.ndarray, rule: str) -> np.ndarray:
    """The values the rule rounds: the reference clips them at the row's clip first (which
    matters where its 1/qmax floor makes qmax steps reach past the clip)."""
    if rule != "reference":
        return m
    clip32 = clip.astype(np.float32)
    return np.clip(m, -clip32[:, None], clip32[:, None])


def _codes(m: np.ndarray, clip: np.ndarray, qmax: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    stored, divisor = _scales(clip, qmax, rule)
    codes = np.clip(np.rint(_clipped(m, clip, rule) / divisor[:, None]), -qmax, qmax).astype(np.int16) + qmax  # in [0, 2*qmax]
    return codes.astype(np.uint8).ravel(), stored


def row_quantile_fp32(m: np.ndarray, q: float) -> np.ndarray:
    """Each row's `q` quantile of |m| in float32 arithmetic, as torch.quantile computes it (the
    rank q * (n - 1) in float32, then a float32 lerp between its neighbours), so the reference
    rule's clip values agree bit for bit with the reference's; numpy's own quantile interpolates
    in float64 and differs in the last bits."""
    if not m.size:
        return np.zeros(m.shape[0], np.float32)
    ordered = np.sort(np.abs(m), axis=1)
    n = ordered.shape[1]
    rank = np.float32(q) * np.float32(n - 1)
    below = int(np.floor(rank))
    above = min(below + 1, n - 1)
    weight = np.float32(rank - np.float32(below))
    lo, hi = ordered[:, below], ordered[:, above]
    if weight < 0.5:
        return lo + weight * (hi - lo)
    return hi - (hi - lo) * (np.float32(1.0) - weight)


def gptq_codes(matrix: np.ndarray, bits: int, hessian: np.ndarray, *, rule: str = "fp16_min", clip: str = "quantile", clip_sigmas: float = 12.85,
               block: int = 128, damp: float = 0.01) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """`quantise_codes` with GPTQ's error feedback (Frantar et al., 2022): the row clips and
    scales are the clip and scale rules' (`row_clips`, so a diagonal `hessian`, which feeds no
    error forward, gives `quantise_codes`' codes), and the columns are rounded one at a time, in order of decreasing input energy,
    each one's rounding error spread over the columns not yet rounded through the inverse of
    `hessian` (sum of x x^T over calibration inputs, [in, in]), so the layer's output on those
    inputs moves as little as the grid allows. Same return as `quantise_codes`."""
    m = np.asarray(matrix, dtype=np.float64)
    rows, cols = m.shape
    h = np.array(hessian, dtype=np.float64)
    if h.shape != (cols, cols):
        raise ValueError(f"hessian of shape {h.shape} does not fit a matrix with {cols} columns")
    qmax = 2 ** (bits - 1) - 1
    clips = row_clips(matrix, bits, rule=rule, clip=clip, clip_sigmas=clip_sigmas)
    scales, divisor = _scales(clips, qmax, rule)
    s = divisor[:, None]
    bound = clips.astype(np.float32)[:, None] if rule == "reference" else None
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    m[:, dead] = 0.0
    h[np.diag_indices(cols)] += damp * float(np.mean(np.diag(h)))
    order = np.argsort(-np.diag(h), kind="stable")
    inverse_order = np.argsort(order)
    w = m[:, order].copy()
    h = h[np.ix_(order, order)]
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H^-1
    codes = np.zeros((rows, cols), dtype=np.int16)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        err = np.zeros((rows, end - start))
        for j in range(start, end):
            col = w[:, j : j + 1].astype(np.float32)  # rounded as quantise_codes rounds
            if bound is not None:
                col = np.clip(col, -bound, bound)
            q = np.clip(np.rint(col / s), -qmax, qmax)
            codes[:, j] = q[:, 0]
            e = (w[:, j : j + 1] - q.astype(np.float64) * s) / hinv[j, j]
            err[:, j - start] = e[:, 0]
            w[:, j + 1 : end] -= e * hinv[j, j + 1 : end][None, :]
        w[:, end:] -= err @ hinv[start:end, end:]
    codes = codes[:, inverse_order] + qmax
    return codes.astype(np.uint8).ravel(), scales
