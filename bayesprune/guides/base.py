"""The interface every guide implements.

A guide is an explicit ``nn.Module`` whose parameters are all created in
``__init__`` from the :class:`~bayesprune.nn.BayesianNet`'s sites (no lazy
initialisation), so ``state_dict`` / ``load_state_dict`` round-trip on a
freshly built guide. It has two faces that must agree:

- ``guide(x, y, n_data=...)`` is the Pyro guide: one ``pyro.sample`` per site;
- :meth:`Guide.rsample` draws the same values in the same order *and* returns
  ``Σ log q`` directly, for the fused loss.

Parameter keys are the site names with ``.`` replaced by ``/`` (``fc1/weight``).

Pyro sees the guide: ``guide(...)`` exposes its parameters to Pyro's param store
(:func:`bayesprune.nn.param_store.expose`, under ``"guide$$$..."``), so Pyro's own
``SVI(net.model, guide, pyro.optim.Adam(...), Trace_ELBO())`` trains the same
tensors :func:`bayesprune.fit` trains. Projected parameters (gate probabilities,
``MAP(positive="projected")`` scales) are put back into their support at the start
of every Pyro guide call when a step has pushed them out -- the projection
:func:`bayesprune.fit` applies after each step -- so plain SVI runs the same
projected-gradient method.

Gate sites (``role == "gate"``) are handled here for every guide family:
``q(z) = Bernoulli(θ)`` with θ projected into [0, 1], and their ``gate_prob``
sites are a Delta at the prior parameter's optimum ``π*(θ)``. Subclasses
describe the other sites through ``_distribution`` / ``_rsample`` / ``_point``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor

from bayesprune.distributions.flattening import optimal_prior_prob
from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.param_store import expose
from bayesprune.priors.gates import gate_constants, probs_key
from bayesprune.sites import Site

GATE_ROLES = ("gate", "gate_prob")


def _unit(theta: Tensor) -> Tensor:
    """θ clipped into [0, 1] in value but with the identity gradient: a gate sitting at a
    vertex must still feel the gradient that would move it off (projected gradient);
    ``clamp`` alone would give it zero gradient there and freeze it."""
    return theta + (theta.clamp(0.0, 1.0) - theta).detach()


def _straight_through(theta: Tensor) -> Tensor:
    """A hard draw ``z ~ Bernoulli(θ)`` whose gradient w.r.t. θ is 1."""
    return torch.bernoulli(theta.detach()) + (theta - theta.detach())


def key(site_name: str) -> str:
    """Parameter-dict key for a site name."""
    return site_name.replace(".", "/")


class Guide(nn.Module, ABC):
    """Base class of guides over the sites of a :class:`BayesianNet`."""

    name = "guide"
    #: namespace of the guide's parameters in Pyro's param store
    pyro_prefix = "guide"

    def __init__(self, net: BayesianNet) -> None:
        super().__init__()
        if not isinstance(net, BayesianNet):
            raise UnsupportedError(
                f"{type(self).__name__}: expected a BayesianNet (from sparsify), got {type(net).__name__}"
            )
        # a plain reference, not a submodule: the guide must not register the net's
        # parameters as its own (nor save them in its state dict)
        self.__dict__["_net"] = net
        # Bernoulli gates: q(z) = Bernoulli(θ), θ projected into [0, 1] after every step
        self.gate_probs = nn.ParameterDict()
        for s in self.sites:
            if s.role == "gate":
                self.gate_probs[key(s.name)] = nn.Parameter(net.initial_value(s).detach().clone())

    @property
    def sites(self) -> tuple[Site, ...]:
        """The sites of the net the guide was built for, read from the net (so they follow
        its live unit removals, which slice the guide's parameters alike)."""
        return self._net.sites

    # --- to implement for the non-gate sites ------------------------------------------
    @abstractmethod
    def _distribution(self, site: Site) -> Distribution:
        """``q(site)`` for a non-gate site, with ``event_shape == site.shape``."""

    def _rsample(self, site: Site) -> tuple[Tensor, Tensor | None]:
        d = self._distribution(site)
        v = d.rsample()
        return v, d.log_prob(v)

    @abstractmethod
    def _point(self, site: Site) -> Tensor:
        """The median of ``q(site)`` for a non-gate site."""

    def _bounds(self) -> list[tuple[nn.Parameter, float | None, float | None]]:
        """Subclass part of :meth:`bounds`."""
        return []

    # --- per site ---------------------------------------------------------------------
    def gate_theta(self, site: Site) -> Tensor:
        """θ = q(z = 1) of a gate site (or of the gate a ``gate_prob`` site belongs to)."""
        name = site.meta["gate"] if site.role == "gate_prob" else site.name
        return self.gate_probs[key(name)]

    def _optimal_prior_prob(self, site: Site, unit_theta: Tensor | None = None) -> Tensor:
        theta = self.gate_theta(site)
        strength = self._net.prior.strength_of(site.layer)
        gamma, _ = gate_constants(site.meta["gamma"], theta.device, theta.dtype, strength)
        return optimal_prior_prob(_unit(theta) if unit_theta is None else unit_theta, gamma)

    def site_distribution(self, site: Site) -> Distribution:
        """``q(site)`` as a Pyro distribution with ``event_shape == site.shape``."""
        if site.role == "gate":
            return dist.Bernoulli(probs=_unit(self.gate_theta(site))).to_event(1)
        if site.role == "gate_prob":  # the prior parameter at its optimum given θ
            return dist.Delta(self._optimal_prior_prob(site), event_dim=1)
        return self._distribution(site)

    def rsample_site(self, site: Site) -> tuple[Tensor, Tensor | None]:
        """A draw of ``site`` for the fused loss and its ``log q`` (``None`` for zero).

        Gates give a hard 0/1 sample with a straight-through gradient (``∂z/∂θ = 1``);
        their ``log q`` is folded into the prior's closed form (see
        :mod:`bayesprune.priors.gates`)."""
        if site.role == "gate":
            return _straight_through(_unit(self.gate_theta(site))), None
        if site.role == "gate_prob":
            return self._optimal_prior_prob(site), None
        return self._rsample(site)

    def point_site(self, site: Site) -> Tensor:
        """A point summary of ``q(site)`` -- its median: for a gate, 1 where θ > 0.5."""
        if site.role == "gate":
            return (self.gate_theta(site) > 0.5).to(self.gate_theta(site).dtype)
        if site.role == "gate_prob":
            return self._optimal_prior_prob(site)
        return self._point(site)

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def bounds(self) -> list[tuple[nn.Parameter, float | None, float | None]]:
        """The projected parameters and their ``(lower, upper)`` bounds (``None``: unbounded):
        gate probabilities in [0, 1], plus whatever the subclass projects."""
        return [(p, 0.0, 1.0) for p in self.gate_probs.values()] + self._bounds()

    @torch.no_grad()
    def project_(self) -> None:
        """Called after every optimizer step: put projected parameters back into their
        support (:meth:`bounds`)."""
        for p, lo, hi in self.bounds():
            p.clamp_(lo, hi)

    @torch.no_grad()
    def _project_data_(self) -> None:
        """:meth:`project_` on ``.data`` -- the Pyro guide's entry: no host sync, and no
        autograd version bump, so a parameter already saved by a graph (an earlier particle
        of the same ELBO) stays valid; there it is a no-op on values already in bounds, and
        only values a step pushed out change."""
        for p, lo, hi in self.bounds():
            p.data.clamp_(lo, hi)

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
        """The Pyro guide (takes and ignores the model's arguments): projects what a step
        pushed out of its support, exposes the parameters to Pyro's param store, then one
        ``pyro.sample`` per site in model order."""
        self._project_data_()
        expose(self.pyro_prefix, self.named_parameters())
        return {s.name: pyro.sample(s.name, self.site_distribution(s)) for s in self.sites}

    def rsample(self) -> tuple[dict[str, Tensor], Tensor]:
        """All sites drawn in model order, and ``Σ log q`` -- the fused path."""
        values: dict[str, Tensor] = {}
        log_q: Tensor | None = None
        for s in self.sites:
            if s.role in GATE_ROLES:  # θ clipped once per gate, shared by its two sites
                gate = s.meta["gate"] if s.role == "gate_prob" else s.name
                if probs_key(gate) not in values:
                    values[probs_key(gate)] = _unit(self.gate_probs[key(gate)])
                theta = values[probs_key(gate)]
                if s.role == "gate_prob":
                    values[s.name] = self._optimal_prior_prob(s, theta)
                else:
                    values[s.name] = _straight_through(theta)
                continue
            v, lq = self.rsample_site(s)
            values[s.name] = v
            if lq is not None:
                log_q = lq if log_q is None else log_q + lq
        if log_q is None:
            log_q = torch.zeros((), device=self._device())
        return values, log_q

    @torch.no_grad()
    def point(self) -> dict[str, Tensor]:
        """Point summaries of every site (detached); gates also give θ under
        ``probs_key(name)`` (what collapse ranks by)."""
        out = {s.name: self.point_site(s).detach() for s in self.sites}
        for s in self.gates():
            out[probs_key(s.name)] = self.gate_theta(s).detach().clamp(0.0, 1.0)
        return out

    def gates(self) -> list[Site]:
        return [s for s in self.sites if s.role == "gate"]

    @torch.no_grad()
    def sample(self, n: int, sites: list[str] | None = None) -> dict[str, Tensor]:
        """``n`` draws of the named sites (all by default), each of shape ``(n, *site.shape)``."""
        chosen = [s for s in self.sites if sites is None or s.name in sites]
        return {s.name: self.site_distribution(s).sample((n,)) for s in chosen}

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


def check_pair(who: str, net: object, guide: object) -> None:
    """Raise, naming ``who``, unless ``net`` is a BayesianNet and ``guide`` a Guide over the
    same sites (same names and shapes, e.g. after the same live unit removals)."""
    if not isinstance(net, BayesianNet):
        raise UnsupportedError(
            f"{who}: net must be a BayesianNet (from bayesprune.sparsify), got {type(net).__name__}"
        )
    if not isinstance(guide, Guide):
        raise UnsupportedError(
            f"{who}: guide must be a bayesprune Guide, got {type(guide).__name__}"
        )
    mine = [(s.name, s.shape) for s in net.sites]
    theirs = [(s.name, s.shape) for s in guide.sites]
    if mine == theirs:  # the guide's parameters must still fit them (another guide of this
        # net, left out of a live removal, describes the old shapes)
        sized = {
            k: tuple(p.shape)
            for _, pd in guide.named_children()
            if isinstance(pd, nn.ParameterDict)
            for k, p in pd.items()
        }
        theirs = [(s.name, sized.get(key(s.name), s.shape)) for s in guide.sites]
    if mine != theirs:
        raise ConfigError(
            f"{who}: guide does not match net: it was built for other sites ({theirs}; the "
            f"net's are {mine}; was it built for this net, before or after the same unit removals?)"
        )
