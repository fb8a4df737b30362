"""HALO: the hierarchical adaptive lasso (Seto, Wells & Zhang, 2021).

Each weight ``θ_j`` gets its own trainable shrinkage coefficient ``λ_j``; the
paper trains both under the penalty

    ξ · Σ_j |θ_j| / λ_j²  +  ψ · Σ_j |λ_j|

(per example). We write it as a proper hierarchical prior whose negative log
density is exactly that penalty (up to a constant), so MAP inference with a
Delta guide *is* the paper's training, and a mean-field guide gives full VI:

    λ ~ Gamma(2m + 1, rate = ψ N)
    θ_j | λ ~ Laplace(0, λ² / (ξ N))       for the m weights sharing λ

``m = 1`` for per-weight scales (the paper) and ``m = fan-in`` for per-unit
scales. Derivation: ``log Laplace(θ; 0, b) = -log 2b - |θ|/b`` with
``b = λ²/(ξN)`` contributes ``-2 log λ`` per weight, i.e. ``-2m log λ`` per
scale; the ``Gamma(2m+1)`` density contributes ``+2m log λ - ψNλ``. The log λ
terms cancel and

    -log p(θ, λ) = ξN Σ_j |θ_j|/λ² + ψN Σ λ + const,

with ``N`` the training-set size that multiplies the per-example ξ and ψ (and, in a
budgeted fit, the strength multiplier ``s`` that multiplies both: ``ξ → sξ, ψ → sψ``).

Good::

    net = sparsify(LeNet300100(), HALO(xi=3e-5, psi=3e-5))       # per-weight, all Linear/Conv
    net = sparsify(model, HALO(per="unit"), layers=["fc1", "fc2"])  # structured

Bad::

    HALO(xi=0)          # ValueError: xi must be > 0 (no shrinkage is a different model)
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

from bayesprune.errors import ConfigError
from bayesprune.priors.base import Prior, check_positive
from bayesprune.priors.halo_penalty import halo_penalty
from bayesprune.priors.registry import register
from bayesprune.sites import Context, Site, join


class HALO(Prior):
    """Hierarchical adaptive lasso prior.

    :param xi: per-example weight of ``Σ|θ|/λ²`` (the paper's ξ).
    :param psi: per-example weight of ``Σλ`` (the paper's ψ).
    :param per: ``"weight"`` (one λ per weight, the paper) or ``"unit"`` (one λ per
        output unit / filter: structured shrinkage).
    :param init_scale: starting value of every λ.

    >>> import torch.nn as nn
    >>> prior = HALO(xi=1e-4, psi=1e-4)
    >>> [s.name for s in prior.layer_sites("fc", nn.Linear(3, 2))]
    ['fc.weight_scale', 'fc.weight']
    """

    name = "halo"

    def __init__(
        self, xi: float = 3e-5, psi: float = 3e-5, *, per: str = "weight", init_scale: float = 1.0
    ) -> None:
        check_positive("HALO", xi=xi, psi=psi, init_scale=init_scale)
        if per not in ("weight", "unit"):
            raise ConfigError(f"HALO: per must be 'weight' or 'unit', got {per!r}")
        self.xi = float(xi)
        self.psi = float(psi)
        self.per = per
        self.init_scale = float(init_scale)

    @property
    def removes_units(self) -> bool:  # type: ignore[override]
        """Per unit, collapse keeps whole units (structured keep-sets)."""
        return self.per == "unit"

    def default_selection(self, module: nn.Module, names: list[str]) -> list[str]:
        """Per weight: every Linear/Conv. Per unit: all but the last in module order -- the
        output layer's units are the classes, which a structured cut must not remove."""
        if self.per == "unit" and len(names) > 1:
            return names[:-1]
        return names

    # --- sites -------------------------------------------------------------------------
    def layer_sites(self, name: str, layer: nn.Module) -> list[Site]:
        self.check_layer(name, layer)
        wshape = tuple(layer.weight.shape)
        sshape = wshape if self.per == "weight" else (wshape[0],)
        shared = 1 if self.per == "weight" else math.prod(wshape[1:])
        return [
            Site(
                join(name, "weight_scale"),
                name,
                "scale",
                sshape,
                constraints.positive,
                None,
                info=(("shared", shared),),
            ),
            Site(
                join(name, "weight"), name, "weight", wshape, constraints.real, join(name, "weight")
            ),
        ]

    def initial_value(self, site: Site, layer: nn.Module) -> Tensor:
        if site.role == "scale":
            return torch.full(site.shape, self.init_scale, dtype=layer.weight.dtype)
        return layer.weight.detach().clone()

    def _expand(self, scale: Tensor, weight_shape: tuple[int, ...]) -> Tensor:
        if self.per == "weight":
            return scale
        return scale.reshape((-1,) + (1,) * (len(weight_shape) - 1))

    def distribution(self, site: Site, values: dict[str, Tensor], ctx: Context) -> Distribution:
        if site.role == "scale":
            m = site.meta["shared"]
            rate = ctx.full(site.shape, self.psi * self.strength_of(site.layer) * ctx.n_data)
            return dist.Gamma(torch.full_like(rate, 2.0 * m + 1.0), rate).to_event(site.event_dim)
        lam = self._expand(values[join(site.layer, "weight_scale")], site.shape)
        b = lam.square() / (self.xi * self.strength_of(site.layer) * ctx.n_data)
        loc = torch.zeros((), device=ctx.device, dtype=ctx.dtype)
        return dist.Laplace(loc, b).expand(site.shape).to_event(site.event_dim)

    # --- fused log density -------------------------------------------------------------
    def log_prob(self, sites: list[Site], values: dict[str, Tensor], ctx: Context) -> Tensor:
        """``const - ξN Σ|θ|/λ² - ψN Σλ``: the cancelled form, one fused autograd op."""
        scale_site, weight_site = sites
        lam = values[scale_site.name]
        theta = values[weight_site.name]
        scaled = self.strength_of(scale_site.layer) * ctx.n_data
        xi_n, psi_n = self.xi * scaled, self.psi * scaled
        m = scale_site.meta["shared"]
        n_scales, n_weights = scale_site.numel, weight_site.numel
        const = n_scales * ((2 * m + 1) * math.log(psi_n) - math.lgamma(2 * m + 1)) + n_weights * (
            math.log(xi_n) - math.log(2.0)
        )
        return const - halo_penalty(theta, self._expand(lam, weight_site.shape), xi_n, psi_n)

    # --- profiling λ out ---------------------------------------------------------------
    profiled_roles = ("scale",)

    def conditional_mode(self, site: Site, values: dict[str, Tensor]) -> Tensor:
        """The scale that maximises ``p(θ, λ)`` given the layer's weights:
        ``λ* = (2ξA/ψ)^(1/3)`` with ``A = |θ_j|`` per weight or ``A = Σ_j|θ_j|`` over a unit
        (``d/dλ [ξA/λ² + ψλ] = 0``). Zero where the weights are zero: a guide floors it.

        >>> import torch, torch.nn as nn
        >>> prior = HALO(xi=1.0, psi=2.0)
        >>> scale, weight = prior.layer_sites("fc", nn.Linear(2, 1))
        >>> prior.conditional_mode(scale, {"fc.weight": torch.tensor([[8.0, -0.0]])})
        tensor([[2., 0.]])
        """
        if site.role not in self.profiled_roles:
            return super().conditional_mode(site, values)
        theta = values[join(site.layer, "weight")]
        a = theta.abs() if self.per == "weight" else theta.flatten(1).abs().sum(1)
        return a.mul(2.0 * self.xi / self.psi).pow_(1.0 / 3.0).reshape(site.shape)

    # --- budgets -----------------------------------------------------------------------
    def budget_metrics(self) -> tuple[str, ...]:
        """Per weight: ``("weights",)``; per unit: ``("units",)``. The strength multiplier
        scales ξ and ψ together -- the whole penalty -- so the scales' optimum
        λ* = (2ξ|θ|/ψ)^(1/3) does not move when a budgeted fit changes it."""
        return ("weights",) if self.per == "weight" else ("units",)

    # --- collapse ----------------------------------------------------------------------
    def scores(self, sites: list[Site], point: dict[str, Tensor], **options: Any) -> Tensor:
        """``|θ̂|`` per weight, or the L2 norm of each unit's weights for ``per="unit"``.

        ``by="scale"`` ranks by the posterior shrinkage scale ``λ̂`` instead.
        """
        by = options.get("by", "magnitude")
        scale_site, weight_site = sites
        theta = point[weight_site.name]
        if by == "scale":
            lam = point[scale_site.name]
            return lam if self.per == "unit" else lam.expand_as(theta)
        if by != "magnitude":
            raise ConfigError(f"HALO.scores: by must be 'magnitude' or 'scale', got {by!r}")
        if self.per == "unit":
            return theta.flatten(1).norm(dim=1)
        return theta.abs()

    #: weights (or unit norms) at or below this magnitude count as pruned in progress reports
    report_tol: float = 1e-3
    default_threshold = report_tol

    def kept_fraction(self, net: Any, point: dict[str, Tensor]) -> float:
        """Fraction of weights (units for ``per="unit"``) with score above :attr:`report_tol`."""
        alive = total = 0
        for sites in net.layer_sites.values():
            sc = self.scores(sites, point)
            alive += int((sc > self.report_tol).sum())
            total += sc.numel()
        return alive / max(total, 1)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "xi": self.xi,
            "psi": self.psi,
            "per": self.per,
            "init_scale": self.init_scale,
        }


register("halo", HALO)
