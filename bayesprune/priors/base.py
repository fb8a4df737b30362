"""The interface every sparsity prior implements.

A prior is a *family*: one object (holding hyper-parameters) describes, for any
layer it supports, the sample sites it adds (:meth:`Prior.layer_sites`), the
conditional distribution of each site given the sites before it
(:meth:`Prior.distribution`), and how its posterior collapses into a
:class:`~bayesprune.pruning.KeepSet` (:meth:`Prior.scores`).

The Pyro model of :class:`~bayesprune.nn.BayesianNet` calls
``pyro.sample(site.name, prior.distribution(site, values, ctx))`` for every
site; the fused loss calls :meth:`Prior.log_prob` on the same values. The
default :meth:`Prior.log_prob` sums the same distributions' log densities, so a
subclass only overrides it for speed -- and its tests check the two agree.

Hyper-parameters are given *per example* (as in the papers' penalties) and are
multiplied by the training-set size ``ctx.n_data`` inside the model, so that the
likelihood summed over the data and the prior sit on the same scale.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor

from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.sites import Context, Site

DEFAULT_LAYER_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Prior(ABC):
    """Base class of sparsity priors. Subclasses implement the abstract hooks."""

    #: module types chosen when ``sparsify(..., layers=None)``
    default_layer_types: tuple[type, ...] = DEFAULT_LAYER_TYPES
    #: module types the prior can be put on at all
    supported_layer_types: tuple[type, ...] = DEFAULT_LAYER_TYPES
    #: name of the guide family :func:`bayesprune.guides.default_guide` builds
    default_guide: str = "map"
    #: registry name, used in configs and saved runs
    name: str = "prior"
    #: ``collapse(..., threshold=None)`` keeps elements scoring above this
    default_threshold: float = 0.0
    #: at the end of a fit, copy the posterior point estimate of the weights this prior's
    #: sites replace into the user's module (``False``: the module's weights are data the
    #: prior must keep, e.g. a jackpot's frozen pre-trained weights)
    writes_back: bool = True
    #: the prior's collapse removes output units of its layers (structured keep-sets):
    #: :func:`~bayesprune.sparsify` then puts it only on layers whose units can be removed
    #: exactly (:mod:`bayesprune.nn.removable`)
    removes_units: bool = False
    #: learning rates by site role that ``fit`` uses unless its ``role_lr`` names the role
    default_role_lr: dict[str, float] = {}  # noqa: RUF012 (read-only class default)
    #: multiplier of the prior's sparsity strength (1 = the strength as configured). A
    #: budgeted fit adapts it (:mod:`bayesprune.pruning.budget_control`); it is fit state,
    #: not a hyper-parameter, so :meth:`config` leaves it out.
    strength: float = 1.0
    #: per-layer multipliers on top of :attr:`strength` (a per-layer units budget)
    layer_strength: dict[str, float] | None = None

    def strength_of(self, layer: str) -> float:
        """The multiplier of ``layer``'s sparsity strength: :attr:`strength` times the
        layer's own (default 1).

        >>> from bayesprune.priors import HALO
        >>> prior = HALO()
        >>> prior.strength, prior.layer_strength = 2.0, {"fc1": 3.0}
        >>> prior.strength_of("fc1"), prior.strength_of("fc2")
        (6.0, 2.0)
        """
        per = self.layer_strength
        return self.strength * (per.get(layer, 1.0) if per else 1.0)

    def budget_metrics(self) -> tuple[str, ...]:
        """The measures a :class:`~bayesprune.budget.Budget` may name for this prior (its
        strength must be one the fit can adapt). Default: none."""
        return ()

    def default_selection(self, module: nn.Module, names: list[str]) -> list[str]:
        """Trim the layers chosen by default (``layers=None``); e.g. gates leave out the
        output layer. The default keeps them all."""
        return names

    def bind(self, module: nn.Module, layer_names: list[str], example_input: Tensor | None) -> None:  # noqa: B027 (optional hook)
        """Called once by :func:`~bayesprune.sparsify` before ``layer_sites``, with the whole
        network, so a prior can compute per-layer facts that need it (e.g. FLOPs per unit).
        The default does nothing."""

    def check_layer(self, name: str, layer: nn.Module) -> None:
        """Raise ``TypeError`` naming the layer if this prior cannot be put on it."""
        if not isinstance(layer, self.supported_layer_types):
            kinds = ", ".join(t.__name__ for t in self.supported_layer_types)
            raise UnsupportedError(
                f"{type(self).__name__} cannot be put on layer {name!r} of type "
                f"{type(layer).__name__}; supported layer types: {kinds}"
            )

    @abstractmethod
    def layer_sites(self, name: str, layer: nn.Module) -> list[Site]:
        """The sites this prior adds to ``layer``, in sampling order."""

    @abstractmethod
    def initial_value(self, site: Site, layer: nn.Module) -> Tensor:
        """A starting value for ``site`` (in its support) used to initialise guides."""

    @abstractmethod
    def distribution(self, site: Site, values: dict[str, Tensor], ctx: Context) -> Distribution:
        """``p(site | earlier sites of the same layer)`` as a Pyro distribution with
        ``event_shape == site.shape``."""

    def log_prob(self, sites: list[Site], values: dict[str, Tensor], ctx: Context) -> Tensor:
        """Sum of ``log p`` over the sites of one layer (override for speed)."""
        total = torch.zeros((), device=ctx.device, dtype=ctx.dtype)
        for s in sites:
            total = total + self.distribution(s, values, ctx).log_prob(values[s.name])
        return total

    @abstractmethod
    def scores(self, sites: list[Site], point: dict[str, Tensor], **options: Any) -> Tensor:
        """Importance of each prunable element of one layer (higher = keep), from a
        posterior point estimate. Its shape says what is pruned: the weight's shape
        (unstructured) or ``(n_units,)`` (structured)."""

    def kept_fraction(self, net: Any, point: dict[str, Tensor]) -> float | None:
        """Fraction of prunable elements currently alive, for progress reports
        (``None`` if the prior has no such notion)."""
        return None

    #: roles of sites whose mode given the layer's other sites has a closed form
    #: (:meth:`conditional_mode`): a MAP guide can profile them out instead of training them
    profiled_roles: tuple[str, ...] = ()

    def conditional_mode(self, site: Site, values: dict[str, Tensor]) -> Tensor:
        """``argmax p(site | the layer's other sites)`` in closed form, from ``values`` (at least
        the sites ``site`` is conditioned on); only for roles in :attr:`profiled_roles`."""
        raise UnsupportedError(
            f"{type(self).__name__} has no closed-form conditional mode for site {site.name!r} "
            f"(role {site.role!r}); profiled roles: {list(self.profiled_roles) or 'none'}"
        )

    def fit_callbacks(self) -> list[Any]:
        """Callbacks :func:`bayesprune.fit` adds to every fit of a net with this prior (e.g. a
        penalty that grows each epoch and a data-driven stop); see
        :mod:`bayesprune.inference.callbacks`. Default: none."""
        return []

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able description from which :func:`bayesprune.priors.from_config` rebuilds it."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def check_positive(owner: str, **values: float) -> None:
    """Raise ``ValueError`` naming the hyper-parameter unless every value is a finite number > 0."""
    for key, v in values.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0 < v < float("inf")):
            raise ConfigError(f"{owner}: {key} must be a finite number > 0, got {v!r}")
