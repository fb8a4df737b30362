"""What every pruning space shares: its layers, its cost model, its constraints.

A *pruning space* (He & Xiao, "Network Pruning Spaces", 2023) is a population of
structured subnetworks of one network: which units of each chosen layer are kept,
optionally restricted to a FLOPs / parameter / FLOPs-per-parameter range. A space
samples subnetworks as ``{layer name: KeepSet(units=...)}``, the same hand-off
:func:`bayesprune.collapse` makes, so :func:`bayesprune.extract` and
:func:`bayesprune.pruning.masked_copy` act on them unchanged. Two spaces:
:class:`~bayesprune.spaces.PruningSpace` (uniform over per-layer widths) and
:class:`~bayesprune.spaces.PosteriorSpace` (each unit's gate drawn from a fitted
posterior).

>>> import numpy as np, torch, torch.nn as nn
>>> space = Space(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)),
...               example_input=torch.zeros(1, 4), flops=(0.4, 0.6))
>>> space.layers, space.accepts(np.array([[4], [8]])).tolist()
(('0',), [True, False])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch.nn as nn
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.keepset import KeepSet
from bayesprune.spaces.constraints import Constraints
from bayesprune.spaces.costs import CostModel

_PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)


def plain(net: BayesianNet | nn.Module) -> nn.Module:
    """The ordinary module inside ``net`` (``net`` itself if it is one)."""
    return net.module if isinstance(net, BayesianNet) else net


def default_layers(net: BayesianNet | nn.Module) -> list[str]:
    """A BayesianNet's prior layers; for a plain module every Conv/Linear but the last
    (the output layer: pruning it would remove classes)."""
    if isinstance(net, BayesianNet):
        return list(net.layer_names)
    names = [n for n, m in net.named_modules() if isinstance(m, _PRUNABLE)]
    return names[:-1] if len(names) > 1 else names


def resolve_input(owner: str, net: BayesianNet | nn.Module, example_input: Tensor | None) -> Tensor:
    """``example_input``, else the one a fitted BayesianNet recorded, else the zoo
    network's ``example_input(1)``; one example."""
    if example_input is None and isinstance(net, BayesianNet):
        example_input = net.example_input
    module = plain(net)
    if example_input is None and callable(getattr(module, "example_input", None)):
        example_input = module.example_input(1)
    if example_input is None:
        raise ConfigError(
            f"{owner}: example_input is needed to trace the network and count its FLOPs"
        )
    return example_input[:1]


def fitted_values(
    owner: str, net: BayesianNet | nn.Module, guide: Guide | None
) -> dict[str, dict[str, Tensor]]:
    """``{layer: {parameter: point estimate}}`` for every parameter of ``net`` that a
    prior site replaces (what :func:`bayesprune.collapse` puts in ``KeepSet.values``);
    empty for a plain module or a net whose prior replaces nothing."""
    if not isinstance(net, BayesianNet) or not net.replacing:
        return {}
    if guide is None:
        raise ConfigError(
            f"{owner}: guide is needed: the fitted weights of a BayesianNet's prior layers "
            "are the guide's point estimate"
        )
    point = guide.point()
    out: dict[str, dict[str, Tensor]] = {}
    for layer, sites in net.layer_sites.items():
        for s in sites:
            if s.replaces is not None:
                pname = s.replaces.removeprefix(f"{layer}." if layer else "")
                out.setdefault(layer, {})[pname] = point[s.name].detach().clone()
    return out


class Space:
    """Layers, costs and constraints of a pruning space (sampling is the subclasses').

    :param net: a :class:`~bayesprune.BayesianNet` or a plain ``nn.Module``; subnetworks
        inherit its current weights (a fitted BayesianNet's ``.module`` holds the
        posterior point estimate).
    :param layers: names of the Conv/Linear layers whose units are pruned (default:
        :func:`default_layers`).
    :param flops: ``(lo, hi)``: FLOPs of the subnetwork as a fraction of the dense network's.
    :param params: ``(lo, hi)``: parameters as a fraction of the dense network's.
    :param ratio: ``(lo, hi)``: FLOPs per parameter (absolute).
    :param example_input: an input batch to trace the network (see :func:`resolve_input`).
    :param guide: for a :class:`~bayesprune.BayesianNet` whose prior replaces weights: its
        fitted guide, whose point estimate every subnetwork inherits (``KeepSet.values``).
    :raises ValueError: for a bad constraint or layer, naming the argument.
    """

    owner = "Space"

    def __init__(
        self,
        net: BayesianNet | nn.Module,
        layers: Sequence[str] | None = None,
        *,
        flops: tuple[float, float] | None = None,
        params: tuple[float, float] | None = None,
        ratio: tuple[float, float] | None = None,
        example_input: Tensor | None = None,
        guide: Guide | None = None,
    ) -> None:
        self.net = net
        self.module = plain(net)
        self.constraints = Constraints.of(self.owner, flops, params, ratio)
        names = default_layers(net) if layers is None else list(layers)
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"{self.owner}: layers must name distinct layers, got {names!r}")
        self.example_input = resolve_input(self.owner, net, example_input)
        try:
            self.cost_model = CostModel(self.module, names, self.example_input)
        except ValueError as e:
            raise ConfigError(f"{self.owner}: {str(e).removeprefix('CostModel: ')}") from None
        self.layers: tuple[str, ...] = self.cost_model.layers
        self.n_units: np.ndarray = self.cost_model.n_units
        #: point estimates of the replaced parameters, per layer (see :func:`fitted_values`)
        self.values = fitted_values(self.owner, net, guide)

    def weight(self, layer: str) -> Tensor:
        """The weight ``layer`` has in the subnetworks (the fitted one, see ``values``)."""
        return self.values.get(layer, {}).get("weight", self.module.get_submodule(layer).weight)

    def keepsets(self, units: dict[str, Tensor]) -> dict[str, KeepSet]:
        """Keep-sets of one subnetwork from its kept unit indices per pruned layer, the
        fitted values written into every layer that has them."""
        out = {
            name: KeepSet(units=units[name], n_units=n, values=dict(self.values.get(name, {})))
            for name, n in zip(self.layers, self.n_units.tolist(), strict=True)
        }
        for name, vals in self.values.items():
            if name not in out:
                out[name] = KeepSet(values=dict(vals))
        return out

    def costs(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """``flops`` (per example), ``params``, their fractions of dense (``flops_frac``,
        ``params_frac``) and ``ratio`` (FLOPs per parameter) of each row of unit counts."""
        cm = self.cost_model
        flops, params = cm.flops(counts), cm.params(counts)
        return {
            "flops": flops,
            "params": params,
            "flops_frac": flops / cm.dense_flops,
            "params_frac": params / cm.dense_params,
            "ratio": flops / params,
        }

    def accepts(self, counts: np.ndarray) -> np.ndarray:
        """Which rows of unit counts (shape ``(N, L)``) meet the constraints."""
        c = self.costs(counts)
        return self.constraints.accept(c["flops_frac"], c["params_frac"], c["ratio"])

    def check_reachable(self, low: np.ndarray, high: np.ndarray) -> None:
        """Raise if a ``flops``/``params`` range misses every subnetwork between the unit
        counts ``low`` and ``high`` (costs grow with every count, so these bound them)."""
        c = self.costs(np.stack([low, high]))
        lo = (float(c["flops_frac"][0]), float(c["params_frac"][0]))
        hi = (float(c["flops_frac"][1]), float(c["params_frac"][1]))
        name = self.constraints.disjoint(lo, hi)
        if name is not None:
            i = ("flops", "params").index(name)
            raise ConfigError(
                f"{self.owner}: {name}={self.constraints.given[name]} leaves no subnetwork: "
                f"this space's subnetworks cost {lo[i]:.4g} to {hi[i]:.4g} of the dense {name}"
            )

    def no_subnetwork(self, tried: str) -> ConfigError:
        """The error for constraints that no sampled/enumerated subnetwork met."""
        given = ", ".join(f"{k}={v}" for k, v in self.constraints.given.items()) or "none"
        return ConfigError(
            f"{self.owner}: no subnetwork meets the constraints ({given}) in {tried}; "
            "widen flops/params/ratio"
        )
