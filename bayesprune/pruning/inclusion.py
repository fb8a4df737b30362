"""Posterior inclusion probabilities: how sure the posterior is that an element stays.

For every layer carrying the prior, :func:`inclusion_probs` gives ``P(keep)`` for each
prunable element, shaped like that layer's collapse scores
(:func:`bayesprune.pruning.collapse.layer_scores`). What "keep" means depends on the
prior (what collapse prunes) and what the guide knows (its family); each case is
defined here and named by :func:`inclusion_kind`:

``"gate"`` -- layers with Bernoulli gates (``UnitGates`` per unit, ``BlockGates`` per
    block): the gate is the pruning decision, so ``P(keep) = q(z = 1) = θ``, clamped to
    [0, 1], under any guide. The weights' own uncertainty does not enter.

``"normal"`` -- magnitude priors (``HALO``, ``Gaussian``) under a guide with a Normal
    over the weights (``MeanField``), ``w ~ Normal(μ, σ)``:

    - per weight (HALO ``per="weight"``, Gaussian): ``P(|w| > δ)`` in closed form,
      ``Φ((μ - δ)/σ) + Φ((-μ - δ)/σ)``;
    - per unit (HALO ``per="unit"``): ``P(‖w_u‖₂ > δ)``, the norm of the unit's weight
      row (a generalised chi distribution, no closed form), estimated by Monte Carlo
      from ``num_samples`` draws of the guide with a private generator seeded by ``seed``
      (the global RNG is untouched); its standard error is at most ``0.5/√num_samples``.

``"map-indicator"`` -- magnitude priors under a Delta guide over the weights (``MAP``):
    there is no weight uncertainty, so ``P(keep)`` is the indicator ``1{|ŵ| > δ}``
    (``1{‖ŵ_u‖₂ > δ}`` per unit) at the point estimate -- 0 or 1, not a probability
    anyone estimated. Callers that show it as uncertainty should check the kind.

``δ`` (``delta``) is the magnitude below which a weight (or a unit's weight norm)
counts as pruned; it defaults to the prior's ``default_threshold`` -- ``1e-3`` for
HALO (its ``report_tol``), ``0`` for ``Gaussian`` (then every Normal weight has
``P = 1``). With that default the MAP indicator is exactly what
``collapse(threshold=None)`` keeps.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MeanField
>>> net = sparsify(nn.Linear(3, 2), HALO(), layers=nn.Linear)
>>> guide = MeanField(net)
>>> inclusion_kind(net, guide), inclusion_probs(net, guide)[""].shape
('normal', torch.Size([2, 3]))
"""

from __future__ import annotations

import math
import numbers

import torch
from pyro.distributions import Delta
from torch import Tensor
from torch.distributions import Independent, Normal

from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.guides.base import Guide, check_pair
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.priors.gaussian import Gaussian
from bayesprune.priors.halo import HALO
from bayesprune.sites import Site

KINDS = ("gate", "normal", "map-indicator")


def _check_args(delta: float | None, num_samples: int, seed: int) -> None:
    if delta is not None and (
        isinstance(delta, bool)
        or not isinstance(delta, numbers.Real)
        or not (0 <= float(delta) < math.inf)
    ):
        raise ConfigError(f"inclusion_probs: delta must be a finite number >= 0, got {delta!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral):
        raise ConfigError(
            f"inclusion_probs: num_samples must be an integer >= 1, got {num_samples!r}"
        )
    if num_samples < 1:
        raise ConfigError(
            f"inclusion_probs: num_samples must be an integer >= 1, got {num_samples!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"inclusion_probs: seed must be an integer, got {seed!r}")


def _per(net: BayesianNet, layer: str) -> str:
    """``"weight"`` or ``"unit"``: what a magnitude prior prunes in ``layer``."""
    prior = net.prior
    if isinstance(prior, HALO):
        return prior.per
    if isinstance(prior, Gaussian):
        return "weight"
    raise UnsupportedError(
        f"inclusion_probs: no inclusion probability is defined for layer {layer!r} under the "
        f"prior {type(prior).__name__}; defined for gate priors (UnitGates, BlockGates), HALO "
        "and Gaussian"
    )


def _weight_site(sites: list[Site], layer: str) -> Site:
    for s in sites:
        if s.role == "weight":
            return s
    raise UnsupportedError(f"inclusion_probs: layer {layer!r} has neither a gate nor a weight site")


def _weight_q(guide: Guide, site: Site) -> tuple[str, Tensor, Tensor | None]:
    """``("normal", loc, scale)`` or ``("map-indicator", value, None)`` for a weight site."""
    d = guide.site_distribution(site)
    while isinstance(d, Independent):
        d = d.base_dist
    if isinstance(d, Normal):
        return "normal", d.loc.detach(), d.scale.detach()
    if isinstance(d, Delta):
        return "map-indicator", d.v.detach(), None
    raise UnsupportedError(
        f"inclusion_probs: the guide {type(guide).__name__} gives site {site.name!r} a "
        f"{type(d).__name__}; inclusion probabilities need a Normal (mean-field) or a Delta (MAP)"
    )


def _layer_kind(net: BayesianNet, guide: Guide, layer: str) -> str:
    sites = net.layer_sites[layer]
    if any(s.role == "gate" for s in sites):
        return "gate"
    _per(net, layer)
    return _weight_q(guide, _weight_site(sites, layer))[0]


def inclusion_kind(net: BayesianNet, guide: Guide) -> str:
    """What :func:`inclusion_probs` returns for this prior and guide: ``"gate"`` (θ),
    ``"normal"`` (probabilities under a Normal over the weights) or ``"map-indicator"``
    (0/1 at a point estimate: no weight uncertainty); ``"mixed"`` if layers differ.

    :raises TypeError: for a prior or guide family without a definition (see the module).
    """
    check_pair("inclusion_probs", net, guide)
    kinds = {_layer_kind(net, guide, n) for n in net.layer_sites}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _unit_norm_prob(
    loc: Tensor, scale: Tensor, delta: float, num_samples: int, seed: int
) -> Tensor:
    """Monte-Carlo ``P(‖w_u‖₂ > δ)`` per row ``u`` of ``w ~ Normal(loc, scale)``."""
    gen = torch.Generator(device=loc.device).manual_seed(int(seed))
    mu, sd = loc.flatten(1), scale.flatten(1)
    per_chunk = max(1, min(num_samples, 2**22 // max(mu.numel(), 1)))
    above = torch.zeros(mu.shape[0], device=loc.device, dtype=torch.float64)
    done = 0
    while done < num_samples:
        n = min(per_chunk, num_samples - done)
        eps = torch.randn((n, *mu.shape), generator=gen, device=loc.device, dtype=mu.dtype)
        norms = (mu + sd * eps).norm(dim=2)
        above += (norms > delta).sum(dim=0).to(torch.float64)
        done += n
    return (above / num_samples).to(loc.dtype)


@torch.no_grad()
def inclusion_probs(
    net: BayesianNet,
    guide: Guide,
    *,
    delta: float | None = None,
    num_samples: int = 1024,
    seed: int = 0,
) -> dict[str, Tensor]:
    """``P(keep)`` of every prunable element of every layer carrying the prior.

    :param net: the model (from :func:`bayesprune.sparsify`).
    :param guide: its fitted guide.
    :param delta: magnitude at or below which a weight (a unit's weight norm, for per-unit
        priors) counts as pruned; ``>= 0``; default: the prior's ``default_threshold``.
        Unused for gated layers.
    :param num_samples: Monte-Carlo draws for per-unit probabilities under a Normal guide.
    :param seed: seed of the private generator of those draws.
    :returns: ``{layer name: tensor}`` shaped like the layer's collapse scores: ``(n_units,)``
        for gates and per-unit priors, ``(1,)`` for a block gate, the weight's shape for
        per-weight priors. Values in [0, 1]; see the module docstring for each case and
        :func:`inclusion_kind` to tell real probabilities from MAP indicators.
    :raises ValueError: for an invalid ``delta``, ``num_samples`` or ``seed``.
    :raises TypeError: for a prior or guide family without a definition.
    """
    check_pair("inclusion_probs", net, guide)
    _check_args(delta, num_samples, seed)
    if delta is None:
        delta = float(net.prior.default_threshold)
    delta = float(delta)
    out: dict[str, Tensor] = {}
    for layer, sites in net.layer_sites.items():
        gate = next((s for s in sites if s.role == "gate"), None)
        if gate is not None:
            out[layer] = guide.gate_theta(gate).detach().clamp(0.0, 1.0).clone()
            continue
        per = _per(net, layer)
        kind, loc, scale = _weight_q(guide, _weight_site(sites, layer))
        if kind == "map-indicator":
            score = loc.flatten(1).norm(dim=1) if per == "unit" else loc.abs()
            out[layer] = (score > delta).to(loc.dtype)
        elif per == "unit":
            out[layer] = _unit_norm_prob(loc, scale, delta, int(num_samples), int(seed))
        else:
            std = Normal(torch.zeros((), device=loc.device, dtype=loc.dtype), 1.0)
            p = std.cdf((loc - delta) / scale) + std.cdf((-loc - delta) / scale)
            out[layer] = p.clamp(0.0, 1.0)
    return out
