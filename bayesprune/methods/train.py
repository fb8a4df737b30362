"""Dense training and masked fine-tuning, through the one fit loop.

:func:`train` wraps the network with the flat :class:`~bayesprune.priors.Dense` prior (no
sample sites: every parameter stays the module's own) and runs :func:`bayesprune.fit`, whose
per-example loss is then exactly the mean cross-entropy of the mini-batch: the same
index-slice batches, the same fused Adam, the same schedules, checkpoints and devices as
every Bayesian fit. Fixed masks (:class:`~bayesprune.pruning.KeepSet`\\ s: unstructured
``weight_mask`` or structured ``units``) are held by a
:class:`~bayesprune.priors.weight_masks.HoldMasks` callback that zeroes the masked entries
after every step -- masked fine-tuning.

>>> import torch.nn as nn
>>> from bayesprune.data import synthetic_classification
>>> data = synthetic_classification(n_train=64, input_shape=(4,), n_classes=2)
>>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> [h["epoch"] for h in train(net, data, epochs=2, batch_size=16)]
[1, 2]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.guides import MAP
from bayesprune.inference import fit
from bayesprune.nn import sparsify
from bayesprune.priors.dense import Dense
from bayesprune.priors.weight_masks import HoldMasks
from bayesprune.pruning.keepset import KeepSet
from bayesprune.sites import join


def keep_masks(module: nn.Module, keep: dict[str, KeepSet]) -> dict[str, Tensor]:
    """``{parameter name: bool mask}`` of what ``keep`` holds fixed: a layer's
    ``weight_mask``, and for kept ``units`` the weight rows and bias entries of the others.

    :raises ValueError: naming a layer without a weight, or units out of range.
    """
    masks: dict[str, Tensor] = {}
    for name, ks in keep.items():
        layer = module.get_submodule(name)
        w = getattr(layer, "weight", None)
        if not isinstance(w, Tensor):
            raise ConfigError(f"keep: layer {name!r} has no weight to mask")
        m = torch.ones(w.shape, dtype=torch.bool)
        if ks.weight_mask is not None:
            m &= ks.weight_mask.cpu()
        if ks.units is not None:
            units = torch.zeros(w.shape[0], dtype=torch.bool)
            if ks.units.numel() and int(ks.units.max()) >= w.shape[0]:
                raise ConfigError(f"keep: layer {name!r} has {w.shape[0]} units, got {ks.units}")
            units[ks.units.cpu()] = True
            m &= units.reshape((-1,) + (1,) * (w.dim() - 1))
            if isinstance(getattr(layer, "bias", None), Tensor):
                masks[join(name, "bias")] = units
        masks[join(name, "weight")] = m
    return masks


@torch.no_grad()
def apply_masks(module: nn.Module, keep: dict[str, KeepSet]) -> None:
    """Zero, in place, the weights outside each layer's ``weight_mask`` and the weight rows
    and biases of the units not in its ``units``."""
    for pname, m in keep_masks(module, keep).items():
        p = module.get_parameter(pname)
        p.mul_(m.to(p.device, p.dtype))


def train(
    module: nn.Module,
    data: Any,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    keep: dict[str, KeepSet] | None = None,
    device: str | torch.device | None = None,
    schedule: str | None = None,
    validate: bool = False,
    callbacks: Sequence[Any] = (),
    **fit_options: Any,
) -> list[dict[str, Any]]:
    """Train ``module`` in place on cross-entropy with :func:`bayesprune.fit` (Adam by
    default); returns the fit's history, one record per epoch.

    :param data: what :func:`bayesprune.fit` takes (a ``Dataset``, an ``(x, y)`` pair, a loader).
    :param keep: if given, these keep-sets are held fixed: the pruned entries are zeroed
        before the first step and after every step (fine-tuning a pruned network).
    :param schedule: ``None`` or ``"cosine"`` (per step, to zero), as in :func:`bayesprune.fit`.
    :param validate: score the validation split after every epoch (``val_accuracy``).
    :param fit_options: any other keyword of :func:`bayesprune.fit` (``optimizer=``, ...).
    """
    net = sparsify(module, Dense())
    extra = [HoldMasks(keep_masks(module, keep))] if keep else []
    result = fit(
        net,
        data,
        MAP(net),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        device=device,
        schedule=schedule,
        validate=validate,
        callbacks=[*extra, *callbacks],
        progress=fit_options.pop("progress", False),
        **fit_options,
    )
    return result.history


@torch.inference_mode()
def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy of ``module`` (eval mode) on ``(x, y)``; the batches are moved to the
    module's device."""
    was = module.training
    module.eval()
    dev = next((p.device for p in module.parameters()), x.device)
    correct = sum(
        int(
            (
                module(x[i : i + batch_size].to(dev)).argmax(-1) == y[i : i + batch_size].to(dev)
            ).sum()
        )
        for i in range(0, x.shape[0], batch_size)
    )
    module.train(was)
    return correct / max(x.shape[0], 1)
