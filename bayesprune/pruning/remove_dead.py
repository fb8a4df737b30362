"""Removal of dead units during training: the callback behind ``fit(remove_dead=True)``.

>>> from bayesprune.inference.callbacks import FIT_OPTIONS, RESTORERS
>>> FIT_OPTIONS["remove_dead"] is RemoveDeadUnits, replay_checkpoint_removals in RESTORERS
(True, True)
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide
from bayesprune.inference.callbacks import FitState, register_fit_option, register_restorer
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.param_gates import is_param_gate
from bayesprune.nn.unit_origin import unit_origin
from bayesprune.priors.group_ties import tied_units, tile_of
from bayesprune.pruning.live import remove_units, replay_removals

log = logging.getLogger(__name__)


class RemoveDeadUnits:
    """Physically remove dead units at the end of every epoch, so later epochs get cheaper.

    The rule: a unit of a gated layer is dead when its gate probability θ (the guide's
    ``gate_probs``, projected into [0, 1] after every step) is exactly 0 -- its gate then
    samples 0 on every draw, so the unit contributes nothing and nothing flows back to
    it. At the end of every epoch all dead units are cut out of the module, the guide
    and the optimizer (:func:`~bayesprune.pruning.remove_units`; units coupled
    across layers, e.g. by a residual sum, only when dead in every coupled layer). A
    layer whose every gate is at 0 keeps one (closed) unit, so the network stays
    connected. Priors without unit gates (HALO, block gates): nothing happens. Heads of
    attention layers are not removed live: a dead head stays, its gate closed (its
    out-projection columns multiplied by 0), and ``extract`` removes it. A gate tied
    across the groups of a grouped conv (:mod:`bayesprune.priors.group_ties`) removes its
    ``tile`` units together, one from every group, so the conv stays balanced.

    Removal changes the optimisation, not only its speed. Under the fused loss's
    straight-through estimator (:mod:`bayesprune.inference.losses`) a gate at θ = 0 still
    gets a gradient (``∂z/∂θ = 1``, though its draw is always 0), so without removal a
    step could push it back above 0 and its unit would return; once removed, it never
    can. A fit with ``remove_dead=True`` is therefore not the same fit, faster -- it is
    what the method's paper does (units whose gate reached 0 are cut during training).
    ``benchmarks/reopened_gates.py`` counts how often closed gates reopen without
    removal: never, in 3 epochs of LeNet-300-100 and LeNet-5 on Fashion-MNIST at two
    prices. There each gate multiplies a layer's output before a ReLU (the default
    ``UnitGates(place="pre-activation")``), and torch's ``relu'(0) = 0`` makes a closed
    gate's likelihood slope exactly 0, so only its price acts and holds it at 0 (placed
    after the nonlinearity, ``"post-activation"``, a closed gate keeps its unit's slope
    and could reopen before removal); with GELU a closed gate is sometimes pushed up, but Adam's
    momentum kept every one closed in the measured fits (``benchmarks/README.md``).

    Each epoch's history record gets ``removed``: ``{layer: units removed}``;
    ``units`` (units alive per layer) is recorded by the loop, and what was removed so
    far (original indexing) by :func:`~bayesprune.nn.unit_origin.removed_units`, which
    checkpoints store so a resumed fit redoes the removals first.

    With ``every=N`` (``fit(..., remove_dead=N)``) the same rule also runs after every
    ``N``-th optimizer step of the fit, so that units which die early stop costing
    before the epoch ends; the epoch's ``removed`` then sums all its removals. Each check
    reads θ back from the device: one host sync per ``N`` steps.

    >>> cb = RemoveDeadUnits()  # or fit(..., remove_dead=True)
    >>> RemoveDeadUnits(every=50).every  # or fit(..., remove_dead=50)
    50
    """

    def __init__(self, every: int | None = None) -> None:
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int) or every < 1
        ):
            raise ConfigError(f"RemoveDeadUnits: every must be an integer >= 1, got {every!r}")
        self.every = every
        self._futile: object = None  # a dead set that coupling kept from being removed

    def on_step_end(self, state: FitState) -> None:
        # global_step counts the steps done before this one
        if self.every is not None and (state.global_step + 1) % self.every == 0:
            self._remove(state)

    def on_epoch_end(self, state: FitState) -> None:
        layers = self._remove(state)
        if layers is None or not state.history:
            return None
        # derived from the widths, not counted: a fit resumed mid-epoch records the same
        origin = unit_origin(state.net)
        earlier: dict[str, int] = {}
        for h in state.history[:-1]:
            for n, k in (h.get("removed") or {}).items():
                earlier[n] = earlier.get(n, 0) + k
        state.history[-1]["removed"] = {
            n: (origin.n_units.get(n, w) if origin else w) - w - earlier.get(n, 0)
            for n, w in ((n, _width(state.net, n)) for n in layers)
        }
        return None

    def _remove(self, state: FitState) -> list[str] | None:
        """Remove the dead units now; the unit-gated layers, or ``None`` if there are none."""
        keep = dead_units_keep(state.net, state.guide)
        if keep is None:
            return None
        before = {n: _width(state.net, n) for n in keep}
        signature = tuple((n, tuple(k.tolist())) for n, k in keep.items())
        if any(k.numel() < before[n] for n, k in keep.items()) and signature != self._futile:
            t0 = time.perf_counter()
            remove_units(state.net, state.guide, keep, state.optimizer)
            removed = {n: before[n] - _width(state.net, n) for n in before}
            if not any(removed.values()):
                self._futile = signature
            log.info(
                "removed dead units %s in %.3fs; widths now %s",
                removed,
                time.perf_counter() - t0,
                {n: _width(state.net, n) for n in before},
            )
        return list(before)


def _width(net: BayesianNet, layer: str) -> int:
    return int(net.module.get_submodule(layer).weight.shape[0])


@torch.no_grad()
def dead_units_keep(net: BayesianNet, guide: Guide) -> dict[str, Tensor] | None:
    """The units to keep by :class:`RemoveDeadUnits`' rule (θ != 0), for every layer with
    unit gates, in current indexing; ``None`` if the net has no unit gates."""
    keep: dict[str, Tensor] = {}
    for s in net.gates:
        if is_param_gate(s):
            continue  # a head gate: dead heads stay (out-projection columns at 0) until extract
        if s.meta.get("block") or not isinstance(
            getattr(net.module.get_submodule(s.layer), "weight", None), Tensor
        ):
            continue  # a block gate: the block becomes its shortcut at collapse, not here
        theta = guide.gate_theta(s).detach()
        alive = (theta != 0).nonzero().flatten().cpu()
        if alive.numel() == 0:
            if theta.numel() > 1:
                log.warning("every gate of layer %r is closed; keeping one unit", s.layer)
            alive = torch.zeros(1, dtype=torch.long)
        tile = tile_of(s)
        # a gate tied across groups: its units p, p + period, ... go together
        keep[s.layer] = tied_units(alive, theta.numel(), tile) if tile > 1 else alive
    return keep or None


def replay_checkpoint_removals(state: FitState, checkpoint: dict[str, Any]) -> None:
    """Cut a freshly built net down to a checkpoint's units before its state loads."""
    replay_removals(state.net, state.guide, checkpoint.get("removed") or {}, state.optimizer)


register_fit_option("remove_dead", RemoveDeadUnits)
register_restorer(replay_checkpoint_removals)
