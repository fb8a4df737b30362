"""``collapse``: read a posterior into per-layer keep-sets.

The prior scores every prunable element of each layer from a posterior point
estimate (:meth:`~bayesprune.priors.Prior.scores`; e.g. ``|θ̂|`` for HALO);
``collapse`` then keeps either a fixed fraction of them -- globally across
layers or within each layer -- or those above a threshold. A score shaped like
the weight gives an unstructured mask; a score of shape ``(n_units,)`` gives
kept units (structured); the one score of a residual block (block gates, a
layer without a weight) keeps the block whole or makes it its shortcut
(``KeepSet(identity=True)``).

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MAP
>>> net = sparsify(nn.Linear(10, 10), HALO(), layers=nn.Linear)
>>> keep = collapse(net, MAP(net), keep=0.1)
>>> keep[""].n_kept  # the root module is the only layer here
10
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from bayesprune.blocks import block_spec
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.keepset import KeepSet


def layer_scores(net: BayesianNet, point: dict[str, Tensor], **options: Any) -> dict[str, Tensor]:
    """The prior's importance scores per layer at ``point`` (detached)."""
    return {
        name: net.prior.scores(sites, point, **options).detach()
        for name, sites in net.layer_sites.items()
    }


def _top_mask(scores: Tensor, k: int) -> Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        mask[torch.topk(scores.flatten(), k, sorted=False).indices] = True
    return mask.reshape(scores.shape)


def _block_keep(name: str, layer: nn.Module, mask: Tensor) -> KeepSet:
    """A gated layer without a weight is a residual block with one score (block gates):
    kept whole, or replaced by its shortcut (``identity=True``)."""
    if block_spec(layer) is None or mask.numel() != 1:
        raise ValueError(
            f"collapse: layer {name!r} ({type(layer).__name__}) has no weight, so its scores "
            f"must be one score for a whole residual block; got shape {tuple(mask.shape)}"
            + ("" if block_spec(layer) is not None else " for a module that is not a block")
        )
    return KeepSet(identity=not bool(mask.any()), n_units=1)


def collapse(
    net: BayesianNet,
    guide: Guide | None = None,
    *,
    keep: float | None = None,
    threshold: float | None = None,
    scope: str = "global",
    point: dict[str, Tensor] | None = None,
    min_units: int = 1,
    **options: Any,
) -> dict[str, KeepSet]:
    """Per-layer keep-sets from the posterior of ``net``.

    :param net: the fitted model.
    :param guide: the fitted guide; its :meth:`~bayesprune.guides.Guide.point` is used
        (or pass ``point=`` directly).
    :param keep: fraction of prunable elements to keep, in ``(0, 1]``.
    :param threshold: keep elements whose score is above this (used when ``keep`` is None;
        the default is the prior's ``default_threshold``).
    :param scope: ``"global"`` (one ranking over all layers, default) or ``"layer"``
        (``keep`` applies to each layer separately).
    :param min_units: structured keep-sets never keep fewer units than this per layer.
    :param options: passed to the prior's ``scores`` (e.g. ``by="scale"`` for HALO).
    :returns: ``{layer name: KeepSet}`` with the point estimates in ``KeepSet.values``.
    """
    if point is None:
        if guide is None:
            raise ValueError("collapse: pass the fitted guide (or point=)")
        point = guide.point()
    if keep is not None and not (
        isinstance(keep, (int, float)) and not isinstance(keep, bool) and 0 < keep <= 1
    ):
        raise ValueError(f"collapse: keep must be a fraction in (0, 1], got {keep!r}")
    if threshold is not None and (
        not isinstance(threshold, (int, float))
        or isinstance(threshold, bool)
        or threshold != threshold
    ):
        raise ValueError(f"collapse: threshold must be a number, got {threshold!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"collapse: scope must be 'global' or 'layer', got {scope!r}")
    scores = layer_scores(net, point, **options)
    masks: dict[str, Tensor] = {}
    if keep is not None and scope == "global":
        flat = torch.cat([s.flatten().float() for s in scores.values()])
        k = round(keep * flat.numel())
        top = _top_mask(flat, k)
        offset = 0
        for name, s in scores.items():
            masks[name] = top[offset : offset + s.numel()].reshape(s.shape)
            offset += s.numel()
    elif keep is not None:
        masks = {n: _top_mask(s.float(), round(keep * s.numel())) for n, s in scores.items()}
    else:
        if threshold is None:
            threshold = net.prior.default_threshold
        masks = {n: s > threshold for n, s in scores.items()}

    result: dict[str, KeepSet] = {}
    for name, mask in masks.items():
        layer = net.module.get_submodule(name)
        values = {
            s.replaces.removeprefix(f"{name}." if name else ""): point[s.name].detach()
            for s in net.layer_sites[name]
            if s.replaces is not None
        }
        if not isinstance(getattr(layer, "weight", None), Tensor):
            result[name] = _block_keep(name, layer, mask)
        elif mask.shape == layer.weight.shape:
            result[name] = KeepSet(weight_mask=mask.cpu(), values=values)
        elif mask.dim() == 1 and mask.numel() == layer.weight.shape[0]:
            if int(mask.sum()) < min_units:
                mask = _top_mask(scores[name].float(), min(min_units, mask.numel()))
            units = mask.nonzero().flatten().cpu()
            result[name] = KeepSet(units=units, n_units=mask.numel(), values=values)
        else:
            raise ValueError(
                f"collapse: scores of layer {name!r} have shape {tuple(mask.shape)}, neither the "
                f"weight's {tuple(layer.weight.shape)} nor ({layer.weight.shape[0]},)"
            )
    return result
