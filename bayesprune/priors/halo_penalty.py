"""The HALO penalty ``ξ Σ|θ|/λ² + ψ Σλ`` as one autograd function.

Written out by hand so that forward and backward take a handful of passes over
the weights instead of the dozen or so that autograd records for the same
expression -- HALO with per-weight scales doubles the number of trained
tensors, and on small networks these elementwise passes are a large share of a
step. Equal to the plain expression to float precision (tested with
``gradcheck``).

>>> import torch
>>> theta = torch.tensor([1.0, -2.0]); lam = torch.tensor([1.0, 2.0])
>>> float(halo_penalty(theta, lam, 3.0, 0.5))  # 3 * (1 + 2/4) + 0.5 * 3
6.0
"""

from __future__ import annotations

import torch
from torch import Tensor


class _HaloPenalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, theta: Tensor, lam: Tensor, xi: float, psi: float) -> Tensor:
        rinv = lam.reciprocal()
        inv2 = rinv * rinv  # λ^-2, θ's shape or (units, 1, ...)
        a = theta.abs()
        if inv2.shape == a.shape:  # per weight
            shrink = torch.dot(a.flatten(), inv2.flatten())
        else:  # per-unit scales: only the row sums of |θ| are needed for dλ
            a = a.flatten(1).sum(1).reshape(lam.shape)
            shrink = torch.dot(a.flatten(), inv2.flatten())
        ctx.save_for_backward(theta, rinv, inv2, a)
        ctx.xi, ctx.psi = xi, psi
        return shrink * xi + lam.sum() * psi

    @staticmethod
    def backward(ctx, g: Tensor):
        # every factor stays a tensor: a Python scalar taken from ``g`` (e.g. addcmul's
        # ``value=``) would be a host sync on CUDA
        theta, rinv, inv2, a = ctx.saved_tensors
        xi, psi = ctx.xi, ctx.psi
        d_theta = d_lam = None
        if ctx.needs_input_grad[0]:
            # ξ g sgn(θ) / λ²  (sgn(0) = 0, the subgradient autograd's abs uses)
            d_theta = torch.sgn(theta).mul_(inv2).mul_(g * xi)
        if ctx.needs_input_grad[1]:
            # d/dλ [ξ|θ|/λ² + ψλ] = ψ - 2ξ|θ|/λ³
            d_lam = torch.mul(a, inv2).mul_(rinv).mul_(g * (-2.0 * xi)).add_(g * psi)
        return d_theta, d_lam, None, None


def halo_penalty(theta: Tensor, lam: Tensor, xi: float, psi: float) -> Tensor:
    """``xi * Σ|θ|/λ² + psi * Σλ``; ``lam`` has θ's shape or ``(units, 1, ...)``.

    :param theta: weights.
    :param lam: positive shrinkage scales, broadcastable against ``theta`` along dim 0.
    :param xi: weight of the adaptive lasso term.
    :param psi: weight of the scale penalty.
    """
    return _HaloPenalty.apply(theta, lam, float(xi), float(psi))
