"""The ``posterior`` variables of one draw ``z ~ q``, per layer, named after the user's modules.

For a layer ``L`` (see :mod:`bayesprune.diagnostics.names` for the dimensions):

- ``"L.gate"``: the 0/1 gate draws (gate priors);
- ``"L.gate_prob"``: θ = q(z = 1) of each gate, the same in every draw. (The Pyro site
  of that name holds the prior parameter π; here it is the guide's θ.);
- ``"L.weight_scale"``: the shrinkage scale draws (per unit; per-weight scales are
  averaged over each unit's weights to keep the size small);
- ``"L.weight_norm"``: the L2 norm of each unit's weight draw, times its gate draw if gated;
- ``"L.weight"``: the whole weight draw (only when asked for).

A layer whose gates are tied across the groups of a grouped conv
(:mod:`bayesprune.priors.group_ties`) has one entry per *gate* on its unit dimension
(coordinates: the original index of the gate's unit in the first group); its
``weight_norm`` is the norm over the gate's ``tile`` units, its ``weight_scale`` their mean.

>>> import torch.nn as nn
>>> from collections import OrderedDict
>>> from bayesprune import sparsify
>>> from bayesprune.priors import UnitGates
>>> from bayesprune.guides import MAP
>>> from bayesprune.diagnostics.log_density import draw
>>> mlp = nn.Sequential(OrderedDict(hidden=nn.Linear(3, 4), act=nn.ReLU(), out=nn.Linear(4, 2)))
>>> net = sparsify(mlp, UnitGates())
>>> guide = MAP(net)
>>> variable_dims(net, weights=False)
{'hidden.gate': ('hidden_unit',), 'hidden.gate_prob': ('hidden_unit',), 'hidden.weight_norm': ('hidden_unit',)}
>>> {k: tuple(v.shape) for k, v in layer_variables(net, guide, draw(guide)).items()}
{'hidden.gate': (4,), 'hidden.gate_prob': (4,), 'hidden.weight_norm': (4,)}
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayesprune.diagnostics.names import unit_coords, unit_dim, weight_dims
from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.priors.group_ties import layer_tile
from bayesprune.sites import Site, join


def _by_role(sites: list[Site], role: str) -> Site | None:
    return next((s for s in sites if s.role == role), None)


def n_units(net: BayesianNet, layer: str) -> int:
    """Units of ``layer``: its gates, else the first axis of its weight site."""
    sites = net.layer_sites[layer]
    site = _by_role(sites, "gate") or _by_role(sites, "weight") or _by_role(sites, "scale")
    if site is None:
        raise ConfigError(f"layer {layer!r} has no gate, weight or scale site to count units by")
    return int(site.shape[0])


def variable_dims(net: BayesianNet, *, weights: bool) -> dict[str, tuple[str, ...]]:
    """``{variable name: its dimensions after (chain, draw)}`` in a fixed order."""
    out: dict[str, tuple[str, ...]] = {}
    for layer, sites in net.layer_sites.items():
        unit = (unit_dim(layer),)
        gate, scale, weight = (_by_role(sites, r) for r in ("gate", "scale", "weight"))
        if gate is not None:
            out[join(layer, "gate")] = unit
            out[join(layer, "gate_prob")] = unit
        if scale is not None:
            out[join(layer, "weight_scale")] = unit
        if weight is not None:
            out[join(layer, "weight_norm")] = unit
            if weights:
                out[join(layer, "weight")] = weight_dims(layer, len(weight.shape))
    return out


def coords(net: BayesianNet, *, weights: bool) -> dict[str, Tensor]:
    """Coordinates of every per-unit (and, with ``weights``, per-weight) dimension:
    original unit indices on ``<tag>_unit`` and ``<tag>_out``, positions elsewhere."""
    out: dict[str, Tensor] = {}
    for layer, sites in net.layer_sites.items():
        tile = layer_tile(sites)
        units = unit_coords(net, layer, n_units(net, layer) * tile)
        out[unit_dim(layer)] = units[: units.numel() // tile]  # tied: the first group's
        weight = _by_role(sites, "weight")
        if weights and weight is not None:
            dims = weight_dims(layer, len(weight.shape))
            out[dims[0]] = units
            for d, size in zip(dims[1:], weight.shape[1:], strict=True):
                out[d] = torch.arange(size)
    return out


@torch.no_grad()
def layer_variables(
    net: BayesianNet, guide: Guide, values: dict[str, Tensor], *, weights: bool = False
) -> dict[str, Tensor]:
    """The posterior variables of one draw ``values`` (CPU tensors, without chain/draw)."""
    out: dict[str, Tensor] = {}
    for layer, sites in net.layer_sites.items():
        gate, scale, weight = (_by_role(sites, r) for r in ("gate", "scale", "weight"))
        z = None
        if gate is not None:
            z = values[gate.name].detach()
            out[join(layer, "gate")] = z.round().to(torch.int32).cpu()
            out[join(layer, "gate_prob")] = guide.gate_theta(gate).detach().clamp(0, 1).cpu()
        if scale is not None:
            lam = values[scale.name].detach()
            lam = lam.flatten(1).mean(1) if lam.dim() > 1 else lam
            if z is not None and lam.numel() != z.numel():  # gates tied across groups
                lam = lam.reshape(-1, z.numel()).mean(0)
            out[join(layer, "weight_scale")] = lam.cpu()
        if weight is not None:
            w = values[weight.name].detach()
            norm = w.flatten(1).norm(dim=1) if w.dim() > 1 else w.abs()
            if z is not None and norm.numel() != z.numel():  # unit j·period + p: gate p
                norm = norm.reshape(-1, z.numel()).norm(dim=0)
            out[join(layer, "weight_norm")] = (norm * z if z is not None else norm).cpu()
            if weights:
                out[join(layer, "weight")] = w.cpu().clone()
    return out
