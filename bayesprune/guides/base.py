"""The interface every guide implements.

A guide is an explicit ``nn.Module`` whose parameters are all created in
``__init__`` from the :class:`~bayesprune.nn.BayesianNet`'s sites (no lazy
initialisation), so ``state_dict`` / ``load_state_dict`` round-trip on a
freshly built guide. It has two faces that must agree:

- ``guide(x, y, n_data=...)`` is the Pyro guide: one ``pyro.sample`` per site;
- :meth:`Guide.rsample` draws the same values in the same order *and* returns
  ``Σ log q`` directly, for the fused loss.

Parameter keys are the site names with ``.`` replaced by ``/`` (``fc1/weight``).
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor

from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.sites import Site


def key(site_name: str) -> str:
    """Parameter-dict key for a site name."""
    return site_name.replace(".", "/")


class Guide(nn.Module):
    """Base class of guides over the sites of a :class:`BayesianNet`."""

    name = "guide"

    def __init__(self, net: BayesianNet) -> None:
        super().__init__()
        if not isinstance(net, BayesianNet):
            raise TypeError(
                f"{type(self).__name__}: expected a BayesianNet (from sparsify), got {type(net).__name__}"
            )
        # plain tuple: the guide must not register the net's parameters as its own
        self.sites: tuple[Site, ...] = net.sites

    # --- to implement -----------------------------------------------------------------
    def site_distribution(self, site: Site) -> Distribution:
        """``q(site)`` as a Pyro distribution with ``event_shape == site.shape``."""
        raise NotImplementedError(f"{type(self).__name__}.site_distribution")

    def rsample_site(self, site: Site) -> tuple[Tensor, Tensor | None]:
        """A reparameterised draw of ``site`` and its ``log q`` (``None`` for zero)."""
        d = self.site_distribution(site)
        v = d.rsample()
        return v, d.log_prob(v)

    def point_site(self, site: Site) -> Tensor:
        """A point summary of ``q(site)`` (the median) used for prediction and collapse."""
        raise NotImplementedError(f"{type(self).__name__}.point_site")

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    @torch.no_grad()
    def project_(self) -> None:
        """Called after every optimizer step: put projected parameters back into their
        support (e.g. gate probabilities into [0, 1]). The default does nothing."""

    def site_parameters(self, site: Site) -> list[nn.Parameter]:
        """The guide parameters that belong to ``site`` (e.g. its loc and scale)."""
        k = key(site.name)
        found = []
        for _, module in self.named_children():
            if isinstance(module, nn.ParameterDict) and k in module:
                found.append(module[k])
        return found

    def parameters_by_role(self) -> dict[str, list[nn.Parameter]]:
        """Guide parameters grouped by the role of their site (``"weight"``, ``"scale"``,
        ``"gate"``, ...), e.g. to give shrinkage scales their own learning rate."""
        groups: dict[str, list[nn.Parameter]] = {}
        for s in self.sites:
            groups.setdefault(s.role, []).extend(self.site_parameters(s))
        return groups

    # --- shared -----------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """The Pyro guide (takes and ignores the model's arguments)."""
        return {s.name: pyro.sample(s.name, self.site_distribution(s)) for s in self.sites}

    def rsample(self) -> tuple[dict[str, Tensor], Tensor]:
        """All sites drawn in model order, and ``Σ log q`` -- the fused path."""
        values: dict[str, Tensor] = {}
        log_q: Tensor | None = None
        for s in self.sites:
            v, lq = self.rsample_site(s)
            values[s.name] = v
            if lq is not None:
                log_q = lq if log_q is None else log_q + lq
        if log_q is None:
            log_q = torch.zeros((), device=self._device())
        return values, log_q

    @torch.no_grad()
    def point(self) -> dict[str, Tensor]:
        """Point summaries of every site (detached)."""
        return {s.name: self.point_site(s).detach() for s in self.sites}

    @torch.no_grad()
    def sample(self, n: int, sites: list[str] | None = None) -> dict[str, Tensor]:
        """``n`` draws of the named sites (all by default), each of shape ``(n, *site.shape)``."""
        chosen = [s for s in self.sites if sites is None or s.name in sites]
        return {s.name: self.site_distribution(s).sample((n,)) for s in chosen}

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")
