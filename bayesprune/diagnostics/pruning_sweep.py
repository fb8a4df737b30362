"""Accuracy against sparsity: the collapsed network at a sweep of keep fractions.

The default collapse (:func:`bayesprune.collapse` with the prior's default threshold)
keeps a fraction ``f₀`` of the prunable elements. The sweep collapses the posterior to
up to ``n_points`` keep fractions spaced geometrically from ``f₀/4`` to 1 (fewer when two
would keep as many elements; global ranking by
the prior's scores, as ``collapse(keep=...)``) and measures, for each, the accuracy of
the collapsed network (:func:`bayesprune.pruning.masked_copy`: point estimates written,
dropped elements zeroed -- what :func:`bayesprune.extract` computes) on the given data.
With ``predict_samples > 0`` it also gives the Monte-Carlo forecast of
:func:`bayesprune.pruning.predict.predict_pruning`: the accuracy of the pruned posterior
predictive (model average over that many guide draws with the dropped elements off).

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MAP
>>> _ = torch.manual_seed(0)
>>> net = sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), HALO())
>>> x, y = torch.randn(20, 4), torch.randint(0, 2, (20,))
>>> sweep = pruning_sweep(net, MAP(net), x, y, n_points=3)
>>> [round(f, 2) for f in sweep["keep"]], sweep["kept_fraction"][-1]
([0.25, 0.5, 1.0], 1.0)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.collapse import collapse
from bayesprune.pruning.extract import masked_copy
from bayesprune.pruning.keepset import KeepSet
from bayesprune.pruning.predict import predict_pruning


def _size(ks: KeepSet) -> int:
    if ks.weight_mask is not None and ks.units is None:
        return ks.weight_mask.numel()
    return ks.n_units or 1


def kept_fraction(keep: dict[str, KeepSet]) -> float:
    """Fraction of prunable elements kept over all layers (units, weights or blocks)."""
    total = sum(_size(ks) for ks in keep.values())
    return sum(ks.n_kept for ks in keep.values()) / max(total, 1)


def collapsed_accuracy(
    net: BayesianNet, keep: dict[str, KeepSet], x: Tensor, y: Tensor, batch_size: int
) -> float:
    """Accuracy on ``(x, y)`` of the collapsed network (eval mode)."""
    # not under inference mode: masked_copy traces the network's autograd graph
    module = masked_copy(net, keep, example_input=_example(net, x))
    module.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            out = module(x[i : i + batch_size])
            correct += int((out.argmax(-1) == y[i : i + batch_size]).sum())
    return correct / max(int(x.shape[0]), 1)


def _example(net: BayesianNet, x: Tensor) -> Tensor:
    return net.example_input if net.example_input is not None else x[:1]


def keep_fractions(f0: float, n_points: int, n_elements: int) -> list[float]:
    """Up to ``n_points`` fractions geometrically spaced from ``f₀/4`` (at least one element)
    to 1, fewer where two would keep the same number of elements."""
    n_elements = max(n_elements, 1)
    lo = min(max(f0 / 4.0, 1.0 / n_elements), 1.0)
    grid = [1.0] if n_points == 1 else np.geomspace(lo, 1.0, n_points).tolist()
    out: dict[int, float] = {}
    for f in grid:
        out.setdefault(round(f * n_elements), f)
    return list(out.values())


def pruning_sweep(
    net: BayesianNet,
    guide: Guide,
    x: Tensor,
    y: Tensor,
    *,
    n_points: int = 12,
    batch_size: int = 1024,
    predict_samples: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """The sweep of the module docstring.

    :returns: ``keep`` (requested fractions), ``kept_fraction`` (achieved), ``accuracy``
        and, with ``predict_samples >= 2``, ``accuracy_predicted`` -- lists of the same
        length, at most ``n_points`` -- plus ``default_kept_fraction`` and ``default_accuracy`` (the
        default collapse).
    """
    point = guide.point()
    default = collapse(net, point=point)
    f0 = kept_fraction(default)
    n_elements = sum(_size(ks) for ks in default.values())
    fractions = keep_fractions(f0, n_points, n_elements)
    out: dict[str, Any] = {"keep": fractions, "kept_fraction": [], "accuracy": []}
    if predict_samples >= 2:
        out["accuracy_predicted"] = []
    for f in fractions:
        keep = collapse(net, point=point, keep=f)
        out["kept_fraction"].append(kept_fraction(keep))
        out["accuracy"].append(collapsed_accuracy(net, keep, x, y, batch_size))
        if predict_samples >= 2:
            forecast = predict_pruning(
                net,
                guide,
                keep,
                (x, y),
                num_samples=predict_samples,
                seed=seed,
                batch_size=batch_size,
                example_input=_example(net, x),
            )
            out["accuracy_predicted"].append(forecast.accuracy_pruned_predictive)
    out["default_kept_fraction"] = f0
    out["default_accuracy"] = collapsed_accuracy(net, default, x, y, batch_size)
    return out
