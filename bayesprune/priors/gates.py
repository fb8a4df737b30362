"""Bernoulli unit/filter gates with the flattening hyper-prior (Guenter & Sideris).

Every output unit of a gated Linear layer and every filter of a gated Conv
layer is multiplied by ``z_u ~ Bernoulli(π_u)``; ``π_u`` has the flattening
hyper-prior :class:`~bayesprune.distributions.Flattening` (γ_u) and the weights a
Gaussian (or any other) weight prior::

    π_u ~ Flattening(γ_u)            site "<layer>.gate_prob"
    z_u | π_u ~ Bernoulli(π_u)       site "<layer>.gate"        (multiplies unit u's output)
    W ~ weight prior                 site "<layer>.weight"      (Gaussian(1) by default)

The guide gives each gate ``q(z_u) = Bernoulli(θ_u)`` with θ_u kept in [0, 1] by
projection after every step, and puts the prior parameter at its optimum
``π_u = π*(θ_u)`` (a Delta). Then each gate costs exactly ``γ_u θ_u`` in the
negative ELBO (see :mod:`bayesprune.distributions.flattening` for the
derivation): the objective is multilinear in the θs and its minimisers are
deterministic networks, θ ∈ {0, 1}.

Gradient estimator (the fused loss, ``fit(loss="fused")``): the likelihood sees a hard
sample ``z ~ Bernoulli(θ)`` with a straight-through gradient ``∂z/∂θ = 1``; the gate
terms use their closed form ``Σ γθ`` (the guide's entropy cancels against the optimised
prior, so it is folded in here rather than differentiated at the boundary, where
``∇H(θ)`` is infinite). This estimates the same ELBO as Pyro's ``Trace_ELBO``, not in the
same way: the loss has the same expectation (not the same value per draw), the
θ-gradient is biased. With ``f = −(N/B) log p(y | x, z, W)`` the exact gradient is
``E[f(z_u = 1) − f(z_u = 0)] + γ_u``; the straight-through one puts the slope
``∂f/∂z_u`` at the draw in place of that difference, which is exact only for a loss linear
in each gate (``tests/guides/test_gate_guides.py``). An open gate multiplying an affine
output ``w_u·x + b_u`` (checked on a Linear unit) has the slope ``⟨∂f/∂w_u, w_u⟩ + b_u
∂f/∂b_u`` -- the unit's own weight gradient along its weights -- which vanishes where those
weights are stationary for the likelihood: near a trained network an open gate feels its
price and hardly what losing the unit would cost.
Measured against the exact gradient by enumerating every gate configuration
(``tests/inference/test_gate_gradient_bias.py``, ``benchmarks/gate_gradient_bias.py``): a
relative bias ``‖E[ĝ] − ∇‖ / ‖∇‖`` of 0.02–0.81 on untrained MLPs, 0.70–1.43 with cosines
down to −0.62 on trained ones; at θ ∈ {0, 1} too the slope is not the difference. Pyro's
``Trace_ELBO`` (``loss="trace"``) gives the unbiased score-function estimate of the same
gradient, at a standard deviation per draw of 5–430× the gradient's norm on those MLPs.

Where the gate sits: on the layer's output, or -- if a BatchNorm directly
consumes that output -- on the BatchNorm's output, so a gate at 0 makes the
unit's contribution exactly 0 and the unit can be cut out of the network.

Complexity-aware prices: ``cost="flops"`` / ``"params"`` / ``"mixed"`` scales γ
per unit by what removing that unit saves (its own MACs or parameters plus the
matching input slice of every consumer), normalised so the mean price over all
gated units is γ. A unit of conv1 (many MACs per parameter) then costs more
than a unit of fc1, which is what aims the fit at a FLOPs budget.

>>> import torch.nn as nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
>>> from bayesprune import sparsify
>>> [s.name for s in sparsify(net, UnitGates(gamma=10.0)).sites]  # output layer left out
['0.gate_prob', '0.gate', '0.weight']
"""

from __future__ import annotations

import dataclasses
import logging
from functools import lru_cache
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor
from torch.distributions import constraints

from bayesprune.distributions.flattening import Flattening, log_normalizer, optimal_prior_prob
from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.heads import check_head_layer, is_head_layer, out_projections
from bayesprune.priors.base import DEFAULT_LAYER_TYPES, Prior, check_positive
from bayesprune.priors.gaussian import Gaussian
from bayesprune.priors.group_ties import group_tiles, has_grouped, layer_tile
from bayesprune.priors.head_gates import head_gate_sites
from bayesprune.priors.registry import from_config, register
from bayesprune.priors.unit_costs import COSTS, complexity_prices, unit_costs
from bayesprune.sites import Context, Site, join

log = logging.getLogger(__name__)

#: where a unit gate multiplies its unit: before or after the nonlinearity
PLACES = ("pre-activation", "post-activation")


def check_gate_args(owner: str, gamma: float, cost: str, init_prob: float) -> None:
    """Validate the hyper-parameters every gate prior shares; errors name ``owner``."""
    if (
        isinstance(gamma, bool)
        or not isinstance(gamma, (int, float))
        or not (0 <= gamma < float("inf"))
    ):
        raise ConfigError(f"{owner}: gamma must be a finite number >= 0, got {gamma!r}")
    if cost not in COSTS:
        raise ConfigError(f"{owner}: cost must be one of {COSTS}, got {cost!r}")
    check_positive(owner, init_prob=init_prob)
    if init_prob > 1:
        raise ConfigError(f"{owner}: init_prob must be in (0, 1], got {init_prob!r}")


def gate_budget_metrics(cost: str) -> tuple[str, ...]:
    """What a budget may count for gates priced by ``cost`` (unit and block gates).

    >>> gate_budget_metrics("uniform"), gate_budget_metrics("mixed")
    (('units',), ('units', 'params', 'flops'))
    """
    return (
        "units",
        *(("params",) if cost in ("params", "mixed") else ()),
        *(("flops",) if cost in ("flops", "mixed") else ()),
    )


def gate_bernoulli(pi: Tensor) -> Distribution:
    """``Bernoulli(π)`` over a layer's gates (one event), built from logits: ``probs=π``
    would clamp π into [eps, 1 − eps], which makes ``log p(z = 1 | π*)`` wrong once
    ``π* < eps`` (interior θ with γ ≳ 16 in float32)."""
    fi = torch.finfo(pi.dtype)
    pi = pi.clamp(fi.tiny, 1 - fi.eps / 2)
    return dist.Bernoulli(logits=torch.log(pi) - torch.log1p(-pi)).to_event(1)


@lru_cache(maxsize=256)
def gate_constants(
    gammas: tuple[float, ...], device: torch.device, dtype: torch.dtype, strength: float = 1.0
) -> tuple[Tensor, Tensor]:
    """``(γ, Σ log Z(γ))`` of one gate site as tensors, built once per prices, strength,
    device and dtype instead of every step (they are constants; callers must not write into
    them). ``strength`` multiplies every price (the prior's :meth:`~Prior.strength_of`).

    >>> g, log_z = gate_constants((1.0, 2.0), torch.device("cpu"), torch.float64)
    >>> g.tolist(), round(float(log_z), 4)
    ([1.0, 2.0], -1.7028)
    >>> gate_constants((1.0, 2.0), torch.device("cpu"), torch.float64, 3.0)[0].tolist()
    [3.0, 6.0]
    """
    # built as normal tensors even when first asked for under inference_mode (validation
    # after a removal): a cached inference tensor could not be used by a later training step
    with torch.inference_mode(False), torch.no_grad():
        gamma = torch.tensor(gammas, device=device, dtype=dtype)
        if strength != 1.0:
            gamma = gamma * strength
        return gamma, log_normalizer(gamma).sum()


def probs_key(site_name: str) -> str:
    """Key under which the fused path passes a Bernoulli site's probabilities θ."""
    return site_name + "#probs"


#: gate probabilities train at this rate unless ``fit(role_lr=...)`` says otherwise
GATE_LR = {"gate": 1e-2}


class GateSitesMixin:
    """What every gate prior shares: the prices γ stored on the sites, the hyper-prior and
    Bernoulli of the ``gate_prob``/``gate`` sites, their starting values, and the closed
    form of their part of the ELBO. Used by :class:`UnitGates` and ``BlockGates``."""

    init_prob: float
    default_role_lr = GATE_LR

    def gate_sites(
        self,
        name: str,
        shape: tuple[int, ...],
        gammas: tuple[float, ...],
        *,
        target: str,
        dim: int,
        extra: tuple[tuple[str, Any], ...] = (),
    ) -> list[Site]:
        """The ``<name>.gate_prob`` and ``<name>.gate`` sites of one gated layer or block."""
        gate, prob = join(name, "gate"), join(name, "gate_prob")
        return [
            Site(
                prob,
                name,
                "gate_prob",
                shape,
                constraints.unit_interval,
                info=(("gamma", gammas), ("gate", gate)),
            ),
            Site(
                gate,
                name,
                "gate",
                shape,
                constraints.boolean,
                info=(("gamma", gammas), ("target", target), ("dim", dim), ("prob", prob), *extra),
            ),
        ]

    def gamma_of(self, site: Site, ctx: Context) -> Tensor:
        """γ_u of every gate of ``site``, times the layer's strength multiplier."""
        return self.gate_constants_of(site, ctx.device, ctx.dtype)[0]

    def gate_constants_of(
        self, site: Site, device: torch.device, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        """:func:`gate_constants` of ``site`` at the layer's current strength."""
        strength = self.strength_of(site.layer)  # type: ignore[attr-defined]
        return gate_constants(site.meta["gamma"], device, dtype, strength)

    def gate_initial_value(self, site: Site, dtype: torch.dtype) -> Tensor:
        """θ₀ for a gate, and π*(θ₀) for its prior probability."""
        theta = torch.full(site.shape, self.init_prob, dtype=dtype)
        if site.role == "gate":
            return theta
        strength = self.strength_of(site.layer)  # type: ignore[attr-defined]
        return optimal_prior_prob(theta, torch.tensor(site.meta["gamma"], dtype=dtype) * strength)

    def gate_distribution(
        self, site: Site, values: dict[str, Tensor], ctx: Context
    ) -> Distribution:
        if site.role == "gate_prob":
            return Flattening(self.gamma_of(site, ctx)).to_event(1)
        return gate_bernoulli(values[site.meta["prob"]])

    def gates_log_prob(self, sites: list[Site], values: dict[str, Tensor], ctx: Context) -> Tensor:
        """``-Σ(γθ + log Z)`` over the gate sites: the guide's entropy folded in."""
        total = torch.zeros((), device=ctx.device, dtype=ctx.dtype)
        for s in sites:
            if s.role == "gate":
                gamma, log_z = self.gate_constants_of(s, ctx.device, ctx.dtype)
                total = total - torch.dot(gamma, values[probs_key(s.name)]) - log_z
        return total


class UnitGates(GateSitesMixin, Prior):
    """Bernoulli gates on output units / filters with the flattening hyper-prior.

    :param gamma: price of keeping one unit (mean price with a complexity-aware ``cost``);
        the accuracy/size trade-off. Not scaled by the data-set size.
    :param cost: ``"uniform"`` (γ for every unit), ``"flops"``, ``"params"`` or ``"mixed"``
        (the mean of the flops and params prices).
    :param weight_prior: prior of the gated layers' weights (default ``Gaussian(1.0)``;
        e.g. :class:`~bayesprune.priors.HALO` composes).
    :param init_prob: starting gate probability θ.
    :param place: ``"pre-activation"`` (default): the gate multiplies the layer's output
        (or its BatchNorm's), before the nonlinearity; ``"post-activation"``: it multiplies
        the unit where the next Conv/Linear layers read it, after the nonlinearity and
        pooling (:mod:`bayesprune.nn.gate_consumers`). Same network for hard gates under
        ReLU; the straight-through slope of a closed gate is 0 before a ReLU and the
        unit's value to the loss after it (``benchmarks/gates_prototype.py``: after is how
        the plain-PyTorch prototype of ``shared/REFERENCE.md`` reaches its widths).
        Units coupled by a residual sum or read by grouped convs need ``"pre-activation"``.

    Attention layers (``nn.MultiheadAttention`` with a packed in-projection): the units are
    the heads, one gate per head multiplying the head's output (through the columns of
    ``out_proj.weight`` that read it; :mod:`bayesprune.priors.head_gates`), no weight prior
    (the attention weights are trained by maximum likelihood); ``extract`` removes the
    dropped heads. Their out-projection is never selected (by default) or accepted.

    Grouped convolutions (``groups > 1``, not depthwise) stay balanced: when
    :func:`~bayesprune.sparsify` has an example input, the units of a layer that are a
    grouped conv's input channels, or its output channels (the conv itself, or a layer
    coupled to it through a BatchNorm, a residual sum or a product), are tied across the
    groups (:mod:`bayesprune.priors.group_ties`): with ``period`` channels per group, unit
    ``c`` uses gate ``c % period`` (site shape ``(period,)``, meta ``("tile", n // period)``),
    and each gate's price is the sum of its units' prices. Closing a gate removes one
    in-group position from every group, so every keep-set of the posterior is one
    :func:`~bayesprune.extract` can cut (ResNeXt, RegNet). Without an example input the
    gates are not tied (a warning says so).
    """

    name = "gates"
    removes_units = True
    default_threshold = 0.5

    def __init__(
        self,
        gamma: float = 30.0,
        *,
        cost: str = "uniform",
        weight_prior: Prior | dict[str, Any] | None = None,
        init_prob: float = 0.9,
        place: str = "pre-activation",
    ) -> None:
        check_gate_args("UnitGates", gamma, cost, init_prob)
        if place not in PLACES:
            raise ConfigError(f"UnitGates: place must be one of {PLACES}, got {place!r}")
        self.place = place
        if isinstance(weight_prior, dict):
            weight_prior = from_config(weight_prior)
        self.gamma = float(gamma)
        self.cost = cost
        self.weight_prior = weight_prior if weight_prior is not None else Gaussian(1.0)
        if isinstance(self.weight_prior, UnitGates):
            raise UnsupportedError("UnitGates: weight_prior cannot itself be UnitGates")
        self.init_prob = float(init_prob)
        self._prices: dict[str, Tensor] = {}
        self._tiles: dict[str, int] = {}

    #: attention layers are gated per head (:mod:`bayesprune.priors.head_gates`)
    supported_layer_types = (*DEFAULT_LAYER_TYPES, nn.MultiheadAttention)
    default_layer_types = supported_layer_types

    def check_layer(self, name: str, layer: nn.Module) -> None:
        """Also refuse, naming the layer, an attention layer whose heads cannot be separated
        (:func:`~bayesprune.heads.check_head_layer`) and the out-projection of an attention
        layer: its layer reads its weight, never calls it, so a unit gate there would never
        act (gate the attention layer's heads instead)."""
        super().check_layer(name, layer)
        if is_head_layer(layer):
            check_head_layer("UnitGates", name, layer)
        elif isinstance(layer, nn.modules.linear.NonDynamicallyQuantizableLinear):
            raise UnsupportedError(
                f"UnitGates cannot be put on layer {name!r}: it is the out-projection of an "
                "nn.MultiheadAttention, which reads its weight without calling it; gate the "
                "attention layer itself (one gate per head)"
            )

    # --- choosing layers and prices ---------------------------------------------------
    def default_selection(self, module: nn.Module, names: list[str]) -> list[str]:
        """Every Linear/Conv but the last one in module order (the output layer: gating it
        would remove classes)."""
        names = [n for n in names if n not in out_projections(module)]  # gated per head
        return names[:-1] if len(names) > 1 else names

    def bind(self, module: nn.Module, layer_names: list[str], example_input: Tensor | None) -> None:
        self._prices = {}
        self._tiles = {}
        if example_input is not None:
            self._tiles = group_tiles(module, layer_names, example_input)
        elif has_grouped(module):
            log.warning(
                "UnitGates: no example input to trace the network's grouped convolutions, so "
                "the gates of the units they constrain are not tied: extract will refuse "
                "unbalanced removals; pass sparsify(..., example_input=x)"
            )
        if self.cost == "uniform":
            return
        if example_input is None:
            raise ConfigError(
                f"UnitGates(cost={self.cost!r}) needs an example input to count FLOPs and "
                "parameters per unit: pass sparsify(..., example_input=x) or use a zoo network"
            )
        costs = unit_costs(module, layer_names, example_input)
        self._prices = complexity_prices(self.gamma, self.cost, costs)

    def prices(self, name: str, n_units: int) -> Tensor:
        """γ_u for every unit of layer ``name``."""
        if name in self._prices:
            return self._prices[name].detach().clone()
        return torch.full((n_units,), self.gamma)

    def tile(self, name: str) -> int:
        """Units per gate of layer ``name``: 1, or ``tile`` for a layer whose units are tied
        across the groups of a grouped conv (:mod:`bayesprune.priors.group_ties`)."""
        return self._tiles.get(name, 1)

    # --- sites ------------------------------------------------------------------------
    def layer_sites(self, name: str, layer: nn.Module) -> list[Site]:
        self.check_layer(name, layer)
        if is_head_layer(layer):  # one gate per head
            return head_gate_sites(self, name, layer)
        units = int(layer.weight.shape[0])
        prices = self.prices(name, units)
        tile = self.tile(name)
        extra: tuple[tuple[str, Any], ...] = ()
        if tile > 1:  # one gate per in-group position, priced as the units it ties
            if units % tile:
                raise ConfigError(
                    f"UnitGates: layer {name!r} has {units} units, not a multiple of the "
                    f"{tile} units tied to each of its gates (group-balanced gates)"
                )
            prices = prices.reshape(tile, -1).sum(0)
            extra = (("tile", tile),)
        gammas = tuple(float(g) for g in prices)
        dim = -1 if isinstance(layer, nn.Linear) else 1
        if self.place != "pre-activation":
            extra = (*extra, ("place", self.place))
        prob, gate = self.gate_sites(
            name, (units // tile,), gammas, target=name, dim=dim, extra=extra
        )
        if tile > 1:  # both gate sites say how many units each entry stands for
            prob = dataclasses.replace(prob, info=(*prob.info, ("tile", tile)))
        return [prob, gate, *self.weight_prior.layer_sites(name, layer)]

    def _own(self, site: Site) -> bool:
        return site.role in ("gate", "gate_prob")

    def initial_value(self, site: Site, layer: nn.Module) -> Tensor:
        if site.role in ("gate", "gate_prob"):
            dtype = next(layer.parameters()).dtype  # an attention layer has no .weight
            return self.gate_initial_value(site, dtype)
        return self.weight_prior.initial_value(site, layer)

    def distribution(self, site: Site, values: dict[str, Tensor], ctx: Context) -> Distribution:
        if site.role in ("gate", "gate_prob"):
            return self.gate_distribution(site, values, ctx)
        return self.weight_prior.distribution(site, values, ctx)

    def log_prob(self, sites: list[Site], values: dict[str, Tensor], ctx: Context) -> Tensor:
        """Closed form for the gates -- ``-Σ(γθ + log Z)``, the guide's entropy folded in --
        plus the weight prior's log density at the sampled weights."""
        total = self.gates_log_prob(sites, values, ctx)
        rest = [s for s in sites if s.role not in ("gate", "gate_prob")]
        if rest:
            total = total + self.weight_prior.log_prob(rest, values, ctx)
        return total

    # --- budgets ----------------------------------------------------------------------
    def budget_metrics(self) -> tuple[str, ...]:
        """``units`` always; ``flops`` with prices that count FLOPs (``cost="flops"`` or
        ``"mixed"``), ``params`` with prices that count parameters (``"params"``,
        ``"mixed"``): the prices are what aims the fit at that measure."""
        return gate_budget_metrics(self.cost)

    # --- collapse and reports ---------------------------------------------------------
    def scores(self, sites: list[Site], point: dict[str, Tensor], **options: Any) -> Tensor:
        """The gate probabilities θ (per unit); keep where θ > 0.5 by default."""
        gate = next(s for s in sites if s.role == "gate")
        return point[probs_key(gate.name)]

    def kept_fraction(self, net: Any, point: dict[str, Tensor]) -> float:
        """Units whose gate has θ above the threshold, over all gated units."""
        alive = total = 0
        for sites in net.layer_sites.values():
            th = self.scores(sites, point)
            tile = layer_tile(sites)
            alive += int((th > self.default_threshold).sum()) * tile
            total += th.numel() * tile
        return alive / max(total, 1)

    def units_alive(self, net: Any, point: dict[str, Tensor]) -> dict[str, int]:
        """Units with θ > 0 per layer (those not yet removable; a tied gate counts its
        ``tile`` units)."""
        return {
            n: int((self.scores(s, point) > 0).sum()) * layer_tile(s)
            for n, s in net.layer_sites.items()
        }

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gamma": self.gamma,
            "cost": self.cost,
            "weight_prior": self.weight_prior.config(),
            "init_prob": self.init_prob,
            # the default stays out, so configs (and checkpoint signatures) stay as they were
            **({"place": self.place} if self.place != "pre-activation" else {}),
        }


register("gates", UnitGates)
