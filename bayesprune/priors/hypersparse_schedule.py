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
the fit's data (``state.val`` when the fit provides it -- a split, a pair or a loader --,
else ``Dataset.val``), never test. Under data parallelism a sharded validation loader's hits
and counts are added over the processes, so every process takes the same stop decision.

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

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from bayesprune.data.batches import LoaderBatches, is_loader
from bayesprune.data.dataset import Split
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


def validation_split(state: Any) -> Any:
    """What the stop rule scores: the fit's validation data -- whatever ``fit(val=...)``
    takes (a :class:`~bayesprune.data.Split`, an ``(x, y)`` pair, a ``DataLoader`` or a list
    of ``(x, y)`` batches) -- else the ``Dataset``'s val split; a pair comes back as a
    :class:`~bayesprune.data.Split`.

    :raises ValueError: when the fit has none (ART's stop rule needs one).
    """
    val = getattr(state, "val", None)
    if val is None:
        val = getattr(state.data, "val", None)
    if val is not None and hasattr(val, "x") and hasattr(val, "y"):
        return Split(val.x, val.y)
    if val is not None and is_loader(val):
        return val
    if isinstance(val, (tuple, list)) and len(val) == 2:
        return Split(torch.as_tensor(val[0]), torch.as_tensor(val[1]))
    raise ConfigError(
        "HyperSparse: ART's stop rule scores the magnitude-pruned network on a validation "
        "split; fit it on a bayesprune Dataset with a val split (e.g. fashion_mnist()) or "
        "pass fit(val=...)"
    )


@torch.inference_mode()
def accuracy(
    net: Any,
    values: dict[str, Tensor],
    val: Any,
    *,
    replicas: Any = None,
    batch_size: int = 2048,
) -> float:
    """Top-1 accuracy of ``net`` run with site ``values`` (eval mode) on ``val``, a
    :class:`~bayesprune.data.Split` or a loader of ``(x, y)`` batches.

    A loader with a ``DistributedSampler`` under data parallelism is scored in parts: the
    hits and counts are added over the processes (``replicas``), so every process gets the
    accuracy on the whole split and takes the same stop decision. (``replicas`` is the fit's
    :class:`~bayesprune.inference.distributed.Replicas`, ``state.replicas``.)

    >>> import torch.nn as nn
    >>> from bayesprune import sparsify
    >>> from bayesprune.data import Split
    >>> from bayesprune.priors import HyperSparse
    >>> _ = torch.manual_seed(0)
    >>> net = sparsify(nn.Linear(3, 2), HyperSparse(sparsity=0.5))
    >>> x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    >>> point = {s.name: net.module.weight.detach() for s in net.sites}
    >>> batches = [(x[:5], y[:5]), (x[5:], y[5:])]
    >>> accuracy(net, point, batches) == accuracy(net, point, Split(x, y))
    True
    """
    if isinstance(val, Split):
        batches: Iterable[tuple[Tensor, Tensor]] = [(val.x, val.y)]
        sharded = False
    else:
        src = LoaderBatches(val, device=net.device, who="HyperSparse", split="validation")
        batches, sharded = src.epoch(0, seed=0), src.sharded
    sums = torch.zeros(2, dtype=torch.float64, device=net.device)  # hits, examples
    for x, y in batches:
        x, y = x.to(net.device), y.to(net.device)
        hits = (net.predict(values, x, batch_size=batch_size).argmax(-1) == y).sum()
        sums += torch.stack([hits.double(), hits.new_tensor(y.shape[0]).double()])
    if sharded and replicas is not None and replicas.world > 1:
        sums = replicas.mean(sums) * replicas.world
    hits, n = sums.tolist()
    return hits / max(n, 1.0)


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
                record["dense_val_accuracy"] = accuracy(
                    state.net, state.guide.point(), validation_split(state), replicas=state.replicas
                )
            return False
        if self.phase == "regularise":
            point = state.guide.point()
            masks = self.masks(state, point)
            pruned = {k: v * masks[k] if k in masks else v for k, v in point.items()}
            record["pruned_val_accuracy"] = accuracy(
                state.net, pruned, validation_split(state), replicas=state.replicas
            )
            if stop_rule_fires(prior, state.history, end):
                record["stop_rule"] = True
                return prior.finetune == 0
            return False
        return self.index + 1 >= prior.finetune
