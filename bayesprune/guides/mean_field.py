"""Mean-field: independent Normals over weights, Delta or LogNormal over scales.

``q(θ) = Π Normal(μ, softplus(ρ))`` for real-valued sites (``softplus`` from
:mod:`bayesprune.guides.softplus`: PyTorch's, without its slow CPU loop). Positive sites
(shrinkage scales) get a Delta (``scales="delta"``: type-II MAP of the scales,
the default) or a LogNormal (``scales="lognormal"``: full VI).

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> guide = MeanField(sparsify(nn.Linear(3, 2), HALO(), layers=nn.Linear), init_scale=1e-2)
>>> float(guide.stddev(guide.sites[1]).detach().mean())
0.01...
"""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor
from torch.distributions import biject_to

from bayesprune.errors import ConfigError
from bayesprune.guides.base import GATE_ROLES, Guide, key
from bayesprune.guides.softplus import softplus
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.sites import Site, is_positive, is_real


def _inv_softplus(x: float) -> float:
    return x + math.log(-math.expm1(-x))


class MeanField(Guide):
    """Factorised guide.

    :param net: the model.
    :param init_scale: starting standard deviation of every Normal (and LogNormal).
    :param scales: ``"delta"`` or ``"lognormal"`` for positive (scale) sites.
    """

    name = "mean_field"

    def __init__(
        self, net: BayesianNet, *, init_scale: float = 1e-3, scales: str = "delta"
    ) -> None:
        super().__init__(net)
        if isinstance(init_scale, bool) or not (0 < init_scale < math.inf):
            raise ConfigError(f"MeanField: init_scale must be > 0, got {init_scale!r}")
        if scales not in ("delta", "lognormal"):
            raise ConfigError(f"MeanField: scales must be 'delta' or 'lognormal', got {scales!r}")
        self.init_scale = float(init_scale)
        self.scales = scales
        self.loc = nn.ParameterDict()
        self.rho = nn.ParameterDict()
        self.unconstrained = nn.ParameterDict()
        for s in self.sites:
            if s.role in GATE_ROLES:
                continue
            init = net.initial_value(s).detach()
            kind = self.kind(s)
            if kind == "normal":
                self.loc[key(s.name)] = nn.Parameter(init.clone())
                self.rho[key(s.name)] = nn.Parameter(
                    torch.full_like(init, _inv_softplus(init_scale))
                )
            elif kind == "lognormal":
                self.loc[key(s.name)] = nn.Parameter(init.log())
                self.rho[key(s.name)] = nn.Parameter(
                    torch.full_like(init, _inv_softplus(init_scale))
                )
            else:
                self.unconstrained[key(s.name)] = nn.Parameter(
                    biject_to(s.support).inv(init).clone()
                )

    def kind(self, site: Site) -> str:
        """``"normal"``, ``"lognormal"`` or ``"delta"``: the family used for ``site``."""
        if is_real(site.support):
            return "normal"
        if is_positive(site.support) and self.scales == "lognormal":
            return "lognormal"
        return "delta"

    def noise(self, loc: Tensor) -> Tensor:
        """Standard normal noise ε shaped like ``loc`` (the fused path's draw is
        ``loc + ε · sd``; one place, so that a test can fix the noise)."""
        return torch.empty_like(loc).normal_()

    def stddev(self, site: Site) -> Tensor:
        """Standard deviation parameter of ``site``'s (log-)Normal."""
        return softplus(self.rho[key(site.name)])

    def _distribution(self, site: Site) -> Distribution:
        kind = self.kind(site)
        if kind == "normal":
            d = dist.Normal(self.loc[key(site.name)], self.stddev(site))
        elif kind == "lognormal":
            d = dist.LogNormal(self.loc[key(site.name)], self.stddev(site))
        else:
            v = biject_to(site.support)(self.unconstrained[key(site.name)])
            return dist.Delta(v, event_dim=site.event_dim)
        return d.to_event(site.event_dim)

    def _rsample(self, site: Site) -> tuple[Tensor, Tensor | None]:
        kind = self.kind(site)
        if kind == "delta":
            return biject_to(site.support)(self.unconstrained[key(site.name)]), None
        loc, sd = self.loc[key(site.name)], self.stddev(site)
        # the same random draw as the Pyro guide's Normal(loc, sd).rsample(): loc + ε sd;
        # its log density at the draw, (draw - loc) / sd = ε, taken from ε directly
        eps = self.noise(loc)
        draw = torch.addcmul(loc, eps, sd)
        flat = eps.flatten()
        log_q = (
            -0.5 * torch.dot(flat, flat)
            - sd.log().sum()
            - 0.5 * eps.numel() * math.log(2 * math.pi)
        )
        if kind == "lognormal":  # v = exp(draw); log q(v) = log N(draw) - draw
            return draw.exp(), log_q - draw.sum()
        return draw, log_q

    def _point(self, site: Site) -> Tensor:
        kind = self.kind(site)
        if kind == "normal":
            return self.loc[key(site.name)]
        if kind == "lognormal":
            return self.loc[key(site.name)].exp()
        return biject_to(site.support)(self.unconstrained[key(site.name)])

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "init_scale": self.init_scale, "scales": self.scales}
