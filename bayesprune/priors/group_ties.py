"""Gates tied across the groups of a grouped convolution, so the posterior stays balanced.

A grouped convolution (``groups = G > 1``, not depthwise) can only be made smaller in ways
that keep its groups equal (:func:`bayesprune.extract` refuses anything else): its *input*
channels must lose the same in-group positions from every group, its *output* channels
the same number of units from every group. The units of a gated layer that *are* such
channels -- read by a grouped conv, or a grouped conv's own outputs (directly, through a
BatchNorm, or coupled to them by a residual sum or an elementwise product) -- are therefore
tied: with ``period`` the channels per group, unit ``c`` uses gate ``c % period``. One gate
per in-group position; closing gate ``p`` removes units ``p, p + period, p + 2·period, ...``
-- position ``p`` of every group on the input side, one unit of every group on the output
side. With several such constraints on one layer the period is the gcd of their channels
per group (a removal periodic in the gcd is periodic in each of them).

Each tied layer has ``tile = n_units // period`` units per gate. The tile is what
:class:`~bayesprune.priors.UnitGates` records (site meta ``("tile", tile)``): it survives a
balanced removal (``period`` shrinks, ``tile`` stays), so the gate site of a layer cut down
during training is ``(n_units_now // tile,)``.

>>> import torch, torch.nn as nn
>>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=4),
...                     nn.ReLU(), nn.Conv2d(8, 2, 1))
>>> group_tiles(net, ["0", "2"], torch.zeros(1, 3, 6, 6))  # 2 channels per group
{'0': 4, '2': 4}
>>> tied_units(torch.tensor([1]), period=2, tile=4).tolist()  # gate 1: position 1 of each group
[1, 3, 5, 7]
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from bayesprune.errors import UnsupportedError


def is_grouped(m: nn.Module) -> bool:
    """Whether ``m`` is a grouped convolution whose groups must stay balanced: ``groups >
    1`` and not depthwise (``groups == in == out``, whose channels go in and out together).

    >>> is_grouped(nn.Conv2d(8, 8, 3, groups=4)), is_grouped(nn.Conv2d(8, 8, 3, groups=8))
    (True, False)
    """
    return (
        isinstance(m, nn.modules.conv._ConvNd)
        and m.groups > 1
        and not (m.groups == m.in_channels == m.out_channels)
    )


def has_grouped(module: nn.Module) -> bool:
    """Whether ``module`` contains a grouped convolution (:func:`is_grouped`).

    >>> has_grouped(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, groups=2)))
    True
    """
    return any(is_grouped(m) for m in module.modules())


def group_tiles(module: nn.Module, layer_names: list[str], example_input: Any) -> dict[str, int]:
    """``{layer: tile}`` for every layer of ``layer_names`` whose output units must be removed
    group-balanced (see the module docstring); layers without such a constraint are not
    listed. torch-pruning's dependency graph, traced once on ``example_input`` (eval mode,
    the module's mode is restored), says which channels are coupled.

    :raises UnsupportedError: naming the layer and the convolution, when a layer's units are
        only part of a grouped conv's channels (a concatenation or split in between) or are
        channels of a grouped transposed conv: no tying keeps those groups balanced; leave
        the layer out of the prior (``sparsify(..., layers=...)``).
    """
    if not has_grouped(module):
        return {}
    dg = _graph(module, example_input)
    name_of = {m: n for n, m in module.named_modules()}
    tiles: dict[str, int] = {}
    for name in layer_names:
        layer = module.get_submodule(name)
        if not isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            continue  # e.g. attention layers, gated per head
        pruner = dg.get_pruner_of_module(layer) if layer in dg.module2node else None
        n = dg.get_out_channels(layer) if pruner is not None else None
        if not n:
            continue
        group = dg.get_pruning_group(layer, pruner.prune_out_channels, idxs=list(range(n)))
        period = 0
        for item in group.items:
            m = item.dep.target.module
            if not is_grouped(m):
                continue
            out = dg.is_out_channel_pruning_fn(item.dep.handler)
            size = m.out_channels if out else m.in_channels
            idxs = [int(i) for i in item.idxs]
            roots = [int(i) for i in item.root_idxs]
            side = "output" if out else "input"
            conv = name_of.get(m, type(m).__name__)
            if m.transposed or idxs != roots or size != n or sorted(idxs) != list(range(n)):
                why = (
                    "a transposed conv"
                    if m.transposed
                    else f"its {n} units are not exactly the conv's {size} {side} channels"
                )
                raise UnsupportedError(
                    f"UnitGates: the units of layer {name!r} are {side} channels of the grouped "
                    f"convolution {conv!r} (groups={m.groups}), and {why}: no tying of its "
                    "gates keeps the groups balanced; leave the layer out of the prior "
                    "(sparsify(..., layers=...))"
                )
            period = math.gcd(period, size // m.groups)
        if period and n // period > 1:
            tiles[name] = n // period
    return tiles


def tied_units(gates: Tensor, period: int, tile: int) -> Tensor:
    """The units (sorted) of the given gate positions of a tied layer with ``period`` gates
    and ``tile`` units per gate: ``p + j·period`` for every gate ``p`` and ``j < tile``."""
    g = torch.as_tensor(gates, dtype=torch.long).flatten()
    return torch.sort((g[None, :] + period * torch.arange(tile)[:, None]).flatten()).values


def tile_of(site: Any) -> int:
    """Units per gate of a gate site (1 unless tied).

    >>> from bayesprune.sites import Site
    >>> tile_of(Site("c.gate", "c", "gate", (2,), info=(("tile", 4),)))
    4
    """
    return int(site.meta.get("tile", 1))


def layer_tile(sites: list[Any]) -> int:
    """Units per gate of a layer, from its sites (1 without a gate site, or untied).

    >>> from bayesprune.sites import Site
    >>> layer_tile([Site("c.weight", "c", "weight", (8, 3)), Site("c.gate", "c", "gate", (8,))])
    1
    """
    gate = next((s for s in sites if s.role == "gate"), None)
    return 1 if gate is None else tile_of(gate)


def _graph(module: nn.Module, example_input: Any) -> tp.DependencyGraph:
    was = module.training
    module.eval()
    try:  # torch-pruning traces autograd: also when asked under inference_mode
        with torch.inference_mode(False), torch.enable_grad():
            x = example_input[:1].clone() if isinstance(example_input, Tensor) else example_input
            return tp.DependencyGraph().build_dependency(module, example_inputs=x, verbose=False)
    finally:
        module.train(was)
