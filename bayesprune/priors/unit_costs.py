"""What removing one unit of a layer saves: parameters and MACs, own and downstream.

Removing output unit ``u`` of a layer deletes its weight row (and bias), the matching
channel of a BatchNorm that follows it, and the matching input slice of every consumer
(the next Conv/Linear, including flatten→Linear blocks). torch-pruning's dependency
graph says which slices those are; :func:`bayesprune.metrics.count_flops` gives each
layer's MACs.

>>> import torch, torch.nn as nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
>>> c = unit_costs(net, ["0"], torch.zeros(1, 4))["0"]
>>> int(c["params"][0]), int(c["flops"][0])  # 4 weights + 1 bias + 3 consumer weights; 4 + 3 MACs
(8, 7)

:func:`complexity_prices` turns such costs into the gate priors' prices (unit gates price
units, block gates price blocks: both normalise here).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from bayesprune.blocks import block_spec
from bayesprune.dependency import dependency_graph, frozen
from bayesprune.errors import ConfigError
from bayesprune.heads import is_head_layer
from bayesprune.metrics import count_flops
from bayesprune.priors.head_costs import head_costs

_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)

#: how a gate prior prices its gates: γ each, or γ scaled by what removing the gated part saves
COSTS = ("uniform", "flops", "params", "mixed")


def unit_costs(
    module: nn.Module, layer_names: list[str], example_input: Tensor
) -> dict[str, dict[str, Tensor | float]]:
    """Per gated layer: ``params`` and ``flops`` (MACs) saved by removing each unit, and
    the means over all units of all the given layers (``params_mean``, ``flops_mean``)."""
    macs = {row["name"]: row["macs"] for row in count_flops(module, example_input)["layers"]}
    dg = dependency_graph(module, example_input, who="unit_costs")
    with frozen(dg):
        return _unit_costs(module, dg, layer_names, macs)


def _unit_costs(
    module: nn.Module, dg: tp.DependencyGraph, layer_names: list[str], macs: dict[str, int]
) -> dict[str, dict[str, Tensor | float]]:
    name_of = {m: n for n, m in module.named_modules()}
    out: dict[str, dict[str, Tensor | float]] = {}
    for name in layer_names:
        layer = module.get_submodule(name)
        if is_head_layer(layer):  # a head's cost is its own (priors/head_costs.py)
            out[name] = head_costs(layer, macs.get(name, 0))
            continue
        n_units = int(layer.weight.shape[0])
        group = dg.get_pruning_group(
            layer, dg.get_pruner_of_module(layer).prune_out_channels, idxs=[0]
        )
        params = 0.0
        flops = 0.0
        for item in group.items:
            m = item.dep.target.module
            if not isinstance(m, _WEIGHTED):
                continue
            k = len(item.idxs)
            mname = name_of.get(m, "")
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                size = m.weight.shape[0] if m.weight is not None else m.num_features
                own = sum(p.numel() for p in m.parameters(recurse=False))
            else:
                size = m.in_features if isinstance(m, nn.Linear) else m.in_channels
                own = m.weight.numel()
            params += own * k / size
            flops += macs.get(mname, 0) * k / size
        out[name] = {
            "params": torch.full((n_units,), params),
            "flops": torch.full((n_units,), flops),
        }
    for kind in ("params", "flops"):
        mean = mean_cost(out, kind)
        for c in out.values():
            c[f"{kind}_mean"] = mean
    return out


def block_branch_costs(
    module: nn.Module, block_names: list[str], example_input: Tensor
) -> dict[str, dict[str, Tensor]]:
    """Per residual block: ``flops`` (MACs) and ``params`` of its residual branch -- what
    turning the block into its shortcut saves -- as one-element float64 tensors (a block
    is one unit).

    >>> from bayesprune.zoo import build
    >>> net = build("resnet20", width=0.25)
    >>> c = block_branch_costs(net, ["layer1.0"], torch.zeros(1, 3, 32, 32))["layer1.0"]
    >>> int(c["params"]), int(c["flops"])  # two 4->4 3x3 convs, two BatchNorms; 32x32
    (304, 303104)
    """
    macs = {row["name"]: row["macs"] for row in count_flops(module, example_input)["layers"]}
    costs: dict[str, dict[str, Tensor]] = {}
    for name in block_names:
        block = module.get_submodule(name)
        spec = block_spec(block)
        short = f"{spec.shortcut}." if spec is not None else None
        branch = [
            (n, m)
            for n, m in block.named_modules()
            if n and not (short and (n + ".").startswith(short))
        ]
        flops = sum(macs.get(f"{name}.{n}" if name else n, 0) for n, _ in branch)
        params = sum(p.numel() for _, m in branch for p in m.parameters(recurse=False))
        # float64 keeps the prices as exact as Python floats
        costs[name] = {
            "flops": torch.tensor([flops], dtype=torch.float64),
            "params": torch.tensor([params], dtype=torch.float64),
        }
    return costs


def mean_cost(costs: Mapping[str, Mapping[str, Tensor | float]], kind: str) -> float:
    """The mean of ``kind`` over every unit of every entry of ``costs``; 1.0 where that
    mean is not positive (no unit saves anything of that kind).

    >>> mean_cost({"a": {"flops": torch.tensor([1.0, 2.0])}, "b": {"flops": torch.tensor([6.0])}},
    ...           "flops")
    3.0
    """
    values = torch.cat([torch.as_tensor(c[kind]).reshape(-1) for c in costs.values()])
    mean = float(values.mean()) if values.numel() else 1.0
    return mean if mean > 0 else 1.0


def complexity_prices(
    gamma: float, cost: str, costs: Mapping[str, Mapping[str, Tensor | float]]
) -> dict[str, Tensor]:
    """Prices γ per unit from what removing each unit saves, normalised so that the mean
    price over all units of all entries is ``gamma`` (unit and block gates both price here).

    :param cost: ``"flops"``, ``"params"`` or ``"mixed"`` (the mean of the two ratios).
    :param costs: per gated layer (or block), tensors ``"flops"`` and ``"params"`` with one
        value per unit (a block is one unit).

    >>> costs = {"a": {"flops": torch.tensor([1.0]), "params": torch.tensor([4.0])},
    ...          "b": {"flops": torch.tensor([3.0]), "params": torch.tensor([4.0])}}
    >>> {n: p.tolist() for n, p in complexity_prices(10.0, "mixed", costs).items()}
    {'a': [7.5], 'b': [12.5]}
    """
    if cost not in COSTS[1:]:
        raise ConfigError(f"complexity_prices: cost must be one of {COSTS[1:]}, got {cost!r}")
    ratio: dict[str, dict[str, Tensor]] = {}
    for kind in ("flops", "params"):
        values = {n: torch.as_tensor(c[kind]) for n, c in costs.items()}
        mean = mean_cost(costs, kind)
        saves = any(bool((v > 0).any()) for v in values.values())
        # where no unit saves anything of this kind, every unit is priced alike (γ)
        ratio[kind] = {n: v / mean if saves else torch.ones_like(v) for n, v in values.items()}
    if cost == "mixed":
        per = {n: 0.5 * (ratio["flops"][n] + ratio["params"][n]) for n in costs}
    else:
        per = ratio[cost]
    return {n: gamma * v for n, v in per.items()}
