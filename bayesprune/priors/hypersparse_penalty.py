"""The HyperSparse penalty (Glandorf, Kaiser & Rosenhahn, 2023) and its Pyro factor.

Over the prunable weights ``w`` (all layers concatenated) and the target prune rate κ::

    s  = asinh(1/√2) / |w|₍κ₎            (|w|₍κ₎: the κ-quantile of |w|; s is a constant)
    T  = Σⱼ tanh(s |wⱼ|)
    HS(w) = Σᵢ |wᵢ| · T / sg(T) − Σᵢ |wᵢ|   (sg: stop-gradient)

Its *value* is 0 (up to rounding); its gradient ``(Σ|w| / T) · s · sech²(s|wᵢ|) · sign(wᵢ)``
pushes small weights (below the κ-quantile, where ``sech²`` is large) to zero much harder
than large ones. ``s`` is chosen so that ``tanh(s |w|₍κ₎) = tanh(asinh(1/√2)) = 1/√3``.
``|w|₍κ₎`` is the ``(⌊κ n⌋ + 1)``-th smallest magnitude, as in the authors' code.

:class:`HyperSparseFactor` is ``exp(−c · HS(w))`` as a Pyro distribution over the *last*
weight tensor given the others (an improper density: it cannot be sampled), so that the
Pyro model of a :class:`~bayesprune.nn.BayesianNet` carries the same coupled term as the
fused loss.

>>> import torch
>>> w = torch.tensor([0.1, -0.2, 0.3, -0.4], requires_grad=True)
>>> float(hypersparse_penalty(w, 0.5).detach().abs()) < 1e-6
True
>>> float(torch.tanh(hypersparse_scale(w.abs(), 0.5) * 0.3) ** 2)  # |w|(0.5) = 0.3
0.3333333...
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

#: asinh(1/√2): tanh of it is 1/√3
SCALE_CONSTANT = math.asinh(1.0 / math.sqrt(2.0))


@torch.no_grad()
def hypersparse_scale(w_abs: Tensor, sparsity: float) -> Tensor:
    """``s = asinh(1/√2) / |w|₍κ₎`` (detached), ``|w|₍κ₎`` the ``(⌊κn⌋+1)``-th smallest of
    ``w_abs`` (floored at the dtype's smallest normal number, so ``s`` stays finite)."""
    flat = w_abs.detach().flatten()
    k = min(math.floor(sparsity * flat.numel()) + 1, flat.numel())
    q = torch.kthvalue(flat, k).values
    return SCALE_CONSTANT / q.clamp_min(torch.finfo(flat.dtype).tiny)


def hypersparse_penalty(w: Tensor, sparsity: float) -> Tensor:
    """``HS(w)`` over all entries of ``w`` (flattened), with target prune rate ``sparsity``."""
    a = w.flatten().abs()
    s = hypersparse_scale(a, sparsity)
    t = torch.tanh(s * a).sum()
    total = a.sum()
    return total * t / t.detach() - total


class HyperSparseFactor(TorchDistribution):
    """The improper density ``exp(−weight · HS([others..., value]))`` over ``value``.

    :param others: the other layers' weights (their current values, in model order).
    :param weight: ``α N``: the penalty weight per example times the training-set size.
    :param sparsity: κ.
    :param event_shape: the shape of ``value`` (the last layer's weight).
    """

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(
        self,
        others: list[Tensor],
        weight: float,
        sparsity: float,
        event_shape: tuple[int, ...],
        validate_args: bool | None = None,
    ) -> None:
        self.others = list(others)
        self.weight = float(weight)
        self.sparsity = float(sparsity)
        super().__init__(torch.Size(), torch.Size(event_shape), validate_args=validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        w = torch.cat([o.flatten() for o in self.others] + [value.flatten()])
        return -self.weight * hypersparse_penalty(w, self.sparsity)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        raise NotImplementedError("HyperSparseFactor is an improper density: it has no samples")

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> HyperSparseFactor:
        if tuple(batch_shape) != ():
            raise NotImplementedError("HyperSparseFactor has no batch dimensions")
        return self
