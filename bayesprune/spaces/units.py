"""Which units of a layer a width keeps: the largest by L1 norm, or a random subset.

A uniform pruning space decides *how many* units each layer keeps; this decides *which*:

- ``"l1"``: the ``k`` units whose weight rows (all input weights of the unit / filter)
  have the largest L1 norm in the network's current weights, ties to the lower index
  (Li et al. 2017's filter ranking): deterministic given the counts.
- ``"random"``: ``k`` units uniformly at random.

>>> import numpy as np, torch.nn as nn, torch
>>> layer = nn.Linear(2, 3)
>>> with torch.no_grad():
...     _ = layer.weight.copy_(torch.tensor([[1.0, 1], [3, 0], [0, 0.5]]))
>>> choose_units(layer.weight, 2, "l1", np.random.default_rng(0)).tolist()
[0, 1]
"""

from __future__ import annotations

import numpy as np
import torch

from bayesprune.errors import ConfigError

SELECTIONS = ("l1", "random")


def l1_order(weight: torch.Tensor) -> np.ndarray:
    """Unit indices (rows of ``weight``) from the largest L1 norm to the smallest."""
    norms = weight.detach().flatten(1).abs().sum(1).cpu().double().numpy()
    return np.argsort(-norms, kind="stable")


def choose_units(
    weight: torch.Tensor,
    k: int,
    how: str,
    rng: np.random.Generator,
    order: np.ndarray | None = None,
) -> torch.Tensor:
    """Sorted indices of the ``k`` units (rows of the layer's ``weight``) kept under rule
    ``how`` (``order``: a precomputed :func:`l1_order`)."""
    n = int(weight.shape[0])
    if how == "l1":
        chosen = (l1_order(weight) if order is None else order)[:k]
    elif how == "random":
        chosen = rng.choice(n, size=k, replace=False)
    else:
        raise ConfigError(f"units must be one of {SELECTIONS}, got {how!r}")
    return torch.as_tensor(np.sort(chosen), dtype=torch.long)
