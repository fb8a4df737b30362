"""After the surgery of a live unit removal: a layer's sites and the guide's parameters.

The net's sites of a layer are rebuilt from its new shapes by the prior
(``prior.layer_sites``), with per-unit facts -- the gate prices ``meta["gamma"]`` -- sliced
from the old sites, not recomputed. Guide parameters of a site follow the same indices:
those of a site replacing a module parameter (MAP values, mean-field ``loc``/``rho``) like
that parameter; those of sites shaped like the layer's weight (per-weight HALO scales)
like the weight; per-unit ones (gate probabilities θ, per-unit scales) by the layer's
surviving units; gates tied across groups (:mod:`bayesprune.priors.group_ties`) by the
gates whose units survive.

>>> import torch
>>> from bayesprune.sites import Site
>>> old = Site("fc.gate", "fc", "gate", (3,), info=(("gamma", (1.0, 2.0, 3.0)),))
>>> new = Site("fc.gate", "fc", "gate", (2,), info=(("gamma", (1.0, 1.0)),))
>>> slice_info(old, new, torch.tensor([0, 2]), 3).meta["gamma"]
(1.0, 3.0)
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from torch import Tensor

from bayesprune.guides.base import Guide, key
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.priors.group_ties import tied_units, tile_of
from bayesprune.pruning.live_plan import param_dicts
from bayesprune.pruning.live_surgery import Replaced, Slice
from bayesprune.pruning.unit_indices import WHO
from bayesprune.sites import Site, join


def follow_layer(
    net: BayesianNet,
    guide: Guide,
    name: str,
    kinds: dict[str, str],
    slices: dict[str, Slice],
    n_old: int,
) -> tuple[list[Site], Tensor, Replaced] | None:
    """The sites of layer ``name`` after the surgery (``slices``: the slice of every tensor
    that changed, by full name; ``kinds``: :func:`~bayesprune.pruning.live_plan.site_kinds`;
    ``n_old``: its units before), with the guide's parameters of those sites sliced in
    place. Returns the new sites, the surviving units (old indexing) and the guide
    parameters replaced; ``None`` if the surgery left the layer's sites untouched."""
    wslice = slices.get(join(name, "weight"))
    if wslice is None and not any(s.replaces in slices for s in net.layer_sites[name]):
        return None
    units = wslice.axes[0].cpu() if wslice is not None else torch.arange(n_old)
    rebuilt = {s.name: s for s in net.prior.layer_sites(name, net.module.get_submodule(name))}
    pdicts = param_dicts(guide)
    new_sites: list[Site] = []
    replaced: Replaced = []
    for s in net.layer_sites[name]:
        kind = kinds[s.name]
        pos, n_pos = units, n_old  # the entries of a per-unit site that survive
        if kind == "tied":
            pos, n_pos = tied_gates(name, units, n_old, tile_of(s)), n_old // tile_of(s)
        if kind == "param":
            sl = slices.get(s.replaces)
        elif kind == "weight":
            sl = wslice
        elif kind in ("unit", "tied") and pos.numel() < n_pos:
            flat = pos.to(wslice.flat.device)
            sl = Slice(s.shape, flat, [flat])
        else:
            sl = None
        expected = tuple(sl.flat.shape) if sl is not None else s.shape
        ns = rebuilt.get(s.name)
        if ns is None or ns.role != s.role or ns.shape != expected:
            raise RuntimeError(
                f"{WHO}: after the surgery the prior describes site {s.name!r} as "
                f"{None if ns is None else ns.shape}, expected {expected}"
            )
        new_sites.append(slice_info(s, ns, pos, n_pos))
        if sl is None:
            continue
        for pd in pdicts:
            k = key(s.name)
            old = pd.get(k)
            if old is None:
                continue
            new = nn.Parameter(sl.take(old.detach()), requires_grad=old.requires_grad)
            if old.grad is not None:
                new.grad = sl.take(old.grad)
            pd[k] = new
            replaced.append((old, new, sl))
    return new_sites, units, replaced


def tied_gates(name: str, units: Tensor, n_old: int, tile: int) -> Tensor:
    """The gates (old indexing) whose units survive a removal from a layer with ``n_old``
    units and ``tile`` units per gate; raises unless whole gates went (balanced groups).

    >>> tied_gates("conv", torch.tensor([0, 2, 3, 5]), 6, 2).tolist()  # period 3: gate 1 gone
    [0, 2]
    """
    period = n_old // tile
    gates = units[units < period]
    if not torch.equal(tied_units(gates, period, tile), units.cpu()):
        raise RuntimeError(
            f"{WHO}: the removal from layer {name!r} is not whole gates of its {tile}-unit "
            f"tied gates (units kept: {units.tolist()})"
        )
    return gates


def slice_info(old: Site, new: Site, units: Tensor, n_old: int) -> Site:
    """``new`` with the per-unit facts of ``old`` (tuples with one entry per unit) sliced."""
    if old.shape != (n_old,):
        return new
    per_unit = {
        k: tuple(v[i] for i in units.tolist())
        for k, v in old.info
        if isinstance(v, tuple) and len(v) == n_old
    }
    if not per_unit:
        return new
    info = dict(new.info)
    info.update(per_unit)
    return dataclasses.replace(new, info=tuple(info.items()))
