"""``log p(z)`` under the Pyro model and ``log q(z)`` under the guide, for one draw ``z``.

Both are sums over the net's sites in model order of the distributions the Pyro
model and the Pyro guide themselves sample from (``net.prior.distribution`` and
``guide.site_distribution``), so they are the honest densities -- not the fused
loss's closed forms (which, for gate priors, fold the guide's entropy into the
prior term). A Delta site contributes 0 to ``log q`` (Pyro's convention): it is
held fixed, and importance weights built from these densities are conditional on it.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MeanField
>>> net = sparsify(nn.Linear(3, 2), HALO(), layers=nn.Linear)
>>> guide = MeanField(net)
>>> [s.name for s in random_sites(guide)]  # the scales are a Delta (type-II MAP)
['weight']
>>> z = draw(guide)
>>> bool(log_prior(net, z, n_data=10).isfinite()), bool(log_guide(guide, z).isfinite())
(True, True)
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor

from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.sites import Site


def is_delta(d: dist.Distribution) -> bool:
    """``d`` is a point mass (a Delta, possibly wrapped as independent events)."""
    while isinstance(d, dist.Independent):
        d = d.base_dist
    return isinstance(d, dist.Delta)


def random_sites(guide: Guide) -> list[Site]:
    """The sites on which ``q`` has spread (every site whose guide distribution is not a Delta)."""
    with torch.no_grad():
        return [s for s in guide.sites if not is_delta(guide.site_distribution(s))]


@torch.no_grad()
def draw(guide: Guide) -> dict[str, Tensor]:
    """One joint draw ``z ~ q`` of every site, in model order (global torch RNG)."""
    return {s.name: guide.site_distribution(s).sample() for s in guide.sites}


@torch.no_grad()
def log_prior(net: BayesianNet, values: dict[str, Tensor], n_data: int) -> Tensor:
    """``log p(z)``: the model's prior density at ``values`` with hyper-parameters scaled
    to ``n_data`` examples (float64 scalar)."""
    ctx = net.context(n_data)
    total = torch.zeros((), dtype=torch.float64)
    for s in net.sites:
        lp = net.prior.distribution(s, values, ctx).log_prob(values[s.name])
        total = total + lp.double().sum().cpu()
    return total


@torch.no_grad()
def log_guide(guide: Guide, values: dict[str, Tensor]) -> Tensor:
    """``log q(z)`` at ``values`` (float64 scalar; Delta sites contribute 0)."""
    total = torch.zeros((), dtype=torch.float64)
    for s in guide.sites:
        d = guide.site_distribution(s)
        if not is_delta(d):
            total = total + d.log_prob(values[s.name]).double().sum().cpu()
    return total
