"""What :func:`bayesprune.fit` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet


@dataclass
class FitResult:
    """The fitted model and how the fit went.

    :ivar net: the model (its deterministic parameters were trained in place).
    :ivar guide: the fitted guide (the posterior).
    :ivar elbo: per-example negative ELBO, one value every ``log_every`` steps; when every
        site of the guide is a point mass (MAP without gates) it is the negative log joint
        density at that point (shown as ``-log p/n``), not an ELBO.
    :ivar elbo_steps: the global step of each ``elbo`` value.
    :ivar history: one dict per epoch: ``epoch``, ``loss`` (mean per-example -ELBO, or
        -log joint for a point-mass guide, as ``elbo``),
        ``seconds``, ``lr`` (learning rate per parameter role at the epoch's end), validation
        metrics, ``kept`` fraction and anything callbacks add.
    :ivar checkpoint: path of the last checkpoint written, if any.
    :ivar stopped_early: a callback stopped the fit before ``epochs``.
    :ivar removed: units removed during the fit (``fit(..., remove_dead=True)``): for each
        layer that lost units, the original indices of the units it has left.
    """

    net: BayesianNet
    guide: Guide
    elbo: list[float] = field(default_factory=list)
    elbo_steps: list[int] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None
    stopped_early: bool = False
    removed: dict[str, Tensor] = field(default_factory=dict)

    @property
    def epoch_seconds(self) -> list[float]:
        return [h["seconds"] for h in self.history]

    @property
    def final(self) -> dict[str, Any]:
        """The last epoch's record (empty before any epoch finished)."""
        return self.history[-1] if self.history else {}
