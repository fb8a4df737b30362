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

_LARGE = 20.0  # above this γ, e^γ − 1 is formed in log space


def _log1pexp_minus(gamma: Tensor, p: Tensor) -> Tensor:
    """``log(1 + p (e^γ − 1)) = log(p e^γ + 1 − p)`` for p ∈ [0, 1]: ``log1p(p expm1(γ))``
    (no cancellation for small γ) up to γ = 20, ``logaddexp`` (no overflow) above.

    ``torch.where`` differentiates both branches, so each has a finite gradient on all of
    [0, 1]: ``logaddexp`` meets ``log 0`` at the vertices, where its value is known (0 at
    p = 0, γ at p = 1) and is continued linearly with the true slope (``e^γ − 1``, capped
    below overflow, at 0; ``1 − e^−γ`` at 1). A gate probability at a vertex then gets a
    finite gradient (Pyro's ``Trace_ELBO`` differentiates this at ``π*(θ)``)."""
    moderate = torch.log1p(p * torch.expm1(gamma.clamp_max(_LARGE)))
    inner = (p > 0) & (p < 1)
    q = torch.where(inner, p, torch.full_like(p, 0.5))
    large = torch.logaddexp(gamma + torch.log(q), torch.log1p(-q))
    at0 = p * torch.expm1(gamma.clamp_max(80.0))
    at1 = gamma + (p - 1) * -torch.expm1(-gamma)
    large = torch.where(inner, large, torch.where(p <= 0, at0, at1))
    return torch.where(gamma <= _LARGE, moderate, large)


def log_normalizer(gamma: Tensor) -> Tensor:
    """``log Z = log γ − log(e^γ − 1)``; ``γ → 0`` gives the uniform density (``Z = 1``)."""
    g = gamma.clamp_min(0.5)
    # log(e^γ − 1) = γ + log(1 − e^−γ); below γ = 0.5 the series of log(γ / (e^γ − 1))
    # (no cancellation between log γ and log(1 − e^−γ); truncation error < 1e-9)
    series = -gamma / 2 - gamma**2 / 24 + gamma**4 / 2880 - gamma**6 / 181440
    return torch.where(gamma >= 0.5, torch.log(g) - g - torch.log(-torch.expm1(-g)), series)


def optimal_prior_prob(theta: Tensor, gamma: Tensor) -> Tensor:
    """``π*(θ) = θ / (1 + (e^γ − 1)(1 − θ))``, the prior probability that maximises
    ``−KL(Bern(θ) ‖ Bern(π)) + log p(π)``; computed stably for large γ."""
    # divide numerator and denominator by e^γ; e^−γ floored at the smallest normal number so
    # that θ = 1 still gives 1 (not 0/0) once e^−γ underflows (γ ≳ 88 in float32, 708 in float64)
    e = torch.exp(-gamma).clamp_min(torch.finfo(gamma.dtype).tiny)
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
        """``(e^{γu} − 1) / (e^γ − 1) = e^{γ(u−1)} (1 − e^{−γu}) / (1 − e^{−γ})``; the second
        form never overflows."""
        g = self.gamma.clamp_min(1e-12)
        out = torch.exp(g * (u - 1)) * torch.expm1(-g * u) / torch.expm1(-g)
        return torch.where(self.gamma > 1e-6, out, u)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        u = torch.rand(shape, dtype=self.gamma.dtype, device=self.gamma.device)
        return self.icdf(u)

    @property
    def mean(self) -> Tensor:
        # ∫ π/(1+cπ) dπ / Z = (1/c)(1 − γ/c) / Z with c = e^γ − 1 and Z = γ/c, i.e.
        # 1/γ − 1/(e^γ − 1); for small γ its series 1/2 − γ/12 + γ³/720 − ... (no cancellation)
        g = self.gamma
        direct = 1 / g.clamp_min(0.5) - 1 / torch.expm1(g.clamp_min(0.5))
        series = 0.5 - g / 12 + g**3 / 720 - g**5 / 30240 + g**7 / 1209600
        return torch.where(g >= 0.5, direct, series)


__all__ = ["Flattening", "gate_cost", "log_normalizer", "optimal_prior_prob"]
