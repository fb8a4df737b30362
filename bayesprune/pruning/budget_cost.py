"""What a network would cost after a cut: the size a :class:`~bayesprune.budget.Budget`
measures, as a function of the units (or weights, or blocks) kept.

:class:`CostModel` is built once per fit (one trace of the network) and then evaluates a
candidate cut without building it:

- ``weights``: kept weights of the layers carrying the prior over all of their weights;
- ``units``: kept units (blocks under block gates) over all of them as built;
- ``params`` / ``flops`` with unit gates: every Conv/Linear contributes
  ``value · f_out · f_in``, with ``f_out`` (``f_in``) the kept fraction of the gated layer
  whose removal slices its output (input) channels -- torch-pruning's dependency graph
  says which -- and 1 where no gated layer does; biases, BatchNorm and the like scale with
  ``f_out`` alone; everything else is a constant. This is exact for networks whose
  removals only slice Conv/Linear/BatchNorm tensors (checked against the extracted
  network's counts in the tests), and ``collapse(budget=...)`` checks it on the extracted
  network anyway;
- an attention layer gated per head counts as a layer whose units are its heads: its
  in-projection, its MACs and its out-projection's weight (by its input columns) scale
  with the kept fraction of heads, the out-projection's bias is a constant;
- ``params`` / ``flops`` with block gates: the dense network's count less the residual
  branch of every removed block.

Fractions are of the network *as built*: after live removal (``fit(remove_dead=...)``)
the dense reference still counts the removed units.

Counts of kept units are given per *scored element* of each layer: its units, or, for a
layer whose gates are tied across the groups of a grouped conv, its gates -- each stands
for ``tile`` units (:attr:`CostModel.tiles`, :mod:`bayesprune.priors.group_ties`); the
``units`` measure counts ``tile`` units per kept gate.

With expected keep fractions (``E[f] = mean θ`` of each gated layer) the bilinear form is
the exact expectation under independent gates, which is what a budgeted fit steers.

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.budget import Budget
>>> from bayesprune.priors import UnitGates
>>> module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
>>> net = sparsify(module, UnitGates(cost="flops"), example_input=torch.zeros(1, 4))
>>> model = CostModel(net, Budget(flops=0.5))
>>> model.dense, model.count({"0": 4}), model.size({"0": 2})  # 4*8 + 8*3 MACs dense
(56.0, 28.0, 0.25)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor

from bayesprune.budget import Budget
from bayesprune.dependency import dependency_graph
from bayesprune.errors import ConfigError
from bayesprune.heads import is_head_layer
from bayesprune.metrics import count_flops, count_parameters
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.unit_origin import unit_origin
from bayesprune.priors.group_ties import layer_tile
from bayesprune.priors.unit_costs import block_branch_costs


@dataclass(frozen=True)
class Term:
    """One module's share of a count: ``value · f(out) · f(inp)`` (``None``: factor 1)."""

    value: float
    out: str | None = None
    inp: str | None = None


def is_block_net(net: BayesianNet) -> bool:
    """Whether the net's gated layers are whole blocks (block gates)."""
    return any(s.meta.get("block") for s in net.gates)


def unit_layers(net: BayesianNet) -> dict[str, int]:
    """Units of each gated or per-unit layer now (output channels; 1 for a block; gates of
    a layer with tied gates)."""
    out: dict[str, int] = {}
    for name, sites in net.layer_sites.items():
        gate = next((s for s in sites if s.role == "gate"), None)
        if gate is not None:
            out[name] = int(gate.shape[0])
        else:
            out[name] = int(net.module.get_submodule(name).weight.shape[0])
    return out


def check_budget(net: BayesianNet, budget: Budget) -> None:
    """Refuse a budget the net's prior cannot be steered to, naming the field.

    :raises ConfigError: for a measure the prior cannot count (e.g. ``flops`` for gates
        with uniform prices, or any budget for a prior without a strength to adapt), or a
        per-layer units budget naming a layer that carries no units.
    """
    if not isinstance(budget, Budget):
        raise ConfigError(f"budget must be a bayesprune.Budget, got {type(budget).__name__}")
    prior = net.prior
    allowed = prior.budget_metrics()
    if budget.metric not in allowed:
        if not allowed:
            why = "it has no strength a fit can adapt to a budget"
        else:
            why = f"it can be held to {', '.join(allowed)}"
            if budget.metric in ("flops", "params") and hasattr(prior, "cost"):
                why += (
                    f"; its prices (cost={prior.cost!r}) do not count {budget.metric}: use "
                    f"cost={'flops' if budget.metric == 'flops' else 'params'!r} or 'mixed'"
                )
        raise ConfigError(f"Budget: {budget.metric} is not a measure for {prior!r}: {why}")
    per = budget.per_layer
    if per is not None:
        unknown = sorted(set(per) - set(net.layer_sites))
        if unknown:
            raise ConfigError(
                f"Budget: units names layer(s) {unknown} that carry no units; "
                f"layers: {list(net.layer_sites)}"
            )


class CostModel:
    """The size of ``net`` cut to given keep counts, as a fraction of it as built.

    :param net: the model (its ``example_input`` is needed for ``params`` and ``flops``).
    :param budget: what to count (its fraction is not used here).
    """

    def __init__(self, net: BayesianNet, budget: Budget) -> None:
        check_budget(net, budget)
        self.metric = budget.metric
        self.blocks = is_block_net(net)
        self.units_now = unit_layers(net) if self.metric != "weights" else {}
        #: units per scored element of each layer (> 1: gates tied across groups)
        self.tiles = {n: layer_tile(net.layer_sites[n]) for n in self.units_now}
        rec = unit_origin(net)
        self.units_built = {
            n: (rec.n_units.get(n, u * self.tiles[n]) // self.tiles[n] if rec is not None else u)
            for n, u in self.units_now.items()
        }
        self.terms: list[Term] = []
        self.const = 0.0
        if self.metric == "weights":
            self.total_weights = float(
                sum(s.numel for s in net.sites if s.role == "weight" and s.layer in net.layer_sites)
            )
        elif self.metric in ("params", "flops"):
            x = net.example_input
            if x is None:
                raise ConfigError(
                    f"Budget: counting {self.metric} needs an example input: pass "
                    "sparsify(..., example_input=x) or fit the net first"
                )
            if self.blocks:
                self._block_terms(net, x)
            else:
                self._unit_terms(net, x)
        self.dense = self._count({n: float(u) for n, u in self.units_built.items()}, built=True)

    # --- building -----------------------------------------------------------------------
    def _block_terms(self, net: BayesianNet, x: Tensor) -> None:
        module = net.module
        if self.metric == "flops":
            self.const = float(count_flops(module, x[:1])["macs"])
        else:
            self.const = float(count_parameters(module)["params"])
        branch = block_branch_costs(module, list(net.layer_sites), x[:1])
        for name, c in branch.items():
            value = float(c[self.metric])
            self.const -= value
            self.terms.append(Term(value, out=name))

    def _unit_terms(self, net: BayesianNet, x: Tensor) -> None:
        module = net.module
        out_of, in_of = self._controllers(module, list(net.layer_sites), x[:1])
        macs = {row["name"]: float(row["macs"]) for row in count_flops(module, x[:1])["layers"]}
        total = (
            float(count_flops(module, x[:1])["macs"])
            if self.metric == "flops"
            else float(count_parameters(module)["params"])
        )
        counted = 0.0
        for name, m in module.named_modules():
            out, inp = out_of.get(name), in_of.get(name)
            conv_like = isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
            if conv_like and getattr(m, "groups", 1) > 1 and out is not None and out == inp:
                inp = None  # depthwise / grouped: its input channels are its output channels
            if self.metric == "flops":
                value = macs.get(name, 0.0)
                if value:
                    self.terms.append(Term(value, out, inp if conv_like else None))
                    counted += value
                continue
            for pname, p in m.named_parameters(recurse=False):
                both = conv_like and pname == "weight"
                self.terms.append(Term(float(p.numel()), out, inp if both else None))
                counted += p.numel()
        self.const = total - counted

    @staticmethod
    def _controllers(
        module: nn.Module, layers: list[str], x: Tensor
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Which gated layer slices each module's output and input channels."""
        dg = dependency_graph(module, x, who="Budget")
        name_of = {m: n for n, m in module.named_modules()}
        out_of: dict[str, str] = {layer: layer for layer in layers}
        in_of: dict[str, str] = {}
        for layer in layers:
            target = module.get_submodule(layer)
            if is_head_layer(target):  # heads: its own tensors, its out-projection's columns
                in_of[f"{layer}.out_proj"] = layer
                continue
            group = dg.get_pruning_group(
                target, dg.get_pruner_of_module(target).prune_out_channels, idxs=[0]
            )
            for item in group.items:
                name = name_of.get(item.dep.target.module)
                if name is None:
                    continue
                side = out_of if dg.is_out_channel_pruning_fn(item.dep.handler) else in_of
                side.setdefault(name, layer)
        return out_of, in_of

    # --- evaluating ---------------------------------------------------------------------
    def _count(self, kept: Mapping[str, float], *, built: bool = False) -> float:
        if self.metric == "weights":
            return self.total_weights if built else float(kept["*"])
        if self.metric == "units":
            return float(sum(kept.get(n, u) * self.tiles[n] for n, u in self.units_now.items()))
        frac = {n: kept.get(n, float(u)) / u for n, u in self.units_now.items()}
        total = self.const
        for t in self.terms:
            total += (
                t.value
                * (frac[t.out] if t.out is not None else 1.0)
                * (frac[t.inp] if t.inp is not None else 1.0)
            )
        return total

    def count(self, kept: Mapping[str, float]) -> float:
        """The absolute count with ``kept`` units per layer (current indexing, so after live
        removal at most the units left; expected counts allowed; layers not named keep all
        their current units; gates of a layer with tied gates). For ``weights``, ``kept`` is
        ``{"*": weights kept}``."""
        return self._count(kept)

    def size(self, kept: Mapping[str, float]) -> float:
        """:meth:`count` as a fraction of the network as built (:attr:`dense`)."""
        return self._count(kept) / self.dense

    def smallest(self, min_units: int = 1) -> float:
        """The smallest size a cut can leave: ``min_units`` per unit layer (blocks may all
        go; weights: one weight; gates enough for ``min_units`` units where tied), as a
        fraction of the network as built."""
        if self.metric == "weights":
            return 1.0 / self.total_weights
        floors = self.floors(min_units)
        return self.size({n: float(floors[n]) for n in self.units_now})

    def floors(self, min_units: int = 1) -> dict[str, int]:
        """The fewest scored elements a cut leaves in each layer: ``min_units`` units
        (``ceil(min_units / tile)`` tied gates), at most the layer's own; 0 for blocks.

        >>> from bayesprune import sparsify
        >>> from bayesprune.priors import UnitGates
        >>> net = sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), UnitGates())
        >>> CostModel(net, Budget(units=0.5)).floors(3)
        {'0': 3}
        """
        if self.blocks:
            return {n: 0 for n in self.units_now}
        return {n: min(-(-min_units // self.tiles[n]), u) for n, u in self.units_now.items()}

    def layer_sizes(self, kept: Mapping[str, float]) -> dict[str, float]:
        """Kept units of each layer over its units as built (per-layer units budgets)."""
        return {n: kept.get(n, float(u)) / self.units_built[n] for n, u in self.units_now.items()}
