"""Exact FLOPs and parameters of a subnetwork from its per-layer unit counts, vectorised.

A pruning space is sampled by proposing per-layer unit counts and keeping those whose
cost lies in a range, often hundreds of thousands of proposals: extracting each one to
count it would take minutes. :class:`CostModel` reads the network once instead --
:func:`bayesprune.metrics.count_flops` per layer and torch-pruning's dependency graph for
which slices removing a unit deletes -- and then prices any array of count vectors.

With ``k_p`` of ``n_p`` units kept in each pruned layer ``p``, every Conv/Linear ``m``
loses the fraction ``1 - k_p/n_p`` of its output channels if ``p`` is ``m`` itself, and
``(n_p - k_p)·mult_p / in(m)`` of its input channels for every pruned producer ``p``
feeding it (``mult_p`` input slices per unit: one for a Conv, the spatial size for a
flatten→Linear). Its MACs and weight scale by both fractions, its bias by the first;
a BatchNorm coupled to ``p`` scales by ``k_p/n_p``. That is exactly what
:func:`bayesprune.extract` removes (tested against ``count_flops`` / ``count_parameters``
of extracted networks). Not modelled (``ValueError``): pruned layers coupled to each
other (residual sums), grouped and transposed convolutions.

>>> import numpy as np, torch, torch.nn as nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
>>> cm = CostModel(net, ["0"], torch.zeros(1, 4))
>>> cm.dense_macs, cm.macs(np.array([[8], [4]])).tolist()  # 4*8 + 8*3; half the units
(56, [56.0, 28.0])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn
from torch import Tensor

from bayesprune.dependency import dependency_graph, frozen
from bayesprune.errors import ConfigError
from bayesprune.metrics import count_flops, count_parameters

_BN = nn.modules.batchnorm._BatchNorm
_WEIGHTED = (nn.Linear, nn.modules.conv._ConvNd, _BN)


@dataclass
class _Term:
    """One weighted module: its dense MACs and parameters and which pruned layers cut it."""

    macs: float
    weight: float  # parameters scaled by out and in fractions
    bias: float  # parameters scaled by the out fraction only
    out: int = -1  # index of the pruned layer whose units are this module's outputs
    ins: list[tuple[int, float]] = field(default_factory=list)  # (layer, slices per unit / in)


def _in_size(m: nn.Module) -> int:
    return int(m.in_features if isinstance(m, nn.Linear) else m.in_channels)


class CostModel:
    """MACs and parameters of the subnetworks of ``module`` that keep ``counts[i]`` units
    of ``layers[i]``. See the module docstring.

    :param module: a plain network (for a :class:`~bayesprune.BayesianNet`, its ``.module``).
    :param layers: names of the Conv/Linear layers whose units are pruned.
    :param example_input: one input batch, to trace the network and count MACs.
    :raises ValueError: for a missing or unsupported layer, or pruned layers coupled to
        each other.
    """

    def __init__(self, module: nn.Module, layers: list[str], example_input: Tensor) -> None:
        names = dict(module.named_modules())
        for name in layers:
            layer = names.get(name)
            if not isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
                got = "missing" if layer is None else type(layer).__name__
                raise ConfigError(f"CostModel: layers: {name!r} is not a Conv/Linear ({got})")
            if (
                isinstance(layer, nn.modules.conv._ConvTransposeNd)
                or getattr(layer, "groups", 1) != 1
            ):
                raise ConfigError(
                    f"CostModel: layers: {name!r}: grouped/transposed convs are not modelled"
                )
        self.layers: tuple[str, ...] = tuple(layers)
        self.n_units = np.array([int(names[n].weight.shape[0]) for n in layers], dtype=np.int64)
        flops = count_flops(module, example_input)
        params = count_parameters(module)
        self.dense_macs = flops["macs"]
        self.dense_params = params["params"]
        macs = {row["name"]: float(row["macs"]) for row in flops["layers"]}
        name_of = {m: n for n, m in names.items()}
        terms: dict[str, _Term] = {}
        for row in params["layers"]:
            m = names[row["name"]]
            if isinstance(m, _WEIGHTED):
                w = m.weight.numel() if m.weight is not None and not isinstance(m, _BN) else 0
                terms[row["name"]] = _Term(macs.get(row["name"], 0.0), w, row["params"] - w)
        self._fixed = float(
            sum(r["params"] for r in params["layers"] if r["name"] not in terms)
        )  # parameters of modules no unit removal touches
        dg = dependency_graph(module, example_input, who="PruningSpace")
        with frozen(dg):  # index mappings once, not once per layer
            for i, name in enumerate(layers):
                layer = names[name]
                group = dg.get_pruning_group(
                    layer, dg.get_pruner_of_module(layer).prune_out_channels, idxs=[0]
                )
                for item in group.items:
                    m = item.dep.target.module
                    mname = name_of.get(m)
                    if mname not in terms:
                        continue  # parameter-free ops
                    t = terms[mname]
                    if isinstance(m, _BN) or dg.is_out_channel_pruning_fn(item.dep.handler):
                        if t.out not in (-1, i):
                            raise ConfigError(
                                f"CostModel: layers: {layers[t.out]!r} and {name!r} are coupled "
                                f"(both cut {mname!r}'s outputs); pruned layers must be independent"
                            )
                        t.out = i
                    elif all(j != i for j, _ in t.ins):
                        if getattr(m, "groups", 1) != 1:
                            raise ConfigError(
                                f"CostModel: layers: {name!r} feeds the grouped conv {mname!r}"
                            )
                        t.ins.append((i, len(item.idxs) / _in_size(m)))
        self._terms = list(terms.values())

    @property
    def dense_flops(self) -> int:
        """``2 · dense_macs``, as :func:`bayesprune.metrics.count_flops` reports ``flops``."""
        return 2 * self.dense_macs

    def _check(self, counts: np.ndarray) -> np.ndarray:
        c = np.asarray(counts)
        if c.ndim != 2 or c.shape[1] != len(self.layers):
            raise ConfigError(
                f"CostModel: counts must have shape (N, {len(self.layers)}), got {c.shape}"
            )
        return c.astype(np.float64)

    def _scaled(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self._check(counts)
        frac = c / self.n_units
        macs = np.zeros(c.shape[0])
        params = np.full(c.shape[0], self._fixed)
        for t in self._terms:
            f_out = frac[:, t.out] if t.out >= 0 else 1.0
            f_in = 1.0 - sum((self.n_units[j] - c[:, j]) * share for j, share in t.ins)
            macs = macs + t.macs * f_out * f_in
            params = params + t.weight * f_out * f_in + t.bias * f_out
        return macs, params

    def macs(self, counts: np.ndarray) -> np.ndarray:
        """Multiply-accumulates per example of each row of ``counts`` (shape ``(N, L)``)."""
        return self._scaled(counts)[0]

    def flops(self, counts: np.ndarray) -> np.ndarray:
        """``2 · macs`` per example of each row of ``counts``."""
        return 2.0 * self._scaled(counts)[0]

    def params(self, counts: np.ndarray) -> np.ndarray:
        """Stored parameters of each row of ``counts``."""
        return self._scaled(counts)[1]
