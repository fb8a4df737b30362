"""A budgeted fit: the prior's strength as a Lagrange multiplier the fit adapts online.

``fit(net, data, budget=Budget(flops=0.1))`` adds :class:`BudgetControl` to the fit. The
prior's sparsity strength -- ξ and ψ of HALO together, the prices γ of gates -- is
multiplied by ``m = exp(log m)`` (:attr:`~bayesprune.priors.base.Prior.strength`), and
``m`` is steered by the size of the network the posterior currently describes:

- **Size**: every ``every`` optimizer steps the callback reads the posterior back from the
  device (one host sync per ``every`` steps) and measures its size in the budget's measure
  (:class:`~bayesprune.pruning.budget_cost.CostModel`): for gates the *expected* size
  under q (each gated layer keeps ``Σθ`` units in expectation, exact for the bilinear
  count under independent gates), for HALO the weights (units) above the prior's
  threshold.
- **Target**: the size the fit should have reached by step ``t`` of ``T``: the starting
  size until ``warmup·T``, then down to the budget along the cubic of Zhu & Gupta's
  gradual pruning, ``b + (s₀ − b)(1 − p)³`` with ``p`` going from 0 at ``warmup·T`` to 1 at
  ``ramp·T``, then the budget.
- **Multiplier**: dual ascent in log space with a proportional term,
  ``I ← I + k_i·e``, ``log m = I + k_p·e``, on the error ``e = log(ŝ/target)`` between
  the size predicted ``lookahead`` steps on (``ŝ = s + lookahead · ṡ`` while the size
  falls, ``ṡ`` a running estimate of its slope) and the target there: a network heading
  above its target gets a stronger prior, one heading below it a weaker one. Predicting
  matters because removal is not reversible in practice -- a gate at θ = 0 gets no
  likelihood gradient through a ReLU and live removal cuts its unit out -- so the size must
  approach the budget from above without overshooting: the controller aims a ``margin``
  above the budget (the cut trims the rest), and backs off three times faster than it
  presses on. ``m`` starts at ``start`` (a tenth of the configured strength: a strong start
  closes gates before the network has learnt which units matter) and stays within
  ``[1e-4, 1e4]`` of the configured strength.
- **Cut** at ``settle·T``: the posterior is cut to the budget exactly
  (:func:`~bayesprune.pruning.budget_cut.budget_masks`, the rule ``collapse(budget=...)``
  uses) and held there for the rest of the fit while the weights go on training under the
  prior at its last strength: gate probabilities are set to 1 (kept) or 0 (cut) and held,
  HALO's cut weights are held at exactly 0 (a MAP guide is needed for that). The
  posterior the fit returns is then a point mass on the extracted network's gates:
  the stochastic model and the extracted network compute the same function. The hold
  enforces the budget from then on, so the multiplier is released: the prior goes back
  to its configured strength (``m = 1``).

Per-layer units budgets give every named layer a multiplier of its own
(:attr:`~bayesprune.priors.base.Prior.layer_strength`).

Every epoch's history record gets ``budget``: the multiplier, size, target and phase at
its end, and ``budget_trace``: ``[step, multiplier, size, target]`` at every update. The
controller's state lives in ``FitState.stash``, which checkpoints keep, so a resumed fit
steers on from where it stopped.

>>> from bayesprune.inference.callbacks import FIT_OPTIONS
>>> FIT_OPTIONS["budget"] is BudgetControl
True
>>> [round(target_at(t, s0=1.0, budget=0.1, warmup=0.1, ramp=0.5), 3) for t in (0.0, 0.3, 0.5, 0.9)]
[1.0, 0.213, 0.1, 0.1]
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bayesprune.budget import Budget
from bayesprune.errors import CheckpointError, ConfigError
from bayesprune.guides.base import key
from bayesprune.inference.callbacks import FitState, register_fit_option
from bayesprune.priors.weight_masks import HoldMasks, trained_tensor
from bayesprune.pruning.budget_cost import CostModel, check_budget
from bayesprune.pruning.budget_cut import budget_masks

#: ``log m`` stays within this many e-folds of the configured strength
LOG_RANGE = math.log(1e4)


def target_at(t: float, *, s0: float, budget: float, warmup: float, ramp: float) -> float:
    """The size to have reached at fraction ``t`` of the fit (see the module docstring)."""
    if t <= warmup:
        return s0
    p = min(1.0, (t - warmup) / max(ramp - warmup, 1e-12))
    return budget + (s0 - budget) * (1.0 - p) ** 3


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"BudgetControl: {name} must be a fraction of the fit in [0, 1]")
    return float(value)


class BudgetControl:
    """The callback behind ``fit(budget=...)`` (see the module docstring).

    :param budget: the :class:`~bayesprune.budget.Budget` to end at.
    :param every: optimizer steps between updates of the multiplier.
    :param warmup: fraction of the fit before the target starts to fall.
    :param ramp: fraction of the fit at which the target reaches the budget.
    :param settle: fraction of the fit at which the posterior is cut to the budget and
        held (1: never; the fit then ends at the controller's size, not exactly at the
        budget, and ``collapse(budget=...)`` makes the cut).
    :param gain: ``k_i``, the integral gain per update (``k_p = 4 k_i``).
    :param start: the multiplier's starting value (a fraction of the configured strength).
    :param margin: the controller aims at ``budget · (1 + margin)``; the cut at ``settle``
        removes the rest, so a lagging controller still ends at the budget.
    :param lookahead: optimizer steps ahead the size is predicted and compared with the
        target (0: the size now); default 200 (about the steps a gate takes from 0.9 to 0
        at lr 1e-2), at most a twentieth of the fit.
    """

    def __init__(
        self,
        budget: Budget,
        *,
        every: int = 10,
        warmup: float = 0.05,
        ramp: float = 0.6,
        settle: float = 0.7,
        gain: float = 0.05,
        lookahead: int | None = None,
        start: float = 0.1,
        margin: float = 0.05,
    ) -> None:
        if not isinstance(budget, Budget):
            raise ConfigError(f"fit: budget must be a bayesprune.Budget, got {budget!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"BudgetControl: every must be an integer >= 1, got {every!r}")
        self.warmup = _fraction("warmup", warmup)
        self.ramp = _fraction("ramp", ramp)
        self.settle = _fraction("settle", settle)
        if not self.warmup <= self.ramp <= self.settle:
            raise ConfigError("BudgetControl: need warmup <= ramp <= settle")
        if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not gain > 0:
            raise ConfigError(f"BudgetControl: gain must be > 0, got {gain!r}")
        if lookahead is not None and (
            isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0
        ):
            raise ConfigError(
                f"BudgetControl: lookahead must be an integer >= 0, got {lookahead!r}"
            )
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not start > 0:
            raise ConfigError(f"BudgetControl: start must be > 0, got {start!r}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
            raise ConfigError(f"BudgetControl: margin must be >= 0, got {margin!r}")
        self.budget, self.every, self.gain = budget, every, float(gain)
        self.start, self.margin = float(start), float(margin)
        self.lookahead = lookahead
        self.model: CostModel | None = None
        self._weights_hold: HoldMasks | None = None

    # --- set-up ---------------------------------------------------------------------------
    def check(self, net: Any, guide: Any) -> None:
        """Refuse, before anything is trained or written, a budget this net's prior cannot
        be steered to (:func:`~bayesprune.pruning.budget_cost.check_budget`) or whose cut
        this guide cannot hold.

        :raises ConfigError: naming the measure, the prior or the guide.
        """
        check_budget(net, self.budget)
        if self.budget.metric in ("weights", "units") or net.example_input is not None:
            self._check_reachable(net)
        if net.gates:
            return
        for s in net.sites:  # HALO's cut is held on the weights: only a MAP guide can
            if s.role == "weight":
                try:
                    trained_tensor(net, guide, s.replaces)
                except ConfigError:
                    raise ConfigError(
                        f"Budget: {type(guide).__name__} cannot express the cut network "
                        f"(site {s.name!r} would stay random after its weights are cut); "
                        "fit a budget for this prior with a MAP guide"
                    ) from None

    def _check_reachable(self, net: Any) -> None:
        """A budget below the smallest network the cut can leave (one unit per layer, one
        weight) is refused now, not when the fit reaches its cut."""
        model = CostModel(net, self.budget)
        per = self.budget.per_layer
        if per is not None:
            for layer, frac in per.items():
                if math.floor(frac * model.units_built[layer] + 1e-9) < 1:
                    raise ConfigError(
                        f"Budget: units[{layer!r}]={frac:g} leaves no unit of the "
                        f"{model.units_built[layer] * model.tiles[layer]} of layer {layer!r}; at "
                        "least one stays"
                    )
            return
        smallest = model.smallest()
        if self.budget.fraction < smallest:
            raise ConfigError(
                f"Budget: {self.budget.metric}={self.budget.fraction:g} is smaller than the "
                f"smallest network a cut can leave ({smallest:.4g} of the network as built: "
                "one unit per layer, or one weight)"
            )

    def on_fit_start(self, state: FitState) -> None:
        net = state.net
        self.check(net, state.guide)
        if not state.steps_per_epoch:
            raise ConfigError(
                "Budget: a budgeted fit needs the number of batches per epoch, and this "
                "loader has no len()"
            )
        self.model = CostModel(net, self.budget)
        self.total = max(state.epochs * state.steps_per_epoch, 1)
        self.ahead = (
            self.lookahead if self.lookahead is not None else min(200, math.ceil(self.total / 20))
        )
        # steps are counted done: the cut comes after step ceil(settle·T), the last at worst
        self.cut_step = min(math.ceil(self.settle * self.total), self.total)
        if self.settle >= 1:
            self.cut_step = None
        stash = state.stash.setdefault("budget", {})
        settings = self.settings()
        if "settings" in stash and stash["settings"] != settings:  # a resumed fit
            raise CheckpointError(
                f"fit: the checkpoint's fit steered to {stash['settings']}, this fit to "
                f"{settings}: resume with the same budget and controller settings"
            )
        stash["settings"] = settings
        if "s0" not in stash:
            sizes = self._sizes(state)
            stash.update(
                log_i=[math.log(self.start)] * len(sizes),
                s0=sizes,
                last=[sizes, 0],
                rate=[0.0] * len(sizes),
                trace=[],
                cut=False,
            )
        self._apply(state, stash)
        if stash["cut"] and not net.gates:  # a resumed fit past its cut: hold its zeros
            masks = {}
            for s in net.sites:
                if s.role == "weight":
                    masks[s.replaces] = trained_tensor(net, state.guide, s.replaces) != 0
            self._weights_hold = HoldMasks(masks)
            self._weights_hold.attach(state)

    def settings(self) -> dict[str, Any]:
        """The budget and the controller's settings, as JSON values (checkpoints keep them:
        a resume must steer to the same)."""
        return {
            "budget": self.budget.config(),
            "every": self.every,
            "warmup": self.warmup,
            "ramp": self.ramp,
            "settle": self.settle,
            "gain": self.gain,
            "lookahead": self.lookahead,
            "start": self.start,
            "margin": self.margin,
        }

    def _layers(self) -> list[str | None]:
        """``None`` (one multiplier) or the layers of a per-layer units budget."""
        per = self.budget.per_layer
        return [None] if per is None else sorted(per)

    def _targets(self) -> list[float]:
        """What the controller aims at: the budget plus the margin the cut trims off."""
        per = self.budget.per_layer
        fractions = [self.budget.fraction] if per is None else [per[n] for n in sorted(per)]
        return [min(f * (1 + self.margin), 1.0) for f in fractions]

    # --- measuring ------------------------------------------------------------------------
    @torch.no_grad()
    def _sizes(self, state: FitState) -> list[float]:
        """The posterior's size now, one per multiplier (one host sync)."""
        net, guide, model = state.net, state.guide, self.model
        assert model is not None
        if net.gates:
            sums = torch.stack([guide.gate_theta(s).clamp(0, 1).sum() for s in net.gates]).tolist()
            kept = {s.layer: v for s, v in zip(net.gates, sums, strict=True)}
        else:
            point = guide.point()
            thr = net.prior.default_threshold
            alive = torch.stack(
                [(net.prior.scores(sites, point) > thr).sum() for sites in net.layer_sites.values()]
            ).tolist()
            kept = dict(zip(net.layer_sites, map(float, alive), strict=True))
            if self.budget.metric == "weights":
                kept = {"*": sum(kept.values())}
        per = self.budget.per_layer
        if per is None:
            return [model.size(kept)]
        sizes = model.layer_sizes(kept)
        return [sizes[n] for n in sorted(per)]

    # --- steering -------------------------------------------------------------------------
    def _apply(self, state: FitState, stash: dict[str, Any]) -> None:
        prior = state.net.prior
        logs = stash.get("log_m", stash["log_i"])
        if self.budget.per_layer is None:
            prior.strength = math.exp(logs[0])
        else:
            prior.layer_strength = {
                n: math.exp(v) for n, v in zip(self._layers(), logs, strict=True)
            }

    def on_step_end(self, state: FitState) -> None:
        step = state.global_step + 1  # steps done (the loop counts this one after the hooks)
        stash = state.stash["budget"]
        if stash["cut"]:
            self._hold(state)
            return
        if self.cut_step is not None and step >= self.cut_step:
            self._cut(state, stash)
            return
        if step % self.every:
            return
        sizes = self._sizes(state)
        (before, then) = stash["last"]
        dt = max(step - then, 1)
        rate = [
            0.5 * r + 0.5 * (s - b) / dt
            for r, s, b in zip(stash["rate"], sizes, before, strict=True)
        ]
        stash["last"], stash["rate"] = [sizes, step], rate
        ahead = (step + self.ahead) / self.total
        targets = [
            target_at(ahead, s0=s0, budget=b, warmup=self.warmup, ramp=self.ramp)
            for s0, b in zip(stash["s0"], self._targets(), strict=True)
        ]
        log_i, log_m = [], []
        for i, (size, target) in enumerate(zip(sizes, targets, strict=True)):
            # where the size is heading: shrinking sizes keep shrinking for a while (gates
            # already on their way to 0), so steer on the size ``lookahead`` steps on
            predicted = size + self.ahead * min(rate[i], 0.0)
            e = math.log(max(predicted, 0.2 * size, 1e-12) / max(target, 1e-12))
            if e < 0:  # heading below the target: back off fast, removal is not undone
                e *= 3.0
            integral = min(max(stash["log_i"][i] + self.gain * e, -LOG_RANGE), LOG_RANGE)
            log_i.append(integral)
            log_m.append(min(max(integral + 4 * self.gain * e, -LOG_RANGE), LOG_RANGE))
        stash["log_i"], stash["log_m"] = log_i, log_m
        self._apply(state, stash)
        if len(sizes) == 1:
            stash["trace"].append([step, math.exp(log_m[0]), sizes[0], targets[0]])
        else:
            stash["trace"].append([step, [math.exp(v) for v in log_m], sizes, targets])

    # --- the cut --------------------------------------------------------------------------
    @torch.no_grad()
    def _cut(self, state: FitState, stash: dict[str, Any]) -> None:
        net, guide = state.net, state.guide
        masks, report = budget_masks(net, guide.point(), self.budget, model=self.model)
        stash["cut"] = True
        # the hold enforces the budget from now on: the multiplier is released, and the
        # weights train under the prior as configured
        stash["log_i"] = stash["log_m"] = [0.0] * len(stash["log_i"])
        self._apply(state, stash)
        stash["report"] = {
            "step": state.global_step + 1,
            "posterior": report.posterior,
            "final": report.final,
            "cut": report.cut,
        }
        if net.gates:
            for s in net.gates:
                theta = guide.gate_probs[key(s.name)]
                theta.copy_(masks[s.layer].to(theta.device, theta.dtype).reshape(theta.shape))
        else:
            weights = {
                s.replaces: masks[s.layer]
                for s in net.sites
                if s.role == "weight" and masks[s.layer].shape == tuple(s.shape)
            }
            if not weights:  # per-unit HALO: the unit's whole weight row goes
                weights = {
                    s.replaces: masks[s.layer]
                    .reshape((-1,) + (1,) * (len(s.shape) - 1))
                    .expand(s.shape)
                    for s in net.sites
                    if s.role == "weight"
                }
            hold = HoldMasks({n: m.clone() for n, m in weights.items()})
            hold.attach(state)
            self._weights_hold = hold

    @torch.no_grad()
    def _hold(self, state: FitState) -> None:
        """After the cut, every step: gate probabilities back to 0 or 1 (derived from
        their own values, so live removal's slicing needs nothing), HALO's cut weights
        back to 0."""
        if state.net.gates:
            for theta in state.guide.gate_probs.values():
                theta.copy_(theta > 0.5)
        elif self._weights_hold is not None:
            self._weights_hold.on_step_end(state)

    def on_epoch_end(self, state: FitState) -> None:
        stash = state.stash["budget"]
        record = state.history[-1]
        trace = stash["trace"]
        record["budget"] = {
            "metric": self.budget.metric,
            "target": self.budget.config()[self.budget.metric],
            "multiplier": _one([math.exp(v) for v in stash.get("log_m", stash["log_i"])]),
            "size": _one(self._sizes(state)),
            "phase": "cut" if stash["cut"] else "steer",
            **({"cut_report": stash["report"]} if "report" in stash else {}),
        }
        record["budget_trace"] = trace
        stash["trace"] = []


def _one(values: list[float]) -> float | list[float]:
    """A single multiplier's value as a number, per-layer ones as a list."""
    return values[0] if len(values) == 1 else values


register_fit_option("budget", BudgetControl)
