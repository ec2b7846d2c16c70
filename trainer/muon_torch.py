"""Muon (momentum orthogonalised by Newton-Schulz) for the 2-D weights of the blocks, in torch.

What it guarantees:
- Each step: momentum buffer m = mu*m + g; the update is the Nesterov combination g + mu*m,
  with each row scaled to unit norm first when `row_normalize` (MuonEq-R), orthogonalised by
  `backend_steps` Newton-Schulz iterations (`coeffs`: trainer.muon_coefficients), scaled by
  sqrt(max(1, rows/cols)), and applied with the group's `lr`. Decoupled weight decay multiplies
  the weight by (1 - lr*weight_decay) first.
- Under torch.distributed, rank r orthogonalises parameters r, r+world, ... and one all-reduce
  shares the updates, so every rank applies identical updates (gradients must already be
  averaged, as DDP does).
- Newton-Schulz runs in bf16 on CUDA (as the baseline does, compiled) and float32 elsewhere,
  where bf16 matmuls are slow or imprecise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from p2pgolf.trainer.muon_coefficients import coefficients

__all__ = ["Muon", "newton_schulz", "normalise_rows"]


def newton_schulz(g: Tensor, steps: int, eps: float = 1e-7, coeffs: str = "quintic") -> Tensor:
    """An approximately orthogonal matrix with the row/column space of `g` (2-D)."""
    dtype = torch.bfloat16 if g.is_cuda else torch.float32
    x = g.to(dtype)
    x = x / (x.norm() + eps)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    for a_, b_, c_ in coefficients(coeffs, steps):
        a = x @ x.T
        b = b_ * a + c_ * (a @ a)
        x = a_ * x + b @ x
    return x.T if transposed else x


def normalise_rows(g: Tensor, eps: float = 1e-7) -> Tensor:
    """`g` with each row divided by its L2 norm (at least `eps`), in float32 arithmetic."""
    norms = g.float().norm(dim=-1, keepdim=True).clamp_min(eps)
    return g / norms.to(g.dtype)


_compiled_ns = None


def _orthogonalise(g: Tensor, steps: int, coeffs: str) -> Tensor:
    # On CUDA the iteration is compiled once (a few shapes): dozens of small kernels become a few.
    global _compiled_ns
    if not g.is_cuda:
        return newton_schulz(g, steps, coeffs=coeffs)
    if _compiled_ns is None:
        _compiled_ns = torch.compile(newton_schulz)
    return _compiled_ns(g, steps, coeffs=coeffs)


class Muon(torch.optim.Optimizer):
    """Muon for matrices. Groups take lr, momentum, backend_steps, weight_decay, nesterov,
    row_normalize and coeffs."""

    def __init__(
        self,
        params,
        *,
        lr: float,
        momentum: float,
        backend_steps: int,
        weight_decay: float = 0.0,
        nesterov: bool = True,
        row_normalize: bool = False,
        coeffs: str = "quintic",
    ) -> None:
        coefficients(coeffs, 1)  # an unknown set fails here, not at the first step
        defaults = dict(lr=lr, momentum=momentum, backend_steps=backend_steps, weight_decay=weight_decay, nesterov=nesterov, row_normalize=row_normalize, coeffs=coeffs)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D parameters only, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        dist = torch.distributed
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            lr, mu = group["lr"], group["momentum"]
            flat = torch.zeros(sum(p.numel() for p in params), device=params[0].device, dtype=torch.float32)
            offset = 0
            for i, p in enumerate(params):
                if i % world == rank and p.grad is not None:
                    g = p.grad
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    buf = state["momentum_buffer"]
                    buf.mul_(mu).add_(g)
                    if group["nesterov"]:
                        g = g.add(buf, alpha=mu)
                    else:
                        g = buf
                    if group["row_normalize"]:
                        g = normalise_rows(g)
                    update = _orthogonalise(g, group["backend_steps"], group["coeffs"])
                    update = update * max(1.0, p.size(0) / p.size(1)) ** 0.5
                    flat[offset : offset + p.numel()] = update.reshape(-1).float()
                offset += p.numel()
            if distributed:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in params:
                if group["weight_decay"] > 0:
                    p.mul_(1.0 - lr * group["weight_decay"])
                p.add_(flat[offset : offset + p.numel()].view_as(p).to(p.dtype), alpha=-lr)
                offset += p.numel()
        return loss
