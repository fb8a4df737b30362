"""The epoch loop and the SVI step of :func:`bayesprune.fit`.

One step: the loss of a mini-batch (``loss_fn``, scaled to the training-set size and divided
by it), backward, the gradients averaged over the processes (data parallelism; a no-op
alone), the optimizer step, the guide's projection, the schedule. Nothing in a step forces
the host to wait for the device: losses are summed on the device and read once per
``log_every`` steps (the ELBO trace, the NaN guard, the bar), and at the epoch's end.

>>> from bayesprune.inference.loop import Settings
>>> Settings.__dataclass_fields__.keys() >= {"epochs", "log_every", "checkpoint_every"}
True
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor
from tqdm.auto import tqdm

from bayesprune.inference import resume
from bayesprune.inference.callbacks import FitState, call
from bayesprune.inference.evaluate import evaluate
from bayesprune.inference.optimizer import trained_tensors
from bayesprune.inference.progress import (
    NEG_ELBO,
    NonFiniteLossError,
    format_record,
    guard,
    postfix,
    step_bar,
)
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.unit_origin import original_sites

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What stays fixed during one fit."""

    epochs: int
    seed: int
    loss_fn: Callable[..., Tensor]
    device: torch.device
    log_every: int
    checkpoint: Path | None
    checkpoint_every: int | None
    signature: str
    progress: bool
    val: Any  # a Split, a pair or a loader; None: no validation
    #: what the loss is called in the bar and the epoch lines (progress.objective_label)
    loss_label: str = NEG_ELBO
    #: the settings a resume must match (resume.guarded_settings), stored in checkpoints
    guarded: dict[str, Any] = field(default_factory=dict)


class Loop:
    """Runs epochs over ``source`` (see :mod:`bayesprune.data.batches`) until ``epochs`` or
    a callback's stop; ``state`` is what callbacks see."""

    def __init__(
        self, state: FitState, source: Any, settings: Settings, callbacks: list[Any]
    ) -> None:
        self.state, self.source, self.cfg, self.callbacks = state, source, settings, callbacks
        self.per_step = [cb for cb in callbacks if hasattr(cb, "on_step_end")]
        self.n_batches: int | None = source.length
        self.validated = False  # Pyro's validation and the finiteness check, first step only
        self.checkpoint_path: Path | None = None

    def run(self, resumed_sum: Tensor | None) -> bool:
        """All remaining epochs; ``True`` if a callback stopped the fit early."""
        state, cfg = self.state, self.cfg
        was_validating = pyro.infer.util.is_validation_enabled()
        try:
            while state.epoch < cfg.epochs:
                call(self.callbacks, "on_epoch_start", state)
                epoch_sum = self.epoch(resumed_sum)
                resumed_sum = None
                stop = self.end_epoch(epoch_sum)
                if state.replicas.any(stop):
                    return True
        finally:
            pyro.enable_validation(was_validating)
        return False

    def epoch(self, resumed_sum: Tensor | None) -> Tensor:
        """One epoch of steps (from ``state.step_in_epoch`` on); returns the loss sum."""
        state, cfg = self.state, self.cfg
        state.net.module.train()
        state.guide.train()
        self.t0 = time.perf_counter()
        epoch_sum = torch.zeros((), device=cfg.device)
        if resumed_sum is not None:
            epoch_sum = resumed_sum.to(cfg.device)
        window, in_window = torch.zeros((), device=cfg.device), 0
        bar = step_bar(self.n_batches, state.step_in_epoch, state.epoch, cfg.epochs, cfg.progress)
        for xb, yb in self.source.epoch(state.epoch, cfg.seed, start=state.step_in_epoch):
            loss = self.step(xb, yb)
            window, epoch_sum, in_window = window + loss, epoch_sum + loss, in_window + 1
            state.step_in_epoch += 1
            state.global_step += 1
            bar.update(1)
            save_now = (
                cfg.checkpoint is not None
                and cfg.checkpoint_every is not None
                and state.global_step % cfg.checkpoint_every == 0
                and state.step_in_epoch != self.n_batches
            )
            if in_window == cfg.log_every or save_now:
                self.log_window(window, in_window, bar)
                window, in_window = torch.zeros((), device=cfg.device), 0
            if save_now:  # the window was just checked finite
                self.save(epoch_sum)
        if in_window:
            self.log_window(window, in_window, bar)
        bar.close()
        return epoch_sum

    def step(self, xb: Tensor, yb: Tensor) -> Tensor:
        """One SVI step on a mini-batch; returns the detached per-example loss."""
        state, n_data = self.state, self.source.n_data
        if not self.validated:
            pyro.enable_validation(True)
        loss = self.cfg.loss_fn(state.net, state.guide, xb, yb, n_data) / n_data
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not self.validated:
            self.check_first(loss)
        state.replicas.average_gradients(trained_tensors(state.optimizer))
        state.optimizer.step()
        state.guide.project_()
        if state.scheduler is not None:
            state.scheduler.step()
        if self.per_step:
            state.batch = (xb, yb, n_data)
            for cb in self.per_step:
                cb.on_step_end(state)
            state.batch = None
        return loss.detach()

    def check_first(self, loss: Tensor) -> None:
        """The first step only: a non-finite loss stops the fit before anything is written."""
        value = float(self.state.replicas.mean(loss.detach()))
        if value != value or abs(value) == float("inf"):
            raise NonFiniteLossError(
                f"fit: the loss is {value} at the first step; check the data and "
                "hyper-parameters (nothing was changed, no checkpoint written)"
            )
        pyro.enable_validation(False)
        self.validated = True

    def log_window(self, window: Tensor, n: int, bar: tqdm) -> None:
        """The one host sync per window: the mean loss over the processes, checked finite."""
        state = self.state
        mean = float(state.replicas.mean(window)) / n
        guard(mean, state.epoch, state.step_in_epoch, self.cfg.checkpoint)
        state.elbo.append(mean)
        state.elbo_steps.append(state.global_step)
        bar.set_postfix(postfix(mean, state.history, self.cfg.loss_label), refresh=False)

    def end_epoch(self, epoch_sum: Tensor) -> bool:
        """Record the epoch (validation, kept fraction, units alive), run the callbacks,
        write the checkpoint; ``True`` if a callback asked to stop."""
        state, cfg = self.state, self.cfg
        state.replicas.average_buffers(state.net.module)
        steps = max(state.step_in_epoch, 1)
        record: dict[str, Any] = {
            "epoch": state.epoch + 1,
            "loss": float(state.replicas.mean(epoch_sum)) / steps,
            "seconds": time.perf_counter() - self.t0,
            # learning rate per parameter role at the end of the epoch (after the schedule)
            "lr": {
                g.get("role", f"group{i}"): float(g["lr"])
                for i, g in enumerate(state.optimizer.param_groups)
            },
        }
        if cfg.val is not None:
            scores = evaluate(state.net, state.guide, cfg.val, replicas=state.replicas)
            record.update({f"val_{k}": v for k, v in scores.items()})
        point = state.guide.point()
        kept = state.net.prior.kept_fraction(state.net, point)
        if kept is not None:
            record["kept"] = kept * unit_share(state.net)
        units = getattr(state.net.prior, "units_alive", None)
        if units is not None:
            record["units"] = units(state.net, point)
        state.history.append(record)
        log.info("epoch %s", record)
        if cfg.progress and state.replicas.main:
            tqdm.write(format_record(record, cfg.epochs, cfg.loss_label))
        state.epoch += 1
        state.step_in_epoch = 0
        stop = call(self.callbacks, "on_epoch_end", state)
        if cfg.checkpoint is not None:
            self.save(None)
        return stop

    def save(self, epoch_sum: Tensor | None) -> None:
        cfg = self.cfg
        assert cfg.checkpoint is not None
        path = resume.save(
            self.state, cfg.checkpoint, cfg.signature, cfg.device, epoch_sum, cfg.guarded
        )
        if path is not None:
            self.checkpoint_path = path


@contextmanager
def cuda_sync_check() -> Iterator[None]:
    """Within the block, every step of every fit after its first (which checks the loss once,
    on purpose) runs under ``torch.cuda.set_sync_debug_mode("error")``: a host sync inside
    the step raises. A no-op for fits off CUDA.

    >>> with cuda_sync_check():
    ...     pass
    """
    original = Loop.step

    def step(self: Loop, xb: Tensor, yb: Tensor) -> Tensor:
        if self.cfg.device.type != "cuda" or not self.validated:
            return original(self, xb, yb)
        torch.cuda.set_sync_debug_mode("error")
        try:
            return original(self, xb, yb)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    Loop.step = step  # type: ignore[method-assign]
    try:
        yield
    finally:
        Loop.step = original  # type: ignore[method-assign]


def unit_share(net: BayesianNet) -> float:
    """Gated units now / gated units as built: turns a gate prior's kept fraction of the
    current network into one of the original network after live removal (removed units
    were dead, so they count as not kept)."""
    # a gate tied across the groups of a grouped conv stands for ``tile`` units
    now = sum(s.numel * s.meta.get("tile", 1) for s in net.gates)
    built = sum(s.numel * s.meta.get("tile", 1) for s in original_sites(net) if s.role == "gate")
    return now / built if built and now != built else 1.0
