"""The uniform pruning space: every per-layer width in a grid, uniformly, within a cost range.

A subnetwork is a vector of unit counts, one per pruned layer, each from that layer's
*choices*: the counts ``round(f · n)`` for every fraction ``f`` of a ``widths`` grid, or
(``widths=None``) every count from 1 to ``n``; either way only those whose fraction is in
``width_range``. :meth:`PruningSpace.sample` draws count vectors independently and
**uniformly from those meeting the constraints** (duplicates possible, as in any i.i.d.
sample): exactly, by enumerating the whole product of choices when it has at most
``exact_limit`` elements and drawing from the feasible ones, or else by rejection from
the uniform distribution over the product (also exact, only slower). Which units a
count keeps: ``units="l1"`` (largest weight-row L1 norm) or ``"random"``
(:mod:`bayesprune.spaces.units`).

>>> import torch, torch.nn as nn
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
>>> space = PruningSpace(net, widths=[0.25, 0.5, 1.0], flops=(0.0, 0.5),
...                      example_input=torch.zeros(1, 4))
>>> space.size, len(space.feasible())  # 3 x 3 width pairs, 5 of them at most half the FLOPs
(9, 5)
>>> keep = space.sample(2, seed=0)[0]
>>> sorted(keep), keep["0"].n_units
(['0', '2'], 8)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch.nn as nn
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.keepset import KeepSet
from bayesprune.spaces.base import Space
from bayesprune.spaces.constraints import check_range
from bayesprune.spaces.units import SELECTIONS, choose_units, l1_order

Widths = Sequence[float] | Mapping[str, Sequence[float]] | None


class PruningSpace(Space):
    """Uniform space over per-layer widths. See the module docstring.

    :param net: a :class:`~bayesprune.BayesianNet` (with ``guide``) or plain ``nn.Module``
        (its current weights are what the subnetworks inherit and what ``"l1"`` ranks).
    :param layers: Conv/Linear layers to prune (default: see
        :func:`~bayesprune.spaces.base.default_layers`).
    :param widths: a grid of kept fractions in ``(0, 1]`` for every layer, or one grid
        per layer name; ``None``: every unit count.
    :param width_range: ``(lo, hi)`` in ``[0, 1]``: only widths with ``lo <= k/n <= hi``.
    :param flops: ``(lo, hi)``: FLOPs as a fraction of the dense network's.
    :param params: ``(lo, hi)``: parameters as a fraction of the dense network's.
    :param ratio: ``(lo, hi)``: FLOPs per parameter (refines a space, as He & Xiao do).
    :param units: ``"l1"`` or ``"random"``: which units a width keeps.
    :param example_input: input batch to trace the network.
    :param guide: the fitted guide of a :class:`~bayesprune.BayesianNet` whose prior
        replaces weights (their point estimate is what the subnetworks inherit and what
        ``"l1"`` ranks).
    :param exact_limit: enumerate the product of choices up to this many elements.
    :param max_draws: rejection sampling gives up (``ValueError``) after this many proposals.
    :raises ValueError: naming the argument, for bad widths, ranges or layers, and for
        constraints that leave no subnetwork.
    """

    owner = "PruningSpace"

    def __init__(
        self,
        net: BayesianNet | nn.Module,
        layers: Sequence[str] | None = None,
        *,
        widths: Widths = None,
        width_range: tuple[float, float] = (0.0, 1.0),
        flops: tuple[float, float] | None = None,
        params: tuple[float, float] | None = None,
        ratio: tuple[float, float] | None = None,
        units: str = "l1",
        example_input: Tensor | None = None,
        guide: Guide | None = None,
        exact_limit: int = 2_000_000,
        max_draws: int = 2_000_000,
    ) -> None:
        if units not in SELECTIONS:
            raise ConfigError(f"PruningSpace: units must be one of {SELECTIONS}, got {units!r}")
        lo, hi = check_range(self.owner, "width_range", width_range, upper=1.0)
        super().__init__(
            net,
            layers,
            flops=flops,
            params=params,
            ratio=ratio,
            example_input=example_input,
            guide=guide,
        )
        self.units = units
        self.exact_limit = int(exact_limit)
        self.max_draws = int(max_draws)
        self.choices: dict[str, np.ndarray] = {}
        for name, n in zip(self.layers, self.n_units.tolist(), strict=True):
            counts = self._counts(name, n, widths)
            counts = counts[(counts >= lo * n - 1e-9) & (counts <= hi * n + 1e-9)]
            if counts.size == 0:
                raise ConfigError(
                    f"PruningSpace: widths/width_range leave layer {name!r} ({n} units) no width"
                )
            self.choices[name] = counts
        self._order = {n: l1_order(self.weight(n)) for n in self.layers}
        self.check_reachable(
            np.array([c[0] for c in self.choices.values()]),
            np.array([c[-1] for c in self.choices.values()]),
        )
        self._feasible: np.ndarray | None = None

    def _counts(self, name: str, n: int, widths: Widths) -> np.ndarray:
        if widths is None:
            return np.arange(1, n + 1)
        grid = widths.get(name) if isinstance(widths, Mapping) else widths
        if grid is None:
            raise ConfigError(f"PruningSpace: widths has no grid for layer {name!r}")
        if isinstance(grid, str | bytes) or not all(
            isinstance(f, numbers.Real) and not isinstance(f, bool) and 0 < f <= 1 for f in grid
        ):
            raise ConfigError(f"PruningSpace: widths must be fractions in (0, 1], got {grid!r}")
        return np.unique([max(1, round(f * n)) for f in grid])

    @property
    def size(self) -> int:
        """Number of count vectors in the product of choices (before constraints)."""
        return math.prod(len(c) for c in self.choices.values())

    def feasible(self) -> np.ndarray:
        """Every count vector meeting the constraints, shape ``(M, L)`` (enumerated once).

        :raises ValueError: if the product has more than ``exact_limit`` elements, or
            none of them meets the constraints."""
        if self._feasible is None:
            if self.size > self.exact_limit:
                raise ConfigError(
                    f"PruningSpace: {self.size} width vectors exceed exact_limit="
                    f"{self.exact_limit}; raise it or sample by rejection"
                )
            grids = np.meshgrid(*self.choices.values(), indexing="ij")
            counts = np.stack([g.ravel() for g in grids], axis=1)
            self._feasible = counts[self.accepts(counts)]
            if len(self._feasible) == 0:
                raise self.no_subnetwork(f"all {self.size} width vectors")
        return self._feasible

    def sample_counts(self, n: int, *, seed: int = 0) -> np.ndarray:
        """``n`` count vectors drawn independently and uniformly from the feasible ones."""
        n = _check_n(self.owner, n)
        rng = np.random.default_rng(seed)
        if self.size <= self.exact_limit:
            feasible = self.feasible()
            return feasible[rng.integers(len(feasible), size=n)]
        out: list[np.ndarray] = []
        got = drawn = 0
        while got < n:
            if drawn >= self.max_draws:
                raise self.no_subnetwork(f"{drawn} uniform proposals (max_draws)")
            batch = min(65536, self.max_draws - drawn)
            props = np.stack([rng.choice(c, size=batch) for c in self.choices.values()], axis=1)
            drawn += batch
            ok = props[self.accepts(props)]
            out.append(ok)
            got += len(ok)
        return np.concatenate(out)[:n]

    def keep(self, counts: Sequence[int], rng: np.random.Generator) -> dict[str, KeepSet]:
        """The keep-sets of one count vector (``rng`` for ``units="random"``)."""
        units = {
            name: choose_units(self.weight(name), int(k), self.units, rng, self._order[name])
            for name, k in zip(self.layers, counts, strict=True)
        }
        return self.keepsets(units)

    def sample(self, n: int, *, seed: int = 0) -> list[dict[str, KeepSet]]:
        """``n`` subnetworks, each ``{layer: KeepSet(units=...)}``, uniform over the
        feasible widths (see the module docstring)."""
        rng = np.random.default_rng([seed, 1])
        return [self.keep(c, rng) for c in self.sample_counts(n, seed=seed)]


def _check_n(owner: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ConfigError(f"{owner}: n must be a positive integer, got {n!r}")
    return int(n)
