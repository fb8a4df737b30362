"""L1-norm structured pruning (Li et al., "Pruning Filters for Efficient ConvNets", 2017):
whole output units / filters ranked by the L1 norm of their weights.

One-shot (:func:`l1_unit_keep`) or iterative (:func:`l1_prune`: prune a fraction, fine-tune
with the units held at 0, repeat) to a target fraction of units kept, with an optional
masked fine-tune through :func:`~bayesprune.methods.train` (the one fit loop). The result is
``{layer: KeepSet(units=...)}``, so :func:`bayesprune.extract` physically removes the units.

- ``scope="layer"`` (default): each chosen layer keeps ``round(keep * n_units)`` units
  (at least ``min_units``), ranked by ``Σ|w|`` of each unit's weights.
- ``scope="global"``: one ranking over all chosen layers, by the *mean* ``|w|`` of each
  unit's weights (the L1 norm divided by the fan-in: raw L1 norms of layers with different
  fan-ins are not comparable); every layer still keeps ``min_units``.
- The output layer (the last chosen Linear/Conv in module order) is left whole unless
  ``include_output=True`` or ``layers=`` names it.

>>> import torch.nn as nn
>>> net = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
>>> keep = l1_unit_keep(net, keep=0.5)
>>> sorted(keep), [k.n_kept for k in keep.values()]
(['0', '2'], [4, 3])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.methods.train import apply_masks, train
from bayesprune.nn.selection import LayerSelector, select_layers
from bayesprune.pruning.keepset import KeepSet

_DEFAULT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_fraction(who: str, keep: Any) -> float:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ConfigError(f"{who}: keep must be a fraction in (0, 1], got {keep!r}")
    return float(keep)


def pruned_layers(module: nn.Module, layers: LayerSelector, include_output: bool) -> list[str]:
    """The layers whose units are ranked: ``layers`` as given, or every Linear/Conv but the
    last (the output layer) unless ``include_output``."""
    names = select_layers(module, layers, default=_DEFAULT)
    if layers is None and not include_output:
        names = names[:-1]
    if not names:
        raise ConfigError(
            "l1 pruning: no layer to prune (the only Linear/Conv is the output layer; "
            "pass include_output=True or layers=)"
        )
    return names


@torch.no_grad()
def l1_unit_scores(module: nn.Module, names: list[str]) -> dict[str, Tensor]:
    """``Σ|w|`` over each output unit's weights, per layer."""
    return {n: module.get_submodule(n).weight.detach().flatten(1).abs().sum(1) for n in names}


@torch.no_grad()
def l1_unit_keep(
    module: nn.Module,
    *,
    keep: float,
    layers: LayerSelector = None,
    scope: str = "layer",
    include_output: bool = False,
    min_units: int = 1,
    within: dict[str, KeepSet] | None = None,
) -> dict[str, KeepSet]:
    """One-shot keep-sets keeping the ``keep`` fraction of units with the largest L1 norm.

    :param module: a trained network.
    :param keep: fraction of units kept, in ``(0, 1]`` (of each layer, or of all chosen
        layers together for ``scope="global"``).
    :param layers: which layers lose units (default: every Linear/Conv but the output).
    :param scope: ``"layer"`` or ``"global"`` (see the module docstring).
    :param include_output: also prune the output layer when ``layers`` is ``None``.
    :param min_units: no layer keeps fewer units.
    :param within: earlier keep-sets: only their kept units are candidates (iterative pruning).
    """
    keep = _check_fraction("l1_unit_keep", keep)
    if scope not in ("layer", "global"):
        raise ConfigError(f"l1_unit_keep: scope must be 'layer' or 'global', got {scope!r}")
    if isinstance(min_units, bool) or not isinstance(min_units, int) or min_units < 1:
        raise ConfigError(f"l1_unit_keep: min_units must be an integer >= 1, got {min_units!r}")
    names = pruned_layers(module, layers, include_output)
    scores = l1_unit_scores(module, names)
    if scope == "global":
        scores = {n: s / module.get_submodule(n).weight[0].numel() for n, s in scores.items()}
    alive = {}
    for n, s in scores.items():
        a = torch.ones(s.numel(), dtype=torch.bool)
        if within is not None and n in within and within[n].units is not None:
            a = torch.zeros(s.numel(), dtype=torch.bool)
            a[within[n].units] = True
        alive[n] = a
    ranked = {n: torch.where(alive[n], s.float().cpu(), -torch.inf) for n, s in scores.items()}
    chosen: dict[str, Tensor] = {}
    if scope == "layer":
        for n, s in ranked.items():
            k = max(min(min_units, s.numel()), round(keep * s.numel()))
            chosen[n] = torch.topk(s, k).indices
    else:
        flat = torch.cat(list(ranked.values()))
        k = round(keep * flat.numel())
        top = torch.zeros(flat.numel(), dtype=torch.bool)
        top[torch.topk(flat, k).indices] = True
        offset = 0
        for n, s in ranked.items():
            mine = top[offset : offset + s.numel()]
            offset += s.numel()
            need = min(min_units, s.numel())
            if int(mine.sum()) < need:
                mine = mine.clone()
                mine[torch.topk(s, need).indices] = True
            chosen[n] = mine.nonzero().flatten()
    return {n: KeepSet(units=u, n_units=scores[n].numel()) for n, u in chosen.items()}


def l1_prune(
    module: nn.Module,
    data: Any = None,
    *,
    keep: float,
    steps: int = 1,
    finetune_epochs: int = 0,
    layers: LayerSelector = None,
    scope: str = "layer",
    include_output: bool = False,
    min_units: int = 1,
    **train_options: Any,
) -> dict[str, KeepSet]:
    """Prune ``module`` in place by L1 norm to ``keep`` of its units, in ``steps`` rounds.

    Round ``i`` keeps ``keep ** (i / steps)`` of the units (a geometric schedule, chosen
    among the units the earlier rounds kept), zeroes the others' weight rows and biases
    (:func:`~bayesprune.methods.apply_masks`), then fine-tunes for ``finetune_epochs`` with
    those held at 0 (:func:`~bayesprune.methods.train`, the fit loop). One round and no
    fine-tune is one-shot pruning.

    :param data: the training data (needed when ``finetune_epochs > 0``).
    :param train_options: passed to :func:`~bayesprune.methods.train` (``batch_size``, ``lr``, ...).
    :returns: the final keep-sets; ``extract(module, keep)`` removes the units.
    :raises ValueError: for a bad ``keep``/``steps``/``finetune_epochs``, a fine-tune without
        data, or a fine-tune of a network with BatchNorm (the zeroed units would not stay
        zero after a BatchNorm's shift; prune it one-shot and let ``extract`` cut them).
    """
    keep = _check_fraction("l1_prune", keep)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"l1_prune: steps must be an integer >= 1, got {steps!r}")
    if (
        isinstance(finetune_epochs, bool)
        or not isinstance(finetune_epochs, int)
        or finetune_epochs < 0
    ):
        raise ConfigError(
            f"l1_prune: finetune_epochs must be an integer >= 0, got {finetune_epochs!r}"
        )
    if finetune_epochs and data is None:
        raise ConfigError("l1_prune: finetune_epochs > 0 needs data")
    if finetune_epochs and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()
    ):
        raise ConfigError(
            "l1_prune: finetune_epochs > 0 is not supported for networks with BatchNorm"
        )
    result: dict[str, KeepSet] | None = None
    for i in range(1, steps + 1):
        result = l1_unit_keep(
            module,
            keep=keep ** (i / steps),
            layers=layers,
            scope=scope,
            include_output=include_output,
            min_units=min_units,
            within=result,
        )
        apply_masks(module, result)
        if finetune_epochs:
            train(module, data, epochs=finetune_epochs, keep=result, **train_options)
    assert result is not None
    return result
