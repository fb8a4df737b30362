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

from bayesprune.guides.base import GATE_ROLES, Guide, key
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.sites import Site, is_positive


class MAP(Guide):
    """Delta guide over every site.

    :param net: the model (from :func:`bayesprune.sparsify`); guide values start at
        the prior's initial values (the network's current weights).
    :param positive: how positive sites (scales) are parametrised: ``"exp"`` (the value
        is ``exp`` of an unconstrained parameter, Pyro's default) or ``"projected"``
        (the value itself is the parameter, clamped to ``[min_positive, ∞)`` after each
        step -- projected gradient, as the HALO paper trains its scales).
    :param min_positive: the floor of projected positive sites.
    """

    name = "map"

    def __init__(
        self, net: BayesianNet, *, positive: str = "exp", min_positive: float = 1e-4
    ) -> None:
        super().__init__(net)
        if positive not in ("exp", "projected"):
            raise ValueError(f"MAP: positive must be 'exp' or 'projected', got {positive!r}")
        if not (0 < min_positive < float("inf")):
            raise ValueError(f"MAP: min_positive must be > 0, got {min_positive!r}")
        self.positive = positive
        self.min_positive = float(min_positive)
        self.unconstrained = nn.ParameterDict()
        for s in self.sites:
            if s.role in GATE_ROLES:
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

    def value(self, site: Site) -> Tensor:
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
