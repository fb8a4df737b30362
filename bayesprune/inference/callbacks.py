"""Hooks into the SVI loop.

A callback is any object with some of these methods; each gets the live
:class:`FitState`:

- ``on_fit_start(state)``
- ``on_epoch_start(state)``
- ``on_epoch_end(state) -> bool | None`` -- return ``True`` to stop the fit
  after this epoch (the checkpoint is still written).

A callback that changes the set of trained parameters (e.g. removes units)
calls ``state.rebuild_optimizer()`` afterwards.

>>> class StopAt:
...     def __init__(self, acc): self.acc = acc
...     def on_epoch_end(self, state):
...         return state.history[-1].get("val_accuracy", 0) >= self.acc
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bayesprune.data.dataset import Dataset
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet


@dataclass
class FitState:
    """Everything the loop holds; callbacks may read and (carefully) change it."""

    net: BayesianNet
    guide: Guide
    data: Dataset
    optimizer: torch.optim.Optimizer
    make_optimizer: Callable[[], torch.optim.Optimizer]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elbo: list[float] = field(default_factory=list)
    elbo_steps: list[int] = field(default_factory=list)

    def rebuild_optimizer(self) -> None:
        """Make a new optimizer over the current parameters (after a structural change),
        carrying over per-parameter state where the parameter object survived."""
        old = self.optimizer
        new = self.make_optimizer()
        for group in new.param_groups:
            for p in group["params"]:
                if p in old.state:
                    new.state[p] = old.state[p]
        if self.scheduler is not None:
            self.scheduler.optimizer = new
            for g_new, g_old in zip(new.param_groups, old.param_groups, strict=False):
                g_new["lr"] = g_old["lr"]
                if "initial_lr" in g_old:
                    g_new["initial_lr"] = g_old["initial_lr"]
        self.optimizer = new


def call(callbacks: list[Any], hook: str, state: FitState) -> bool:
    """Run ``hook`` on every callback that has it; ``True`` if any asked to stop."""
    stop = False
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None and fn(state):
            stop = True
    return stop
