"""A plain Gaussian weight prior, ``w ~ Normal(0, scale)`` per weight.

On its own it is weight decay (MAP) or a standard Bayesian neural network
(mean-field); inside :class:`~bayesprune.priors.UnitGates` it is the prior of
the gated weights, as in Guenter & Sideris.

>>> import torch.nn as nn
>>> [s.name for s in Gaussian().layer_sites("fc", nn.Linear(3, 2))]
['fc.weight']
"""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor
from torch.distributions import constraints

from bayesprune.priors.base import Prior, check_positive
from bayesprune.priors.registry import register
from bayesprune.sites import Context, Site, join


class Gaussian(Prior):
    """``Normal(0, scale)`` on the weights of each chosen layer.

    :param scale: prior standard deviation of every weight.
    """

    name = "gaussian"

    def __init__(self, scale: float = 1.0) -> None:
        check_positive("Gaussian", scale=scale)
        self.scale = float(scale)

    def layer_sites(self, name: str, layer: nn.Module) -> list[Site]:
        self.check_layer(name, layer)
        shape = tuple(layer.weight.shape)
        return [
            Site(
                join(name, "weight"), name, "weight", shape, constraints.real, join(name, "weight")
            )
        ]

    def initial_value(self, site: Site, layer: nn.Module) -> Tensor:
        return layer.weight.detach().clone()

    def distribution(self, site: Site, values: dict[str, Tensor], ctx: Context) -> Distribution:
        loc = torch.zeros((), device=ctx.device, dtype=ctx.dtype)
        return dist.Normal(loc, self.scale).expand(site.shape).to_event(site.event_dim)

    def log_prob(self, sites: list[Site], values: dict[str, Tensor], ctx: Context) -> Tensor:
        total = torch.zeros((), device=ctx.device, dtype=ctx.dtype)
        for s in sites:
            w = values[s.name]
            n = s.numel
            total = (
                total
                - w.square().sum() / (2 * self.scale**2)
                - n * (math.log(self.scale) + 0.5 * math.log(2 * math.pi))
            )
        return total

    def scores(self, sites: list[Site], point: dict[str, Tensor], **options: Any) -> Tensor:
        return point[sites[0].name].abs()

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale}


register("gaussian", Gaussian)
