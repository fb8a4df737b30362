"""``collapse``: read a posterior into per-layer keep-sets.

The prior scores every prunable element of each layer from a posterior point
estimate (:meth:`~bayesprune.priors.Prior.scores`; e.g. ``|θ̂|`` for HALO);
``collapse`` then keeps either a fixed fraction of them -- globally across
layers or within each layer -- or those above a threshold. A score shaped like
the weight gives an unstructured mask; a score of shape ``(n_units,)`` gives
kept units (structured); the one score of a residual block (block gates, a
layer without a weight) keeps the block whole or makes it its shortcut
(``KeepSet(identity=True)``).

``rule="inclusion"`` decides by the posterior instead of a point: an element is
removed only when its inclusion probability ``P(keep)``
(:mod:`bayesprune.pruning.inclusion`) is below ``max_risk``.

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

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from bayesprune.blocks import block_spec
from bayesprune.budget import Budget
from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide
from bayesprune.heads import is_head_layer, n_heads
from bayesprune.metrics import count_flops, count_parameters
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.priors.group_ties import layer_tile, tied_units
from bayesprune.pruning.budget_cost import CostModel
from bayesprune.pruning.budget_cut import BudgetReport, budget_masks
from bayesprune.pruning.extract import extract
from bayesprune.pruning.inclusion import inclusion_probs
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


def _top_units(scores: Tensor, units: Tensor, k: int) -> Tensor:
    """The best elements by score, each standing for ``units`` units, while they hold at
    most ``k`` units together (ties by index)."""
    order = torch.argsort(scores, descending=True, stable=True)
    fits = torch.cumsum(units[order], 0) <= k
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[order[fits]] = True
    return mask


def _top_mask_by(primary: Tensor, tiebreak: Tensor, k: int) -> Tensor:
    """The ``k`` best elements by ``primary``, ties broken by ``tiebreak`` (then by index)."""
    order = torch.argsort(tiebreak.flatten().float(), descending=True, stable=True)
    order = order[torch.argsort(primary.flatten()[order].float(), descending=True, stable=True)]
    mask = torch.zeros(primary.numel(), dtype=torch.bool, device=primary.device)
    mask[order[:k]] = True
    return mask.reshape(primary.shape)


def _block_keep(name: str, layer: nn.Module, mask: Tensor) -> KeepSet:
    """A gated layer without a weight is a residual block with one score (block gates):
    kept whole, or replaced by its shortcut (``identity=True``)."""
    if block_spec(layer) is None or mask.numel() != 1:
        raise ConfigError(
            f"collapse: layer {name!r} ({type(layer).__name__}) has no weight, so its scores "
            f"must be one score for a whole residual block; got shape {tuple(mask.shape)}"
            + ("" if block_spec(layer) is not None else " for a module that is not a block")
        )
    return KeepSet(identity=not bool(mask.any()), n_units=1)


def _head_keep(
    net: BayesianNet,
    point: dict[str, Tensor],
    name: str,
    layer: nn.Module,
    mask: Tensor,
    min_units: int,
    best: Callable[[str, int], Tensor],
) -> KeepSet:
    """The kept heads of attention layer ``name`` (refilled to ``min_units`` with
    ``best(name, k)``, closed refills ``zeroed``; :mod:`bayesprune.heads`)."""
    if tuple(mask.shape) != (n_heads(layer),):
        raise ConfigError(
            f"collapse: scores of attention layer {name!r} have shape {tuple(mask.shape)}, "
            f"not one per head ({n_heads(layer)},)"
        )
    zeroed = None
    if int(mask.sum()) < min_units:
        chosen = mask
        mask = best(name, min(min_units, mask.numel()))
        zeroed = _closed(net, point, name, mask & ~chosen)
    units = mask.nonzero().flatten().cpu()
    return KeepSet(units=units, n_units=mask.numel(), zeroed=zeroed)


class KeepSets(dict[str, KeepSet]):
    """What :func:`collapse` returns: ``{layer name: KeepSet}``, plus, for a cut to a
    budget, how it met it (:attr:`budget`)."""

    #: ``collapse(budget=...)``: the posterior's size, the cut's and how many it removed
    budget: BudgetReport | None = None


RULES = ("score", "inclusion")
_INCLUSION_OPTIONS = ("delta", "num_samples", "seed")


def collapse(
    net: BayesianNet,
    guide: Guide | None = None,
    *,
    keep: float | None = None,
    threshold: float | None = None,
    scope: str = "global",
    point: dict[str, Tensor] | None = None,
    min_units: int = 1,
    rule: str = "score",
    max_risk: float | None = None,
    budget: Budget | None = None,
    **options: Any,
) -> KeepSets:
    """Per-layer keep-sets from the posterior of ``net``.

    Two rules decide what is removed:

    - ``rule="score"`` (default): rank the prior's scores at the point estimate and keep a
      fraction (``keep``) or those above ``threshold`` (see the module docstring).
    - ``rule="inclusion"``: remove an element only when its posterior inclusion probability
      ``P(keep)`` (:func:`~bayesprune.pruning.inclusion.inclusion_probs`) is below
      ``max_risk``; elements with ``P(keep) >= max_risk`` are kept. ``P(keep)`` of a
      removed element is the posterior probability that it was needed, so ``max_risk``
      bounds that risk *per removed element* (the chance that at least one of several
      removed elements was needed can be larger, up to the sum). Under a MAP guide the
      probabilities are 0/1 indicators (``inclusion_kind(...) == "map-indicator"``), and the
      rule removes exactly the elements at or below ``delta``, whatever ``max_risk``.
      The probabilities are stored in each ``KeepSet.p_keep``.

    ``budget=Budget(...)`` cuts to a size instead (:mod:`bayesprune.pruning.budget_cut`):
    what the posterior drops goes first (scores at or below the prior's threshold), then
    the lowest-scored kept elements until the network is within the budget -- never
    above it; for ``params``/``flops`` the extracted network is counted to make sure. The
    result's ``.budget`` says how far the posterior itself was from the budget.

    Both rules give the same kinds of keep-sets: weight masks (per-weight scores), kept
    units (per-unit scores, at least ``min_units`` per layer) or a whole block kept or
    turned into its shortcut.

    :param net: the fitted model.
    :param guide: the fitted guide; its :meth:`~bayesprune.guides.Guide.point` is used
        (or pass ``point=`` directly; ``rule="inclusion"`` needs the guide).
    :param keep: fraction of prunable elements to keep, in ``(0, 1]`` (``rule="score"``;
        a gate tied across groups counts its units).
    :param threshold: keep elements whose score is above this (used when ``keep`` is None;
        the default is the prior's ``default_threshold``; ``rule="score"``).
    :param scope: ``"global"`` (one ranking over all layers, default) or ``"layer"``
        (``keep`` applies to each layer separately).
    :param min_units: structured keep-sets never keep fewer units than this per layer (the
        best by score, or by ``P(keep)`` then score under ``rule="inclusion"``); a layer
        whose gates are tied across groups (``tile`` units per gate) keeps at least
        ``ceil(min_units / tile)`` gates.
    :param rule: ``"score"`` or ``"inclusion"``.
    :param max_risk: for ``rule="inclusion"``: the largest ``P(keep)`` an element may have
        and still be removed, in ``(0, 1)``.
    :param budget: a :class:`~bayesprune.budget.Budget` to cut to (``rule="score"``, no
        ``keep``/``threshold``/``scope``).
    :param options: passed to the prior's ``scores`` (e.g. ``by="scale"`` for HALO); under
        ``rule="inclusion"`` to ``inclusion_probs`` (``delta``, ``num_samples``, ``seed``).
    :returns: ``{layer name: KeepSet}`` with the point estimates in ``KeepSet.values``.

    >>> import torch.nn as nn
    >>> from bayesprune import sparsify
    >>> from bayesprune.guides import MeanField
    >>> from bayesprune.priors import HALO
    >>> net = sparsify(nn.Linear(4, 3), HALO(per="unit"), layers=nn.Linear)
    >>> keep = collapse(net, MeanField(net), rule="inclusion", max_risk=0.05)
    >>> keep[""].n_units, tuple(keep[""].p_keep.shape)
    (3, (3,))
    """
    if rule not in RULES:
        raise ConfigError(f"collapse: rule must be one of {RULES}, got {rule!r}")
    if point is None:
        if guide is None:
            raise ConfigError("collapse: pass the fitted guide (or point=)")
        point = guide.point()
    if keep is not None and not (
        isinstance(keep, (int, float)) and not isinstance(keep, bool) and 0 < keep <= 1
    ):
        raise ConfigError(f"collapse: keep must be a fraction in (0, 1], got {keep!r}")
    if threshold is not None and (
        not isinstance(threshold, (int, float))
        or isinstance(threshold, bool)
        or threshold != threshold
    ):
        raise ConfigError(f"collapse: threshold must be a number, got {threshold!r}")
    if scope not in ("global", "layer"):
        raise ConfigError(f"collapse: scope must be 'global' or 'layer', got {scope!r}")
    if budget is not None:
        given = [
            name
            for name, v in (
                ("keep", keep),
                ("threshold", threshold),
                ("max_risk", max_risk),
                ("rule", None if rule == "score" else rule),
                ("scope", None if scope == "global" else scope),
            )
            if v is not None
        ] + sorted(options)
        if given:
            raise ConfigError(
                f"collapse: budget= decides the cut by itself; drop {', '.join(given)}"
            )
        return _collapse_to_budget(net, point, budget, min_units)
    if rule == "inclusion":
        return _collapse_by_inclusion(
            net, guide, point, keep, threshold, min_units, max_risk, options
        )
    if max_risk is not None:
        raise ConfigError(
            "collapse: max_risk is for rule='inclusion'; rule='score' uses keep/threshold"
        )
    scores = layer_scores(net, point, **options)
    masks: dict[str, Tensor] = {}
    if keep is not None and scope == "global":
        flat = torch.cat([s.flatten().float() for s in scores.values()])
        tiles = {n: layer_tile(net.layer_sites[n]) for n in scores}
        if all(t == 1 for t in tiles.values()):
            top = _top_mask(flat, round(keep * flat.numel()))
        else:  # a gate tied across groups counts its units: keep a fraction of the units
            units = torch.cat([torch.full((s.numel(),), tiles[n]) for n, s in scores.items()])
            top = _top_units(flat, units.to(flat.device), round(keep * int(units.sum())))
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
    return KeepSets(
        _keepsets(net, point, masks, min_units, lambda name, k: _top_mask(scores[name].float(), k))
    )


def _collapse_to_budget(
    net: BayesianNet, point: dict[str, Tensor], budget: Budget, min_units: int
) -> KeepSets:
    model = CostModel(net, budget)
    measure = None
    if budget.metric in ("params", "flops"):
        x = net.example_input

        def measure(masks: dict[str, Tensor]) -> float:
            keep = _keepsets(net, point, masks, min_units, _refill(masks))
            small = extract(net, keep, example_input=x)
            if budget.metric == "params":
                return count_parameters(small)["params"] / model.dense
            return count_flops(small, x[:1])["macs"] / model.dense

    masks, report = budget_masks(
        net, point, budget, min_units=min_units, measure=measure, model=model
    )
    result = KeepSets(_keepsets(net, point, masks, min_units, _refill(masks)))
    result.budget = report
    return result


def _refill(masks: dict[str, Tensor]) -> Callable[[str, int], Tensor]:
    """A budget cut never leaves a unit layer below ``min_units``; a layer the posterior
    itself emptied is refilled with its first units (zeroed where their gates are closed)."""
    return lambda name, k: masks[name] | _top_mask(masks[name].float(), k)


def _collapse_by_inclusion(
    net: BayesianNet,
    guide: Guide | None,
    point: dict[str, Tensor],
    keep: float | None,
    threshold: float | None,
    min_units: int,
    max_risk: float | None,
    options: dict[str, Any],
) -> KeepSets:
    if guide is None:
        raise ConfigError("collapse: rule='inclusion' needs the fitted guide (its distributions)")
    if keep is not None or threshold is not None:
        raise ConfigError(
            "collapse: keep and threshold are for rule='score'; rule='inclusion' takes max_risk"
        )
    if (
        max_risk is None
        or isinstance(max_risk, bool)
        or not isinstance(max_risk, (int, float))
        or not 0 < max_risk < 1
    ):
        raise ConfigError(
            f"collapse: rule='inclusion' needs max_risk, a probability in (0, 1), got {max_risk!r}"
        )
    unknown = sorted(set(options) - set(_INCLUSION_OPTIONS))
    if unknown:
        raise ConfigError(
            f"collapse: unknown option(s) {unknown} for rule='inclusion'; "
            f"it takes {list(_INCLUSION_OPTIONS)}"
        )
    probs = inclusion_probs(net, guide, **options)
    scores = layer_scores(net, point)
    masks = {n: p >= max_risk for n, p in probs.items()}
    return KeepSets(
        _keepsets(
            net,
            point,
            masks,
            min_units,
            lambda name, k: _top_mask_by(probs[name], scores[name], k),
            p_keep=probs,
        )
    )


def _closed(
    net: BayesianNet, point: dict[str, Tensor], name: str, refilled: Tensor
) -> Tensor | None:
    """Units kept only to honour ``min_units`` whose gate is closed at the point estimate:
    the collapsed model has them at 0, so the extracted network must too (turning them on
    would run units the fit switched off)."""
    gate = next((s for s in net.layer_sites[name] if s.role == "gate"), None)
    if gate is None:
        return None
    closed = refilled & (point[gate.name].to(refilled.device) == 0)
    return closed.nonzero().flatten().cpu() if bool(closed.any()) else None


def _keepsets(
    net: BayesianNet,
    point: dict[str, Tensor],
    masks: dict[str, Tensor],
    min_units: int,
    best: Callable[[str, int], Tensor],
    p_keep: dict[str, Tensor] | None = None,
) -> dict[str, KeepSet]:
    """Turn one boolean mask per layer (shaped like its scores) into its KeepSet: a weight
    mask, kept units (refilled to ``min_units`` with ``best(name, k)``, the mask of the
    ``k`` best units) or a block kept whole / made its shortcut."""
    result: dict[str, KeepSet] = {}
    for name, mask in masks.items():
        layer = net.module.get_submodule(name)
        values = {
            s.replaces.removeprefix(f"{name}." if name else ""): point[s.name].detach()
            for s in net.layer_sites[name]
            if s.replaces is not None
        }
        tile = layer_tile(net.layer_sites[name])
        if is_head_layer(layer):  # an attention layer: its heads are its units
            ks = _head_keep(net, point, name, layer, mask, min_units, best)
        elif not isinstance(getattr(layer, "weight", None), Tensor):
            ks = _block_keep(name, layer, mask)
        elif mask.shape == layer.weight.shape:
            ks = KeepSet(weight_mask=mask.cpu(), values=values)
        elif mask.dim() == 1 and mask.numel() * tile == len(layer.weight):
            # a tied layer's scores are per gate, each gate standing for ``tile`` units
            zeroed = None
            need = -(-min_units // tile)  # gates that keep at least min_units units
            if int(mask.sum()) < need:
                chosen = mask
                mask = best(name, min(need, mask.numel()))
                zeroed = _closed(net, point, name, mask & ~chosen)
            units = mask.nonzero().flatten().cpu()
            if tile > 1:
                units = tied_units(units, mask.numel(), tile)
                if zeroed is not None:
                    zeroed = tied_units(zeroed, mask.numel(), tile)
            ks = KeepSet(units=units, n_units=len(layer.weight), values=values, zeroed=zeroed)
        else:
            raise ConfigError(
                f"collapse: scores of layer {name!r} have shape {tuple(mask.shape)}, neither the "
                f"weight's {tuple(layer.weight.shape)} nor ({len(layer.weight) // tile},)"
            )
        if p_keep is not None:
            ks.p_keep = p_keep[name].detach().cpu()
        result[name] = ks
    return result
