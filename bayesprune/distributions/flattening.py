"""The "flattening" hyper-prior over a Bernoulli gate's prior probability.

``p(π) ∝ 1 / (1 + π (e^γ − 1))`` on ``[0, 1]``, with normaliser
``Z = γ / (e^γ − 1)``.

Why this density (after Guenter & Sideris, "Robust Learning of Parsimonious
Deep Neural Networks"): a unit's gate is ``z ~ Bernoulli(π)`` a priori and
``Bernoulli(θ)`` a posteriori. Maximising the gate's part of the ELBO over the
prior parameter,

    max_π [ −KL(Bern(θ) ‖ Bern(π)) + log p(π) ],

has its optimum at ``π*(θ) = θ / (1 + (e^γ − 1)(1 − θ))`` (set the derivative
``θ/π − (1−θ)/(1−π) − (e^γ−1)/(1+π(e^γ−1))`` to zero: it reduces to
``θ + θcπ − π − cπ = 0`` with ``c = e^γ − 1``), and there

    −KL(θ ‖ π*) + log p(π*) = −γ θ − log Z.

The entropy of the gate's posterior is cancelled exactly: each gate costs
``γ θ``, linear in θ. With independent Bernoulli gates the expected
log-likelihood is multilinear in the θs, so the whole objective is multilinear
and its minimisers sit at vertices θ ∈ {0, 1}: the posterior collapses to a
deterministic network. γ (per unit) is the price of keeping a unit.

>>> import torch
>>> d = Flattening(torch.tensor(3.0))
>>> float(d.log_prob(torch.tensor(0.0)) - d.log_prob(torch.tensor(1.0)))  # log(1 + (e^3 - 1))
3.0
"""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all


def _log1pexp_minus(gamma: Tensor, p: Tensor) -> Tensor:
    """``log(1 + p (e^γ − 1)) = log(p e^γ + 1 − p)``, stable for large γ and p ∈ [0, 1]."""
    return torch.logaddexp(gamma + torch.log(p), torch.log1p(-p))


def log_normalizer(gamma: Tensor) -> Tensor:
    """``log Z = log γ − log(e^γ − 1)``; ``γ → 0`` gives the uniform density (``Z = 1``)."""
    g = gamma.clamp_min(1e-12)
    # log(e^γ − 1) = γ + log(1 − e^−γ)
    return torch.where(gamma > 1e-6, torch.log(g) - g - torch.log(-torch.expm1(-g)), -g / 2)


def optimal_prior_prob(theta: Tensor, gamma: Tensor) -> Tensor:
    """``π*(θ) = θ / (1 + (e^γ − 1)(1 − θ))``, the prior probability that maximises
    ``−KL(Bern(θ) ‖ Bern(π)) + log p(π)``; computed stably for large γ."""
    # divide numerator and denominator by e^γ
    e = torch.exp(-gamma)
    return theta * e / (e + (1 - e) * (1 - theta))


def gate_cost(theta: Tensor, gamma: Tensor) -> Tensor:
    """``γ θ + log Z``: a gate's part of the negative ELBO once π is at its optimum."""
    return gamma * theta + log_normalizer(gamma)


class Flattening(TorchDistribution):
    """Density ``∝ 1 / (1 + π (e^γ − 1))`` on ``[0, 1]``.

    :param gamma: the price of a kept unit (``γ ≥ 0``; ``0`` is uniform). Broadcasts.
    """

    arg_constraints = {"gamma": constraints.nonnegative}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, gamma: Tensor | float, validate_args: bool | None = None) -> None:
        (self.gamma,) = broadcast_all(gamma)
        super().__init__(self.gamma.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Flattening, _instance)
        new.gamma = self.gamma.expand(batch_shape)
        super(Flattening, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return -_log1pexp_minus(self.gamma, value) - log_normalizer(self.gamma)

    def cdf(self, value: Tensor) -> Tensor:
        """``log(1 + π(e^γ − 1)) / γ``."""
        g = self.gamma.clamp_min(1e-12)
        return torch.where(self.gamma > 1e-6, _log1pexp_minus(g, value) / g, value)

    def icdf(self, u: Tensor) -> Tensor:
        """``(e^{γu} − 1) / (e^γ − 1)``."""
        g = self.gamma.clamp_min(1e-12)
        out = torch.exp(g * (u - 1)) * torch.expm1(g * u) / torch.expm1(g) * torch.exp(g * (1 - u))
        return torch.where(self.gamma > 1e-6, out, u)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        u = torch.rand(shape, dtype=self.gamma.dtype, device=self.gamma.device)
        return self.icdf(u)

    @property
    def mean(self) -> Tensor:
        # ∫ π/(1+cπ) dπ / Z = (1/c)(1 − log(1+c)/c) / Z with c = e^γ − 1
        c = torch.expm1(self.gamma)
        m = (1 / c) * (1 - self.gamma / c) / torch.exp(log_normalizer(self.gamma))
        return torch.where(self.gamma > 1e-6, m, torch.full_like(m, 0.5))


__all__ = ["Flattening", "gate_cost", "log_normalizer", "optimal_prior_prob"]
