"""Cut a posterior to a :class:`~bayesprune.budget.Budget`: never above it, chosen by the
posterior.

Two steps, both read from the posterior point estimate:

1. **The posterior's own cut**: every element its prior scores at or below the prior's
   ``default_threshold`` goes (gate probability θ ≤ 0.5; HALO magnitude ≤ 1e-3). Its size
   is :attr:`BudgetReport.posterior` -- how far the posterior itself was from the budget.
2. **The budget's cut**: while the size is above the budget, the kept element with the
   lowest score goes next (gates: lowest θ, ties broken by the smaller weight norm; HALO:
   smallest magnitude), never emptying a layer below ``min_units``. The size is the
   :class:`~bayesprune.pruning.budget_cost.CostModel`'s, searched by bisection (the size
   only falls as elements go).

If the posterior already sits below the budget, units are not added back (a unit whose
gate closed is switched off in the model, and live removal may have cut it out): the
result is the posterior's cut, and the report says how far below. Weights are different:
a budget on weights keeps exactly the ``floor(fraction · n)`` largest magnitudes, the
posterior's near-zero ones included when it kept fewer (their magnitude, not a switch,
is what the prior shrank). A budget the smallest network
(``min_units`` per layer) cannot meet is refused.

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.budget import Budget
>>> from bayesprune.guides import MAP
>>> from bayesprune.priors import HALO
>>> net = sparsify(nn.Linear(10, 10), HALO(), layers=nn.Linear)
>>> masks, report = budget_masks(net, MAP(net).point(), Budget(weights=0.05))
>>> int(masks[""].sum()), report.final
(5, 0.05)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from bayesprune.budget import Budget
from bayesprune.errors import ConfigError
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.budget_cost import CostModel


@dataclass
class BudgetReport:
    """How a cut met its budget.

    :ivar metric: what the budget counts.
    :ivar target: the budget's fraction (``None`` for per-layer units).
    :ivar posterior: the size the posterior's own rule keeps, as a fraction of the network
        as built.
    :ivar final: the size after the budget's cut (the model's count; ``collapse`` replaces
        it by the extracted network's count for ``params``/``flops``).
    :ivar cut: elements the budget removed beyond the posterior's own cut.
    :ivar measured: whether ``final`` was counted on the extracted network.
    """

    metric: str
    target: float | None
    posterior: float
    final: float
    cut: int
    measured: bool = False

    def __str__(self) -> str:
        target = "per layer" if self.target is None else f"{self.target:.4g}"
        return (
            f"budget {self.metric} {target}: the posterior kept {self.posterior:.4g}, "
            f"cut to {self.final:.4g} ({self.cut} more removed"
            + (", counted on the extracted network)" if self.measured else ")")
        )


def _scores(net: BayesianNet, point: dict[str, Tensor]) -> dict[str, Tensor]:
    return {
        n: net.prior.scores(sites, point).detach().float().cpu()
        for n, sites in net.layer_sites.items()
    }


def _tiebreak(net: BayesianNet, point: dict[str, Tensor], name: str, n: int) -> Tensor:
    """The weight norm of each of the ``n`` scored units of ``name`` (of the ``tile`` units
    of each gate where tied; zeros where the layer has no weight)."""
    site = next((s for s in net.layer_sites[name] if s.role == "weight"), None)
    if site is not None:
        w = point[site.name]
    else:
        w = getattr(net.module.get_submodule(name), "weight", None)
        if not isinstance(w, Tensor) or w.shape[0] % n:
            return torch.zeros(n)
    # unit c = j·n + p belongs to gate p (a tile of 1 where untied)
    return w.detach().float().cpu().reshape(-1, n, *w.shape[1:]).flatten(2).norm(dim=(0, 2))


def budget_masks(
    net: BayesianNet,
    point: dict[str, Tensor],
    budget: Budget,
    *,
    min_units: int = 1,
    measure: Callable[[dict[str, Tensor]], float] | None = None,
    model: CostModel | None = None,
) -> tuple[dict[str, Tensor], BudgetReport]:
    """Keep masks (shaped like each layer's collapse scores) that meet ``budget``.

    :param point: the posterior point estimate (``guide.point()``).
    :param min_units: units every unit layer keeps at least (blocks may all go).
    :param measure: the size of the network the masks would extract, as a fraction of the
        network as built; when given, the cut goes on until it is within the budget too
        (``collapse`` passes the extracted network's ``params``/``flops``).
    :param model: a :class:`CostModel` already built for ``budget``'s measure.
    :raises ConfigError: a budget the prior cannot count, or smaller than the smallest
        network (``min_units`` per layer) can meet.
    """
    model = model if model is not None else CostModel(net, budget)
    scores = _scores(net, point)
    threshold = float(net.prior.default_threshold)
    if budget.metric == "weights":
        return _weight_masks(scores, threshold, budget.fraction, model)
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    # collapse keeps min(min_units, units of the layer): a layer smaller than min_units whole
    # (and ceil(min_units / tile) gates of a layer whose gates are tied across groups)
    floor_of = model.floors(int(min_units))
    floors = [floor_of[n] for n in names]
    keep = {n: scores[n] > threshold for n in names}
    posterior = model.size({n: float(keep[n].sum()) for n in names})
    # the removal order over every kept unit: lowest score first, ties by weight norm
    layer_ix, unit_ix, key1, key2 = [], [], [], []
    for i, n in enumerate(names):
        idx = keep[n].nonzero().flatten()
        layer_ix.append(torch.full((idx.numel(),), i, dtype=torch.long))
        unit_ix.append(idx)
        key1.append(scores[n][idx])
        key2.append(_tiebreak(net, point, n, sizes[i])[idx])
    layer_ix_t, unit_ix_t = torch.cat(layer_ix), torch.cat(unit_ix)
    order = torch.argsort(torch.cat(key2), stable=True)
    order = order[torch.argsort(torch.cat(key1)[order], stable=True)]
    counts = [int(keep[n].sum()) for n in names]
    # the removals allowed in that order: a layer never drops below its floor
    allowed: list[int] = []
    left = list(counts)
    for j in order.tolist():
        i = int(layer_ix_t[j])
        if left[i] > floors[i]:
            left[i] -= 1
            allowed.append(j)
    seq = torch.tensor(allowed, dtype=torch.long)

    def kept_after(k: int) -> dict[str, float]:
        gone = torch.bincount(layer_ix_t[seq[:k]], minlength=len(names)).tolist()
        # a layer the posterior emptied below min_units is refilled (zeroed units count)
        return {n: float(max(counts[i] - gone[i], floors[i])) for i, n in enumerate(names)}

    per = budget.per_layer
    if per is not None:
        seq = _per_layer_removals(names, seq, layer_ix_t, counts, per, model, floors)
        k_min = seq.numel()
    else:
        target = budget.fraction

        def fits(k: int) -> bool:
            return model.size(kept_after(k)) <= target + 1e-12

        if not fits(len(allowed)):
            smallest = model.size(kept_after(len(allowed)))
            raise ConfigError(
                f"Budget: {budget.metric}={target:g} is smaller than the smallest network "
                f"this cut can leave ({min_units} unit(s) per layer: {smallest:.4g} of the "
                "network as built); raise the budget or lower min_units"
            )
        k_min = _bisect(fits, 0, len(allowed))
    masks = _masks_after(names, sizes, keep, seq[:k_min], layer_ix_t, unit_ix_t)
    final = model.size(kept_after(k_min))
    measured = False
    if measure is not None and per is None:
        target = budget.fraction
        real = measure(masks)
        if real > target + 1e-12:  # the model missed a coupling: cut on by the real count

            def real_fits(k: int) -> bool:
                return measure(
                    _masks_after(names, sizes, keep, seq[:k], layer_ix_t, unit_ix_t)
                ) <= (target + 1e-12)

            if not real_fits(len(allowed)):
                raise ConfigError(
                    f"Budget: {budget.metric}={target:g} cannot be met by the extracted "
                    f"network with {min_units} unit(s) per layer"
                )
            k_min = _bisect(real_fits, k_min, len(allowed))
            masks = _masks_after(names, sizes, keep, seq[:k_min], layer_ix_t, unit_ix_t)
            real = measure(masks)
        final, measured = real, True
    report = BudgetReport(
        budget.metric,
        None if per is not None else budget.fraction,
        posterior,
        final,
        int(k_min),
        measured,
    )
    return masks, report


def _bisect(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The smallest ``k`` in ``[lo, hi]`` with ``fits(k)`` (``fits`` is monotone; ``hi``
    fits)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _per_layer_removals(
    names: list[str],
    seq: Tensor,
    layer_ix: Tensor,
    counts: list[int],
    per: dict[str, float],
    model: CostModel,
    floors: list[int],
) -> Tensor:
    """The removals (in order) that leave every named layer within its own fraction: each
    named layer's lowest-scored units beyond its cap; layers not named keep their
    posterior cut."""
    want: dict[int, int] = {}
    for i, n in enumerate(names):
        if n not in per:
            continue
        cap = math.floor(per[n] * model.units_built[n] + 1e-9)
        if cap < floors[i]:
            tile = model.tiles[n]
            raise ConfigError(
                f"Budget: units[{n!r}]={per[n]:g} leaves {cap * tile} of "
                f"{model.units_built[n] * tile} units, fewer than min_units={floors[i] * tile}"
                + (f" (its gates tie {tile} units each)" if tile > 1 else "")
            )
        want[i] = max(counts[i] - cap, 0)
    taken = {i: 0 for i in want}
    chosen: list[int] = []
    for j, i in enumerate(layer_ix[seq].tolist()):
        if i in want and taken[i] < want[i]:
            taken[i] += 1
            chosen.append(j)
    return seq[torch.tensor(chosen, dtype=torch.long)] if chosen else seq[:0]


def _masks_after(
    names: list[str],
    sizes: list[int],
    keep: dict[str, Tensor],
    removed: Tensor,
    layer_ix: Tensor,
    unit_ix: Tensor,
) -> dict[str, Tensor]:
    masks = {n: keep[n].clone() for n in names}
    for i, n in enumerate(names):
        gone = unit_ix[removed[layer_ix[removed] == i]]
        masks[n][gone] = False
    return masks


def _weight_masks(
    scores: dict[str, Tensor], threshold: float, target: float, model: CostModel
) -> tuple[dict[str, Tensor], BudgetReport]:
    flat = torch.cat([s.flatten() for s in scores.values()])
    alive = flat > threshold
    posterior = float(alive.sum()) / model.total_weights
    k = math.floor(target * model.total_weights + 1e-9)
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    masks, offset = {}, 0
    for n, s in scores.items():
        masks[n] = mask[offset : offset + s.numel()].reshape(s.shape)
        offset += s.numel()
    report = BudgetReport(
        "weights", target, posterior, k / model.total_weights, max(int(alive.sum()) - k, 0)
    )
    return masks, report
