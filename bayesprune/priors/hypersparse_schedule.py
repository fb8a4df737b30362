"""ART's phases as a fit callback: warm-up, growing HyperSparse weight, stop rule, fine-tune.

Everything is derived from the epoch number and the recorded history (never from state held
across epochs), so a resumed fit runs the same phases with the same α:

- epochs ``0 .. warmup-1``: **warm-up**, α = 0; the last ``window`` of them record the dense
  network's validation accuracy (``dense_val_accuracy``);
- then **regularise**: ``α = λ_init · η^(epoch - warmup)``; each epoch records the validation
  accuracy of the network magnitude-pruned (globally) at the target rate
  (``pruned_val_accuracy``). The stop rule (:func:`stop_rule_fires`) fires at the end of the
  first epoch where the mean of the last ``window`` of those reaches the dense reference
  (mean of the recorded dense accuracies) minus ``tolerance``, or after ``max_regularise``
  regularised epochs;
- then **finetune** for ``finetune`` epochs: α = 0 and the weights outside the global
  magnitude mask at the target rate held at exactly 0
  (:class:`~bayesprune.priors.weight_masks.HoldMasks`); the fit stops after them.

Every epoch's record gets ``phase`` and ``alpha``. Validation uses the validation split of
the fit's data (``state.val`` when the fit provides it, else ``Dataset.val``), never test.

>>> from types import SimpleNamespace
>>> prior = SimpleNamespace(warmup=1, lambda_init=1e-4, eta=2.0, window=1, tolerance=0.0,
...                         max_regularise=None)
>>> history = [{"dense_val_accuracy": 0.9}, {"pruned_val_accuracy": 0.8}]
>>> plan(prior, 2, history)
('regularise', 0.0002, 1)
>>> plan(prior, 3, history + [{"pruned_val_accuracy": 0.91}])
('finetune', 0.0, 0)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.priors.weight_masks import HoldMasks, top_magnitude_masks


def dense_reference(prior: Any, history: list[dict[str, Any]]) -> float | None:
    """Mean ``dense_val_accuracy`` over the warm-up records that have it."""
    accs = [h["dense_val_accuracy"] for h in history[: prior.warmup] if "dense_val_accuracy" in h]
    return sum(accs) / len(accs) if accs else None


def stop_rule_fires(prior: Any, history: list[dict[str, Any]], end: int) -> bool:
    """Whether the stop rule fires at the end of regularised epoch ``end`` (0-based index
    into ``history``)."""
    reg = history[prior.warmup : end + 1]
    if prior.max_regularise is not None and len(reg) >= prior.max_regularise:
        return True
    dense = dense_reference(prior, history)
    if dense is None or len(reg) < prior.window:
        return False
    recent = [h.get("pruned_val_accuracy") for h in reg[-prior.window :]]
    if any(a is None for a in recent):
        return False
    return sum(recent) / len(recent) >= dense - prior.tolerance


def switch_epoch(prior: Any, history: list[dict[str, Any]]) -> int | None:
    """The regularised epoch at whose end the stop rule fired, or ``None``."""
    for end in range(prior.warmup, len(history)):
        if stop_rule_fires(prior, history, end):
            return end
    return None


def plan(prior: Any, epoch: int, history: list[dict[str, Any]]) -> tuple[str, float, int]:
    """``(phase, α, index within the phase)`` of 0-based ``epoch`` given the records of the
    epochs before it."""
    if epoch < prior.warmup:
        return "warmup", 0.0, epoch
    switch = switch_epoch(prior, history[:epoch])
    if switch is None or epoch <= switch:
        i = epoch - prior.warmup
        return "regularise", prior.lambda_init * prior.eta**i, i
    return "finetune", 0.0, epoch - switch - 1


def validation_split(state: Any) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of the fit's validation split.

    :raises ValueError: when the fit has none (ART's stop rule needs one).
    """
    val = getattr(state, "val", None)
    if val is None:
        val = getattr(state.data, "val", None)
    if val is not None and hasattr(val, "x") and hasattr(val, "y"):
        return val.x, val.y
    if isinstance(val, (tuple, list)) and len(val) == 2:
        return val[0], val[1]
    raise ConfigError(
        "HyperSparse: ART's stop rule scores the magnitude-pruned network on a validation "
        "split; fit it on a bayesprune Dataset with a val split (e.g. fashion_mnist())"
    )


@torch.inference_mode()
def accuracy(net: Any, values: dict[str, Tensor], x: Tensor, y: Tensor, batch: int = 2048) -> float:
    """Top-1 accuracy of ``net`` run with site ``values`` (eval mode) on ``(x, y)``."""
    hits = torch.zeros((), dtype=torch.long, device=net.device)
    for i in range(0, x.shape[0], batch):
        xb, yb = x[i : i + batch].to(net.device), y[i : i + batch].to(net.device)
        hits += (net.predict(values, xb).argmax(-1) == yb).sum()
    return int(hits) / max(x.shape[0], 1)


class ARTSchedule:
    """The fit callback of :class:`~bayesprune.priors.HyperSparse` (see the module docstring)."""

    def __init__(self, prior: Any) -> None:
        self.prior = prior
        self.phase, self.alpha, self.index = "warmup", 0.0, 0
        self._hold: HoldMasks | None = None

    def _weights(self, state: Any) -> list[Any]:
        return [s for s in state.net.sites if s.role == "weight"]

    def masks(self, state: Any, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Global magnitude masks at the target rate, by site name."""
        sites = self._weights(state)
        return top_magnitude_masks({s.name: values[s.name] for s in sites}, 1 - self.prior.sparsity)

    def on_fit_start(self, state: Any) -> None:
        validation_split(state)  # fail before training, not after the warm-up

    def on_epoch_start(self, state: Any) -> None:
        self.phase, self.alpha, self.index = plan(self.prior, state.epoch, state.history)
        self.prior.alpha = self.alpha
        self._hold = None
        if self.phase == "finetune":
            by_site = self.masks(state, state.guide.point())
            hold = HoldMasks({s.replaces: by_site[s.name] for s in self._weights(state)})
            hold.attach(state)
            self._hold = hold

    def on_step_end(self, state: Any) -> None:
        if self._hold is not None:
            self._hold.on_step_end(state)

    def on_epoch_end(self, state: Any) -> bool:
        prior, record = self.prior, state.history[-1]
        end = len(state.history) - 1
        record["phase"], record["alpha"] = self.phase, self.alpha
        if self.phase == "warmup":
            if end >= prior.warmup - prior.window:
                x, y = validation_split(state)
                record["dense_val_accuracy"] = accuracy(state.net, state.guide.point(), x, y)
            return False
        if self.phase == "regularise":
            x, y = validation_split(state)
            point = state.guide.point()
            masks = self.masks(state, point)
            pruned = {k: v * masks[k] if k in masks else v for k, v in point.items()}
            record["pruned_val_accuracy"] = accuracy(state.net, pruned, x, y)
            if stop_rule_fires(prior, state.history, end):
                record["stop_rule"] = True
                return prior.finetune == 0
            return False
        return self.index + 1 >= prior.finetune
