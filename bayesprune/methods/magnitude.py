"""Magnitude pruning: the baseline every Bayesian method is compared with.

>>> import torch.nn as nn
>>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
>>> keep = magnitude_keep(net, keep=0.5)
>>> sum(k.n_kept for k in keep.values())
60
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bayesprune.errors import ConfigError
from bayesprune.nn.selection import LayerSelector, select_layers
from bayesprune.priors.base import DEFAULT_LAYER_TYPES
from bayesprune.priors.weight_masks import top_magnitude_masks
from bayesprune.pruning.keepset import KeepSet


@torch.no_grad()
def magnitude_keep(
    module: nn.Module, *, keep: float, layers: LayerSelector = None, scope: str = "global"
) -> dict[str, KeepSet]:
    """Unstructured keep-sets keeping the ``keep`` fraction of largest-|w| weights.

    :param module: a trained dense network.
    :param keep: fraction of weights kept, in ``(0, 1]``.
    :param layers: which layers are pruned (default: every Linear/Conv).
    :param scope: ``"global"`` (one threshold over all layers) or ``"layer"``.
    """
    if not (0 < keep <= 1):
        raise ConfigError(f"magnitude_keep: keep must be in (0, 1], got {keep!r}")
    if scope not in ("global", "layer"):
        raise ConfigError(f"magnitude_keep: scope must be 'global' or 'layer', got {scope!r}")
    names = select_layers(module, layers, default=DEFAULT_LAYER_TYPES)
    weights = {n: module.get_submodule(n).weight for n in names}
    if scope == "global":
        masks = top_magnitude_masks(weights, keep)
    else:
        masks = {n: top_magnitude_masks({n: w}, keep)[n] for n, w in weights.items()}
    return {n: KeepSet(weight_mask=m.cpu()) for n, m in masks.items()}
