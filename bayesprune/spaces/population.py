"""A measured population of subnetworks: one row per subnetwork, arrays per column.

:class:`Population` is what :func:`bayesprune.spaces.evaluate` returns and what the EDF,
the FLOPs/params finding and the plots read. Columns are numpy arrays of length ``N``
(``counts`` is ``(N, L)``, one column per pruned layer); :meth:`Population.records`
gives the same as a list of JSON-ready dicts (a ``pandas.DataFrame(records)`` away).

>>> import numpy as np
>>> p = Population("toy", ("fc",), np.array([[2], [4]]), np.array([0.3, 0.1]),
...                np.array([0.35, 0.2]), np.array([10.0, 20.0]), np.array([5.0, 8.0]), 40.0, 16.0)
>>> p.ratio.tolist(), p.best(0.5).tolist(), p.records()[1]["fc"]
([2.0, 2.5], [1], 4)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bayesprune.errors import ConfigError
from bayesprune.pruning.keepset import KeepSet
from bayesprune.spaces.edf import edf


@dataclass
class Population:
    """Measured subnetworks of one space. See the module docstring.

    :param name: the space's label (``"uniform"``, ``"posterior"``, ...).
    :param layers: the pruned layers, in the order of ``counts``' columns.
    :param counts: units kept per layer, ``(N, L)``.
    :param errors: validation error after the fine-tune (the inherited-weights error
        when there was none).
    :param errors_inherited: validation error with the inherited weights, before any
        fine-tune.
    :param flops: FLOPs per example (``2·MACs``, :func:`bayesprune.metrics.count_flops`)
        of each extracted subnetwork.
    :param params: its parameters (:func:`bayesprune.metrics.count_parameters`).
    :param dense_flops: the dense network's FLOPs per example.
    :param dense_params: the dense network's parameters.
    :param keep: each subnetwork's keep-sets (not in :meth:`records`).
    """

    name: str
    layers: tuple[str, ...]
    counts: np.ndarray
    errors: np.ndarray
    errors_inherited: np.ndarray
    flops: np.ndarray
    params: np.ndarray
    dense_flops: float
    dense_params: float
    keep: list[dict[str, KeepSet]] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.errors.shape[0])

    @property
    def ratio(self) -> np.ndarray:
        """FLOPs per parameter of each subnetwork."""
        return self.flops / self.params

    @property
    def flops_frac(self) -> np.ndarray:
        """FLOPs as a fraction of the dense network's."""
        return self.flops / self.dense_flops

    @property
    def params_frac(self) -> np.ndarray:
        """Parameters as a fraction of the dense network's."""
        return self.params / self.dense_params

    def edf(self, at: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        """The EDF of ``errors`` at the levels ``at`` (:func:`bayesprune.spaces.edf`)."""
        return edf(self.errors, at, weights)

    def best(self, fraction: float = 0.1) -> np.ndarray:
        """Indices of the ``ceil(fraction · N)`` lowest errors, best first (ties by index)."""
        if not 0 < fraction <= 1:
            raise ConfigError(f"Population.best: fraction must be in (0, 1], got {fraction!r}")
        k = max(1, math.ceil(fraction * len(self)))
        return np.argsort(self.errors, kind="stable")[:k]

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per subnetwork: ``space``, units per layer, ``error``,
        ``error_inherited``, ``flops``, ``params``, their fractions and ``ratio``."""
        out = []
        for i in range(len(self)):
            row: dict[str, Any] = {"space": self.name}
            row.update({n: int(c) for n, c in zip(self.layers, self.counts[i], strict=True)})
            row.update(
                error=float(self.errors[i]),
                error_inherited=float(self.errors_inherited[i]),
                flops=float(self.flops[i]),
                params=float(self.params[i]),
                flops_frac=float(self.flops_frac[i]),
                params_frac=float(self.params_frac[i]),
                ratio=float(self.ratio[i]),
            )
            out.append(row)
        return out
