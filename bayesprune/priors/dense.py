"""``Dense``: no prior at all -- plain maximum-likelihood training through :func:`bayesprune.fit`.

The prior adds no sample site to any layer, so every parameter of the network stays an
ordinary ``nn.Parameter`` trained by the fit's optimizer, the log prior is 0 and the fit's
per-example loss is the mean negative log-likelihood of the mini-batch -- for a
categorical likelihood, exactly the mean cross-entropy (``tests/methods/test_train.py``).
It is how the baselines (:mod:`bayesprune.methods`) train dense networks and fine-tune
pruned ones in the one fit loop, with no second training loop.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> net = sparsify(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), Dense())
>>> net.sites, len(list(net.deterministic_parameters()))
((), 4)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.priors.base import Prior
from bayesprune.priors.registry import register
from bayesprune.sites import Context, Site


class Dense(Prior):
    """The flat prior: no sites, log density 0; ``fit`` trains the module's own parameters."""

    name = "dense"
    #: any module may be named in ``layers=``; none carries a site
    default_layer_types: tuple[type, ...] = (nn.Module,)
    supported_layer_types: tuple[type, ...] = (nn.Module,)

    def default_selection(self, module: nn.Module, names: list[str]) -> list[str]:
        """No layer carries anything, so none is selected."""
        return []

    def layer_sites(self, name: str, layer: nn.Module) -> list[Site]:
        return []

    def initial_value(self, site: Site, layer: nn.Module) -> Tensor:
        raise ConfigError(f"Dense has no sites, so no initial value for site {site.name!r}")

    def distribution(self, site: Site, values: dict[str, Tensor], ctx: Context) -> Distribution:
        raise ConfigError(f"Dense has no sites, so no distribution for site {site.name!r}")

    def log_prob(self, sites: list[Site], values: dict[str, Tensor], ctx: Context) -> Tensor:
        return torch.zeros((), device=ctx.device, dtype=ctx.dtype)

    def scores(self, sites: list[Site], point: dict[str, Tensor], **options: Any) -> Tensor:
        raise ConfigError(
            "Dense has no posterior to collapse; rank the trained weights with "
            "bayesprune.methods.magnitude_keep or l1_unit_keep"
        )

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


register("dense", Dense)
