"""Hooks into the SVI loop.

A callback is any object with some of these methods; each gets the live
:class:`FitState`:

- ``on_fit_start(state)``
- ``on_epoch_start(state)``
- ``on_step_end(state)`` -- after every optimizer step (and the guide's projection);
  it must not read values from the device (that would be a host sync per step)
- ``on_epoch_end(state) -> bool | None`` -- return ``True`` to stop the fit
  after this epoch (the checkpoint is still written).

A prior adds its own callbacks to every fit through ``Prior.fit_callbacks()``.


A callback that changes the set of trained parameters calls
``state.rebuild_optimizer()`` afterwards -- or, like
:class:`bayesprune.pruning.RemoveDeadUnits`, remaps ``state.optimizer`` in place,
slicing its per-parameter state.

Callbacks that ``fit`` builds from its own keyword arguments (``remove_dead=True``) are
registered by the floor that owns them (:func:`register_fit_option`), and so are the
steps that bring a fresh model to a checkpoint's shapes on resume
(:func:`register_restorer`), so the fit loop does not import them.

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

from bayesprune.guides.base import Guide
from bayesprune.inference.distributed import Replicas
from bayesprune.nn.bayesian_net import BayesianNet


@dataclass
class FitState:
    """Everything the loop holds; callbacks may read and (carefully) change it."""

    net: BayesianNet
    guide: Guide
    data: Any  # what fit was given: a Dataset, an (x, y) pair or a loader
    optimizer: torch.optim.Optimizer
    make_optimizer: Callable[[], torch.optim.Optimizer]
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elbo: list[float] = field(default_factory=list)
    elbo_steps: list[int] = field(default_factory=list)
    replicas: Replicas = field(default_factory=Replicas)
    #: what each epoch is scored on (a Split or a loader; None: no validation)
    val: Any = None
    #: the step's mini-batch ``(x, y, n_data)`` while ``on_step_end`` callbacks run
    batch: tuple[Any, ...] | None = None
    #: the fit's loss estimator, ``loss_fn(net, guide, x, y, n_data)`` (not divided by n_data)
    loss_fn: Callable[..., Any] | None = None
    #: epochs the fit runs, and optimizer steps per epoch (``None``: a loader without len())
    epochs: int = 0
    steps_per_epoch: int | None = None
    #: callbacks' own state, JSON-able, kept by checkpoints and restored on resume (e.g. a
    #: budget's multiplier), under one key per callback
    stash: dict[str, Any] = field(default_factory=dict)

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


def call(callbacks: list[Any], hook: str, state: FitState, *args: Any) -> bool:
    """Run ``hook`` on every callback that has it; ``True`` if any asked to stop."""
    stop = False
    for cb in callbacks:
        fn = getattr(cb, hook, None)
        if fn is not None and fn(state, *args):
            stop = True
    return stop


#: ``fit`` keyword -> the callback class it switches on (filled by the floors that own them)
FIT_OPTIONS: dict[str, Callable[[], Any]] = {}


def register_fit_option(name: str, factory: Callable[[], Any]) -> None:
    """Let ``fit(name=True)`` add ``factory()`` to its callbacks.

    >>> register_fit_option("demo_option", object)
    >>> FIT_OPTIONS.pop("demo_option") is object
    True
    """
    FIT_OPTIONS[name] = factory


#: run before a resumed fit loads its checkpoint, to bring the fresh model to the
#: checkpoint's shapes: ``fn(state, checkpoint)``, raising ValueError/TypeError on a mismatch
RESTORERS: list[Callable[[FitState, dict[str, Any]], None]] = []


def register_restorer(fn: Callable[[FitState, dict[str, Any]], None]) -> None:
    """Run ``fn(state, checkpoint)`` whenever a fit resumes, before its state dicts load."""
    if fn not in RESTORERS:
        RESTORERS.append(fn)


def fit_option(name: str, *args: Any) -> Any:
    """A new callback for ``fit(name=True)`` (``fit(name=value)``: built with ``value``)."""
    if name not in FIT_OPTIONS:
        raise RuntimeError(
            f"fit: {name}=True needs its callback, registered when bayesprune is imported "
            "(import bayesprune, not only bayesprune.inference)"
        )
    return FIT_OPTIONS[name](*args)
