"""``softplus(ρ) = log(1 + e^ρ)`` without ``log1p``: the mean-field guide's standard deviations.

PyTorch's CPU ``softplus`` (and ``log1p``, which it calls) runs a scalar loop, about ten
times slower per element than ``exp`` or ``log``; with a standard deviation per weight
it was the largest single cost of a mean-field step. This form takes ``log1p(y)`` for
``y = e^{-|ρ|}`` from ``log(1 + y)`` with Goldberg's correction ``· y / ((1 + y) − 1)``,
which cancels the rounding of ``1 + y`` (accurate to a few ulps), and differentiates by
hand: ``softplus'(ρ) = sigmoid(ρ)``. Equal to ``torch.nn.functional.softplus`` to float
precision (``tests/guides/test_softplus.py``).

>>> import torch
>>> float(softplus(torch.tensor(0.0)))  # log 2
0.693147...
"""

from __future__ import annotations

import torch
from torch import Tensor


class _Softplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rho: Tensor) -> Tensor:
        y = rho.abs().neg_().exp_()  # e^{-|ρ|} in (0, 1]
        u = y + 1
        d = u - 1  # 0 once y is below half an ulp of 1; there log1p(y) = y
        small = d == 0
        out = u.log_().mul_(y).div_(d)
        out = torch.where(small, y, out).add_(rho.clamp_min(0))
        ctx.save_for_backward(rho)
        return out

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (rho,) = ctx.saved_tensors
        return torch.sigmoid(rho).mul_(g)


def softplus(rho: Tensor) -> Tensor:
    """``log(1 + e^ρ)``, elementwise, differentiable (``torch.nn.functional.softplus``)."""
    return _Softplus.apply(rho)
