"""Remove units from a network *while it is being trained*, so later epochs get cheaper.

:func:`remove_units` cuts units (output neurons / filters) out of a live
:class:`~bayesprune.nn.BayesianNet` in place -- the module, the guide, the
optimizer and the net's site description together -- so training continues on
the smaller network as if nothing had happened: on the same input the smaller
network computes what the larger one computed with the removed units' outputs
at 0 (e.g. their Bernoulli gates closed), and every surviving parameter keeps
its value, its optimizer state and its gradient.

This module is the entry point; each step has its own file:

1. **Plan** (:mod:`~bayesprune.pruning.live_plan`): torch-pruning's dependency graph and
   the coupling rule of :func:`~bayesprune.extract` list the coupled slices of every
   layer losing units (its rows, the matching BatchNorm channels, the input columns of
   every consumer, the other layers of a residual sum). A unit shared by coupled layers
   is removed only if every coupled layer with sites drops it (layers not named in
   ``keep`` keep all their units).
2. **Surgery** (:mod:`~bayesprune.pruning.live_surgery`): torch-pruning slices the
   modules with indices riding along in place of values, which tells which elements of
   every tensor survive.
3. **Sites and guide** (:mod:`~bayesprune.pruning.live_sites`): the prior rebuilds the
   layer's sites from the new shapes; the guide's parameters follow the same indices.
4. **Optimizer** (:mod:`~bayesprune.pruning.optimizer_state`): param groups point at the
   new parameters, per-parameter state is sliced alike.

The net remembers what was removed (:func:`removed_units`: for each layer that
lost units, the *original* indices of its current units), so repeated removals
compose and a checkpoint can replay them on a freshly built net
(:func:`to_current`, :mod:`~bayesprune.pruning.unit_indices`).

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import UnitGates
>>> from bayesprune.guides import MAP
>>> mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
>>> net = sparsify(mlp, UnitGates(), example_input=torch.zeros(1, 4))
>>> guide = MAP(net)
>>> kept = remove_units(net, guide, {"0": torch.tensor([0, 2, 5])})
>>> kept["0"].tolist(), net.module[2].in_features, guide.gate_probs["0/gate"].shape
([0, 2, 5], 3, torch.Size([3]))
>>> kept = remove_units(net, guide, {"0": torch.tensor([1, 2])})  # indices of the current net
>>> kept["0"].tolist()  # original indices
[2, 5]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from bayesprune.guides.base import Guide, check_pair
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.unit_origin import RECORD, UnitOrigin, original_sites, removed_units, unit_origin
from bayesprune.pruning.extract import _group
from bayesprune.pruning.live_plan import plan_removal, site_kinds, touched_modules
from bayesprune.pruning.live_sites import follow_layer
from bayesprune.pruning.live_surgery import surgery
from bayesprune.pruning.optimizer_state import remap_optimizer
from bayesprune.pruning.unit_indices import (
    WHO,
    as_index,
    n_units,
    to_current,
    to_original,
    units_of,
)

__all__ = [
    "UnitOrigin",
    "original_sites",
    "remove_units",
    "removed_units",
    "replay_removals",
    "to_current",
    "to_original",
    "unit_origin",
]


def remove_units(
    net: BayesianNet,
    guide: Guide,
    keep: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    example_input: Tensor | None = None,
) -> dict[str, Tensor]:
    """Cut units out of a live network, its guide and its optimizer, in place.

    :param net: the model being trained.
    :param guide: its guide (its parameters are sliced too).
    :param keep: ``{layer name: indices of the units to KEEP}`` in the layer's *current*
        indexing (1-D integer tensors or lists), for layers of ``net.layer_names``; layers
        not named keep all their units. Coupled units (e.g. the convs feeding one residual
        sum) are removed only where every coupled layer drops them.
    :param optimizer: the ``torch.optim`` optimizer over the net's and guide's parameters
        (Adam, AdamW, SGD, ... ): its param groups are pointed at the new parameters and
        its per-parameter state is sliced alike.
    :param example_input: one input batch to trace the network (default
        ``net.example_input``).
    :returns: the cumulative keep map in the *original* indexing (as :func:`removed_units`):
        for each layer that has lost units so far, the original indices of its units.
    :raises ValueError: naming the layer, for an unknown layer, indices out of range,
        a keep-set keeping no unit, or a removal that would change more than the removed
        units (coupled to a layer without sites, reaching the network's output); nothing
        is modified then.
    :raises TypeError: for non-integer indices.

    Sliced parameters become new ``nn.Parameter`` objects (untouched ones stay the same
    objects); gradients are sliced along. The removed units are assumed to contribute
    nothing (their gates closed); the activations between a layer and its consumers must
    map 0 to 0, as for :func:`~bayesprune.extract`.
    """
    check_pair(WHO, net, guide)
    module = net.module
    wanted = {name: as_index(name, idx, units_of(net, name)) for name, idx in keep.items()}
    widths = {n: n_units(module.get_submodule(n)) for n in net.layer_names}
    if all(wanted[n].numel() == widths[n] for n in wanted):
        return removed_units(net)
    if example_input is None:
        example_input = net.example_input
    dg, plan = plan_removal(net, wanted, widths, example_input)
    if not plan:
        return removed_units(net)
    touched = touched_modules(net, dg, [_group(dg, layer, drop) for layer, drop in plan])
    layers = [n for n in net.layer_names if n in touched]
    kinds = {n: site_kinds(net, guide, n) for n in layers}
    n_old = {n: int(module.get_submodule(n).weight.shape[0]) for n in layers}

    slices, replaced = surgery(module, dg, plan, touched)

    record = unit_origin(net)
    if record is None:
        record = UnitOrigin(
            sites=net.sites,
            n_units={n: k for n, k in widths.items() if k is not None},
            units={},
        )
        net.__dict__[RECORD] = record
    layer_sites = dict(net.layer_sites)
    for n in layers:
        followed = follow_layer(net, guide, n, kinds[n], slices, n_old[n])
        if followed is None:
            continue
        layer_sites[n], units, guide_replaced = followed
        replaced.extend(guide_replaced)
        if units.numel() < n_old[n]:
            base = record.units.get(n, torch.arange(n_old[n]))
            record.units[n] = base[units]
    net.layer_sites = layer_sites  # net.sites and guide.sites are read from it
    if optimizer is not None:
        remap_optimizer(optimizer, replaced)
    return removed_units(net)


def replay_removals(
    net: BayesianNet,
    guide: Guide,
    removed: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    example_input: Tensor | None = None,
) -> dict[str, Tensor]:
    """Cut ``net`` (e.g. freshly built from a spec) down to a recorded state, before loading
    a checkpoint or saved state dicts into it: ``removed`` is a keep map in original
    indexing (:func:`removed_units` of the fitted net, ``checkpoint["removed"]``); what
    ``net`` has already removed is taken into account. Returns :func:`removed_units`.

    :raises ValueError: naming the layer, when ``removed`` keeps units ``net`` no longer
        has, or names a layer it lacks.

    >>> import torch, torch.nn as nn
    >>> from bayesprune import sparsify
    >>> from bayesprune.priors import UnitGates
    >>> from bayesprune.guides import MAP
    >>> mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> net = sparsify(mlp, UnitGates(), example_input=torch.zeros(1, 4))
    >>> replay_removals(net, MAP(net), {"0": [1, 4]})["0"].tolist(), mlp[0].out_features
    ([1, 4], 2)
    """
    keep = to_current(net, removed)
    if not keep:
        return removed_units(net)
    return remove_units(net, guide, keep, optimizer, example_input=example_input)
