"""Unit indices of a live network: checking keep maps and translating between the indexing
of the network as built (*original*) and of its units now (*current*), after live removals.

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import UnitGates
>>> net = sparsify(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)), UnitGates())
>>> to_current(net, {"0": [5, 1]})["0"].tolist()  # nothing removed yet: the same units
[1, 5]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.unit_origin import unit_origin

#: the name errors of live removal give
WHO = "remove_units"


def to_current(net: BayesianNet, keep: Mapping[str, Any]) -> dict[str, Tensor]:
    """Translate a keep map in *original* indexing (e.g. from
    :func:`~bayesprune.nn.unit_origin.removed_units` of a checkpointed fit) into the
    indexing of ``net``'s current units.

    :raises ValueError: naming the layer, for an unknown layer, an index out of the
        original range, or a unit ``net`` has already removed.
    """
    rec = unit_origin(net)
    out: dict[str, Tensor] = {}
    for name, idx in keep.items():
        n_now = units_of(net, name)
        n_orig = rec.n_units.get(name, n_now) if rec is not None else n_now
        units = as_index(name, idx, n_orig)
        current = (
            rec.units.get(name) if rec is not None and name in rec.units else torch.arange(n_now)
        )
        pos = torch.searchsorted(current, units)
        found = (pos < current.numel()) & (current[pos.clamp_max(current.numel() - 1)] == units)
        if not bool(found.all()):
            gone = units[~found].tolist()
            raise ConfigError(
                f"{WHO}: layer {name!r}: units {gone} (original indexing) were already removed "
                "from this network"
            )
        out[name] = pos
    return out


def to_original(net: BayesianNet, keep: Mapping[str, Any]) -> dict[str, Tensor]:
    """Translate a keep map in the indexing of ``net``'s *current* units (e.g. the units of
    a :func:`~bayesprune.collapse` keep-set after ``fit(remove_dead=True)``) into the
    indexing of the network as built -- the inverse of :func:`to_current`. Layers that never
    lost units are unchanged; indices come back sorted, without repeats.

    :raises ValueError: naming the layer, for an unknown layer or an index out of the
        current range.
    :raises TypeError: for non-integer indices.

    >>> import torch, torch.nn as nn
    >>> from bayesprune import sparsify
    >>> from bayesprune.priors import UnitGates
    >>> from bayesprune.guides import MAP
    >>> from bayesprune.pruning.live import remove_units
    >>> mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> net = sparsify(mlp, UnitGates(), example_input=torch.zeros(1, 4))
    >>> _ = remove_units(net, MAP(net), {"0": [1, 3, 4]})  # units 0, 2, 5 are gone
    >>> to_original(net, {"0": [0, 2]})["0"].tolist()  # current units 0 and 2
    [1, 4]
    """
    rec = unit_origin(net)
    out: dict[str, Tensor] = {}
    for name, idx in keep.items():
        units = as_index(name, idx, units_of(net, name))
        if rec is not None and name in rec.units:
            units = rec.units[name][units]
        out[name] = units
    return out


def units_of(net: BayesianNet, name: str) -> int:
    """The number of units layer ``name`` of ``net`` has now; raises for a layer without
    sites or without units."""
    if name not in net.layer_names:
        raise ConfigError(
            f"{WHO}: unknown layer {name!r}; the layers with sites are {list(net.layer_names)}"
        )
    n = n_units(net.module.get_submodule(name))
    if n is None:
        layer = net.module.get_submodule(name)
        raise ConfigError(
            f"{WHO}: layer {name!r} ({type(layer).__name__}) has no units to remove (only "
            "Linear and Conv layers with a weight)"
        )
    return n


def n_units(layer: nn.Module) -> int | None:
    """The units (output neurons / filters) of a Linear or Conv layer, else ``None``."""
    w = getattr(layer, "weight", None)
    if not isinstance(w, Tensor) or w.dim() < 2:
        return None
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return None  # units along dim 1, in groups: not a layer priors put sites on
    return int(w.shape[0])


def as_index(name: str, idx: Any, n: int) -> Tensor:
    """``keep[name]`` as sorted unique unit indices in ``[0, n)``; raises otherwise."""
    t = torch.as_tensor(idx)
    if t.numel() and (t.dtype == torch.bool or t.is_floating_point() or t.is_complex()):
        raise UnsupportedError(
            f"{WHO}: keep[{name!r}] must hold integer unit indices, got {t.dtype} "
            "(for a boolean mask over units use mask.nonzero().flatten())"
        )
    t = t.detach().to("cpu", torch.long).flatten()
    if t.numel() == 0:
        raise ConfigError(f"{WHO}: keep[{name!r}] keeps none of the {n} units of layer {name!r}")
    if int(t.min()) < 0 or int(t.max()) >= n:
        raise ConfigError(
            f"{WHO}: keep[{name!r}] has units out of range [0, {n}) of layer {name!r}: "
            f"{t[(t < 0) | (t >= n)].tolist()}"
        )
    return torch.unique(t)
