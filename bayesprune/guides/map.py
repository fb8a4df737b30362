"""MAP: a Delta guide -- point estimates, i.e. penalised maximum likelihood.

With a Delta guide the ELBO is ``log p(y | θ) + log p(θ)``, so for the HALO
prior this is exactly the paper's penalised training. Values live in each
site's support through Pyro's ``biject_to`` (``exp`` for positive scales);
there is no Jacobian term, so the optimum is the MAP in the constrained space.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> guide = MAP(sparsify(nn.Linear(3, 2), HALO(), layers=nn.Linear))
>>> sorted(guide.state_dict())
['unconstrained.weight', 'unconstrained.weight_scale']
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor
from torch.distributions import biject_to

from bayesprune.errors import ConfigError
from bayesprune.guides.base import GATE_ROLES, Guide, key
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.sites import Site, is_positive

#: how :class:`MAP` parametrises positive sites
POSITIVE = ("exp", "projected", "profiled")


class MAP(Guide):
    """Delta guide over every site.

    :param net: the model (from :func:`bayesprune.sparsify`); guide values start at
        the prior's initial values (the network's current weights).
    :param positive: how positive sites (scales) are parametrised: ``"exp"`` (the value
        is ``exp`` of an unconstrained parameter, Pyro's default), ``"projected"``
        (the value itself is the parameter, clamped to ``[min_positive, ∞)`` after each
        step -- projected gradient, as the HALO paper trains its scales) or ``"profiled"``
        (not trained: the value is the mode of ``p(scale | weights)``, which the prior
        gives in closed form (:meth:`~bayesprune.priors.base.Prior.conditional_mode`),
        floored at ``min_positive``).
    :param min_positive: the floor of projected and profiled positive sites.

    ``positive="profiled"`` optimises ``max_θ log p(y | θ) + log p(θ, λ*(θ))``: the same
    joint optimum as training θ and λ together (at the optimum λ is the conditional mode),
    along another path, with half the tensors to train. The profiled value is detached:
    ``∂/∂λ log p(θ, λ) = 0`` at ``λ*`` (envelope theorem), so the gradient w.r.t. θ is the
    same as through ``λ*(θ)`` (tested) wherever ``λ*`` is above the floor -- and below it
    ``λ*`` is constant. For HALO, the profiled penalty per weight is
    ``(3/2)(2ξ)^(1/3) ψ^(2/3) |θ|^(1/3)`` (per example): a bridge penalty.

    >>> import torch, torch.nn as nn
    >>> from bayesprune import sparsify
    >>> from bayesprune.priors import HALO
    >>> net = sparsify(nn.Linear(2, 1), HALO(xi=1.0, psi=2.0), layers=nn.Linear)
    >>> guide = MAP(net, positive="profiled")
    >>> sorted(guide.state_dict())
    ['unconstrained.weight']
    >>> with torch.no_grad():
    ...     _ = guide.unconstrained["weight"].copy_(torch.tensor([[8.0, 0.0]]))
    >>> guide.point()["weight_scale"]
    tensor([[2.0000e+00, 1.0000e-04]])
    """

    name = "map"

    def __init__(
        self, net: BayesianNet, *, positive: str = "exp", min_positive: float = 1e-4
    ) -> None:
        super().__init__(net)
        if positive not in POSITIVE:
            raise ConfigError(f"MAP: positive must be one of {POSITIVE}, got {positive!r}")
        if not (0 < min_positive < float("inf")):
            raise ConfigError(f"MAP: min_positive must be > 0, got {min_positive!r}")
        self.positive = positive
        self.min_positive = float(min_positive)
        # plain attribute: the guide reads the prior's closed forms, it does not own the prior
        self.prior = net.prior
        if positive == "profiled":
            cannot = [
                s.name
                for s in self.sites
                if is_positive(s.support) and s.role not in net.prior.profiled_roles
            ]
            if cannot:
                raise ConfigError(
                    f"MAP(positive='profiled'): {type(net.prior).__name__} has no closed-form "
                    f"conditional mode for the positive sites {cannot}; use 'exp' or 'projected'"
                )
        self.unconstrained = nn.ParameterDict()
        for s in self.sites:
            if s.role in GATE_ROLES or self._profiled(s):
                continue
            init = net.initial_value(s).detach()
            if self._projected(s):
                self.unconstrained[key(s.name)] = nn.Parameter(
                    init.clamp_min(self.min_positive).clone()
                )
            else:
                self.unconstrained[key(s.name)] = nn.Parameter(
                    biject_to(s.support).inv(init).clone()
                )

    def _projected(self, site: Site) -> bool:
        return self.positive == "projected" and is_positive(site.support)

    def _profiled(self, site: Site) -> bool:
        return self.positive == "profiled" and is_positive(site.support)

    def value(self, site: Site) -> Tensor:
        if self._profiled(site):
            given = {
                s.name: self.value(s)
                for s in self.sites
                if s.layer == site.layer and s.role not in GATE_ROLES and not self._profiled(s)
            }
            mode = self.prior.conditional_mode(site, given)
            return mode.detach().clamp_min_(self.min_positive)
        p = self.unconstrained[key(site.name)]
        return p if self._projected(site) else biject_to(site.support)(p)

    def _bounds(self) -> list[tuple[nn.Parameter, float | None, float | None]]:
        return [
            (self.unconstrained[key(s.name)], self.min_positive, None)
            for s in self.sites
            if s.role not in GATE_ROLES and self._projected(s)
        ]

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "positive": self.positive, "min_positive": self.min_positive}

    def _distribution(self, site: Site) -> Distribution:
        return dist.Delta(self.value(site), event_dim=site.event_dim)

    def _rsample(self, site: Site) -> tuple[Tensor, None]:
        return self.value(site), None

    def _point(self, site: Site) -> Tensor:
        return self.value(site)
