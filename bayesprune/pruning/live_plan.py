"""Planning a live unit removal: which coupled slices go, and whether it is safe.

Uses the same dependency graph, coupling rule and plan as :func:`~bayesprune.extract`
(:func:`~bayesprune.pruning.extract.dependency_graph`); what is live-specific is checked
here, before anything changes: every module a group slices must be a layer with sites (or a
BatchNorm), no removed unit may reach the network's output, and every site of a touched
layer must be sliceable (it replaces a parameter, or is shaped like the weight or the units).

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import UnitGates
>>> mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
>>> net = sparsify(mlp, UnitGates(), example_input=torch.zeros(1, 4))
>>> dg, plan = plan_removal(net, {"0": torch.tensor([0, 2])}, {"0": 6, "2": 2}, net.example_input)
>>> [(layer is mlp[0], drop) for layer, drop in plan]
[(True, [1, 3, 4, 5])]
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide, key
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.priors.group_ties import tile_of
from bayesprune.pruning.extract import _plan, dependency_graph
from bayesprune.pruning.keepset import KeepSet
from bayesprune.pruning.unit_indices import WHO

_NORMS = (nn.modules.batchnorm._BatchNorm,)

Plan = list[tuple[nn.Module, list[int]]]


def plan_removal(
    net: BayesianNet,
    wanted: dict[str, Tensor],
    widths: dict[str, int | None],
    example_input: Tensor | None,
) -> tuple[tp.DependencyGraph, Plan]:
    """The dependency graph of ``net.module`` and ``(layer, units to drop)`` per coupled
    component, for keeping ``wanted`` units (current indexing; ``widths``: units per layer
    of ``net.layer_names``). Every unit layer takes part in the coupling rule, so a unit
    shared with a layer not in ``wanted`` is kept."""
    if example_input is None:
        raise ConfigError(
            f"{WHO}: needs an example input to trace the network; pass example_input= "
            "(fit records one in net.example_input)"
        )
    module = net.module
    dg = dependency_graph(module, example_input, WHO)
    keepsets: dict[str, KeepSet] = {}
    for n in net.layer_names:
        if n in wanted:
            keepsets[n] = KeepSet(units=wanted[n], n_units=widths[n])
        elif widths[n] is not None and module.get_submodule(n) in dg.module2node:
            keepsets[n] = KeepSet(units=torch.arange(widths[n]), n_units=widths[n])
    return dg, _plan(module, dg, keepsets, WHO)


def touched_modules(
    net: BayesianNet, dg: tp.DependencyGraph, groups: list[tp.DependencyGroup]
) -> dict[str, nn.Module]:
    """The modules the planned groups slice, by name; refuses removals that would change
    what the network computes beyond the removed units."""
    names = {m: n for n, m in net.module.named_modules()}
    site_layers = set(net.layer_names)
    touched: dict[str, nn.Module] = {}
    for group in groups:
        root = names.get(group.items[0].dep.target.module, "?")
        for item in group.items:
            m = item.dep.target.module
            if not isinstance(m, nn.Module):
                raise ConfigError(
                    f"{WHO}: removing units of layer {root!r} would slice a bare parameter "
                    f"({type(m).__name__}); only modules are supported"
                )
            name = names.get(m)
            out = dg.is_out_channel_pruning_fn(item.dep.handler)
            node = dg.module2node.get(m)
            if out and node is not None and not node.outputs:
                raise ConfigError(
                    f"{WHO}: units of layer {root!r} reach the network's output (through "
                    f"{name or type(m).__name__!r}); removing them would change its shape"
                )
            if name is None:
                continue  # torch-pruning's own op wrappers (reshape, add, ...): no tensors
            if out:
                owns = any(True for _ in m.parameters(recurse=False))
                if owns and name not in site_layers and not isinstance(m, _NORMS):
                    raise ConfigError(
                        f"{WHO}: removing units of layer {root!r} also removes output channels "
                        f"of {name!r} ({type(m).__name__}), which has no sites: the two are "
                        "coupled (e.g. added in a residual sum); put the prior on both"
                    )
            touched[name] = m
    return touched


def site_kinds(net: BayesianNet, guide: Guide, name: str) -> dict[str, str]:
    """How each site of layer ``name`` follows a removal: ``"param"`` (like the module
    parameter it replaces), ``"weight"`` (shaped like the weight), ``"unit"`` (one entry
    per unit), ``"tied"`` (one entry per gate tied across groups, meta ``tile``: see
    :mod:`bayesprune.priors.group_ties`) or ``"fixed"`` (scalar); checked before anything
    is changed."""
    layer = net.module.get_submodule(name)
    wshape = tuple(layer.weight.shape)
    n = wshape[0]
    kinds: dict[str, str] = {}
    for s in net.layer_sites[name]:
        if s.replaces is not None:
            kinds[s.name] = "param"
        elif s.shape == wshape:
            kinds[s.name] = "weight"
        elif s.shape == (n,):
            kinds[s.name] = "unit"
        elif tile_of(s) > 1 and s.shape == (n // tile_of(s),):
            kinds[s.name] = "tied"
        elif math.prod(s.shape) <= 1:
            kinds[s.name] = "fixed"
        else:
            raise ConfigError(
                f"{WHO}: cannot tell how site {s.name!r} of shape {s.shape} follows a removal "
                f"of units of layer {name!r} (weight {wshape}): a site must replace a module "
                "parameter, or be shaped like the weight or like the units"
            )
        for pd in param_dicts(guide):
            p = pd.get(key(s.name))
            if p is not None and tuple(p.shape) != s.shape:
                raise ConfigError(
                    f"{WHO}: the guide's parameter for site {s.name!r} has shape "
                    f"{tuple(p.shape)}, not the site's {s.shape}; cannot slice it"
                )
    return kinds


def param_dicts(guide: Guide) -> list[nn.ParameterDict]:
    """The guide's per-site parameter dicts (keyed by :func:`~bayesprune.guides.base.key`)."""
    return [m for _, m in guide.named_children() if isinstance(m, nn.ParameterDict)]
