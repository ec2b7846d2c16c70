"""The optimiser step in MLX: Muon for the blocks' matrices, Adam for everything else.

What it guarantees: the same update rules, groups and learning rates as the torch backend
(`trainer.muon_torch.Muon` and `torch.optim.Adam`), so that from the same weights and the same
gradients both backends take the same step (tests/test_mlx_parity.py):
- groups by `trainer.model_spec.parameter_role`, peak LRs by `role_lr`, each multiplied by the
  step's schedule factor;
- Muon: m = mu*m + g; update = NS(g + mu*m) (Nesterov; rows scaled to unit norm first with
  `muon_row_normalize`; coefficients `muon_ns_coeffs`) * sqrt(max(1, rows/cols)); decoupled
  weight decay multiplies the weight by (1 - lr*muon_weight_decay*taper) first (taper: the
  schedule's `weight_decay` multiplier);
- Adam as torch has it: bias-corrected moments, step = lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps);
  with a decoupled decay (`role_weight_decay`) the weight is first multiplied by (1 - lr*decay),
  as torch's AdamW does;
- optional global gradient-norm clip as torch's clip_grad_norm_ (scale by max/(norm+1e-6) when
  that is below 1);
- optional EMA of the weights (`ema_decay`), which evaluation then uses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import mlx.core as mx

from p2pgolf.trainer.model_spec import parameter_role, role_lr, role_weight_decay
from p2pgolf.trainer.muon_coefficients import coefficients

__all__ = ["MixedOptimizer", "newton_schulz", "normalise_rows", "clip_by_global_norm"]


def newton_schulz(g: mx.array, steps: int, eps: float = 1e-7, dtype: mx.Dtype = mx.float32, coeffs: str = "quintic") -> mx.array:
    """An approximately orthogonal matrix with the row/column space of `g` (2-D), in float32."""
    x = g.astype(dtype)
    x = x / (mx.sqrt(mx.sum(mx.square(x.astype(mx.float32)))).astype(dtype) + eps)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    for a_, b_, c_ in coefficients(coeffs, steps):
        a = x @ x.T
        b = b_ * a + c_ * (a @ a)
        x = a_ * x + b @ x
    x = x.T if transposed else x
    return x.astype(mx.float32)


def normalise_rows(g: mx.array, eps: float = 1e-7) -> mx.array:
    """`g` with each row divided by its L2 norm (at least `eps`), computed in float32."""
    norms = mx.sqrt(mx.sum(mx.square(g.astype(mx.float32)), axis=-1, keepdims=True))
    return g / mx.maximum(norms, eps).astype(g.dtype)


def clip_by_global_norm(grads: dict[str, mx.array], max_norm: float) -> tuple[dict[str, mx.array], mx.array]:
    """Gradients scaled so their global L2 norm is at most `max_norm` (torch's rule); and the norm."""
    total = mx.sqrt(sum(mx.sum(mx.square(g.astype(mx.float32))) for g in grads.values()))
    coef = mx.minimum(max_norm / (total + 1e-6), 1.0)
    return {name: g * coef.astype(g.dtype) for name, g in grads.items()}, total


class MixedOptimizer:
    """Muon + Adam over a flat {shared name: array} view of a model's parameters."""

    def __init__(self, params: Mapping[str, mx.array], config: Mapping[str, Any], *, ns_dtype: mx.Dtype = mx.float32) -> None:
        self.roles = {name: parameter_role(name, tuple(p.shape)) for name, p in params.items()}
        self.peak_lr = {name: role_lr(role, config) for name, role in self.roles.items()}
        self.decay = {name: role_weight_decay(role, config) for name, role in self.roles.items()}
        self.backend_steps = int(config["muon_backend_steps"])
        self.row_normalize = bool(config["muon_row_normalize"])
        self.ns_coeffs = str(config["muon_ns_coeffs"])
        coefficients(self.ns_coeffs, 1)  # an unknown set fails here, not at the first step
        self.beta1 = float(config["beta1"])
        self.beta2 = float(config["beta2"])
        self.eps = float(config["adam_eps"])
        self.grad_clip_norm = float(config["grad_clip_norm"])
        self.ema_decay = float(config["ema_decay"])
        self.ns_dtype = ns_dtype
        self.step_count = 0
        self.state: dict[str, dict[str, mx.array]] = {}
        for name, p in params.items():
            if self.roles[name] == "muon":
                self.state[name] = {"momentum": mx.zeros_like(p)}
            else:
                self.state[name] = {"m": mx.zeros_like(p), "v": mx.zeros_like(p)}
        self.ema: dict[str, mx.array] | None = (
            {name: mx.array(p) for name, p in params.items()} if self.ema_decay > 0 else None
        )

    def step(
        self,
        params: Mapping[str, mx.array],
        grads: Mapping[str, mx.array],
        *,
        lr_scale: float,
        momentum: float,
        weight_decay_scale: float = 1.0,
    ) -> dict[str, mx.array]:
        """The parameters after one step (new arrays; the inputs are not changed)."""
        grads = dict(grads)
        if self.grad_clip_norm > 0:
            grads, _ = clip_by_global_norm(grads, self.grad_clip_norm)
        self.step_count += 1
        t = self.step_count
        bias1 = 1.0 - self.beta1**t
        bias2_sqrt = math.sqrt(1.0 - self.beta2**t)
        out: dict[str, mx.array] = {}
        for name, p in params.items():
            g = grads[name]
            lr = self.peak_lr[name] * lr_scale
            state = self.state[name]
            if self.roles[name] == "muon":
                buf = momentum * state["momentum"] + g
                state["momentum"] = buf
                nesterov = g + momentum * buf
                if self.row_normalize:
                    nesterov = normalise_rows(nesterov)
                update = newton_schulz(nesterov, self.backend_steps, dtype=self.ns_dtype, coeffs=self.ns_coeffs)
                update = update * max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                if self.decay[name] > 0:  # Muon's decay follows the schedule's taper
                    p = p * (1.0 - lr * self.decay[name] * weight_decay_scale)
                out[name] = p - lr * update.astype(p.dtype)
            else:
                if self.decay[name] > 0:
                    p = p * (1.0 - lr * self.decay[name])
                m = self.beta1 * state["m"] + (1.0 - self.beta1) * g
                v = self.beta2 * state["v"] + (1.0 - self.beta2) * mx.square(g)
                state["m"], state["v"] = m, v
                out[name] = p - (lr / bias1) * m / (mx.sqrt(v) / bias2_sqrt + self.eps)
        if self.ema is not None:
            d = self.ema_decay
            self.ema = {name: d * self.ema[name] + (1.0 - d) * out[name] for name in out}
        return out

    def arrays(self) -> list[mx.array]:
        """Every state array (for mx.eval after a step)."""
        arrays = [a for state in self.state.values() for a in state.values()]
        if self.ema is not None:
            arrays.extend(self.ema.values())
        return arrays
