"""The lottery-jackpot search as a fit callback: mask updates with the short restriction.

After every optimizer step (the scores have moved), for each layer the top-``k`` of the new
scores proposes ``d`` swaps; :func:`~bayesprune.priors.jackpot_swaps.restricted_swaps` keeps
the ``ceil(d · f_e)`` most confident of them (in and out in equal numbers), with
``f_e = (1 - e/N)^4`` in epoch ``e`` of the prior's horizon ``N = budget_epochs``. With
``restrict=True`` the candidate masks of all layers are then accepted *together* only if the
fit's loss on the step's mini-batch does not rise (``loss(after) <= loss(before)``, both
computed without gradients, in eval mode so that dropout noise does not decide and BatchNorm
statistics are not updated by the comparison); otherwise every mask stays as it was. The
choice is a ``torch.where`` on the device: no host sync per step. With ``restrict=False``
the mask is the top-``k`` of the scores after every step (no budget, no loss check).

Every epoch's record gets, per step, ``jackpot_proposed`` (Σ_l d_l), ``jackpot_budget``
(Σ_l ceil(d_l · f_e)) and ``jackpot_swaps`` (the swaps made: the budget if accepted, else 0;
each swap moves one weight in and one out), and ``swap_fraction`` (``f_e``); they are read
from the device once, at the end of the epoch. A fit resumed in the middle of an epoch
records the steps after the resume only.

The guide is used through three duck-typed members (this floor does not import guides):
``jackpot_layers()`` -> ``[(site, scores, mask)]``, the mask a bool buffer changed in place.

>>> from types import SimpleNamespace
>>> search = JackpotSearch(SimpleNamespace(restrict=True, budget_epochs=4))
>>> search.on_epoch_start(SimpleNamespace(epoch=2)); search.fraction
0.0625
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from bayesprune.errors import ConfigError
from bayesprune.priors.jackpot_swaps import restricted_swaps, swap_fraction


@contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


class JackpotSearch:
    """The fit callback of :class:`~bayesprune.priors.Jackpot` (see the module docstring)."""

    def __init__(self, prior: Any) -> None:
        self.prior = prior
        self.fraction: float | None = 1.0
        self._steps: list[torch.Tensor] = []

    def on_fit_start(self, state: Any) -> None:
        layers = getattr(state.guide, "jackpot_layers", None)
        if layers is None:
            raise ConfigError(
                f"Jackpot: the guide must be a JackpotGuide (the prior's default guide), "
                f"got {type(state.guide).__name__}"
            )
        if state.replicas.world > 1:  # the scores were broadcast from process 0; so must the masks
            masks = [m for _, _, m in layers()]
            as_bytes = [m.to(torch.uint8) for m in masks]
            state.replicas.broadcast(as_bytes)
            for m, b in zip(masks, as_bytes, strict=True):
                m.copy_(b.bool())

    def on_epoch_start(self, state: Any) -> None:
        restrict = self.prior.restrict
        self.fraction = swap_fraction(state.epoch, self.prior.budget_epochs) if restrict else None
        self._steps = []

    @torch.no_grad()
    def on_step_end(self, state: Any) -> None:
        guide = state.guide
        layers = guide.jackpot_layers()
        device = layers[0][2].device if layers else torch.device("cpu")
        if self.fraction == 0.0:  # the budget is spent: the mask stays
            zero = torch.zeros(3, dtype=torch.long, device=device)
            self._steps.append(zero)
            return
        old, new = [], []
        proposed = torch.zeros((), dtype=torch.long, device=device)
        budget = torch.zeros((), dtype=torch.long, device=device)
        for site, scores, mask in layers:
            cand, d, b = restricted_swaps(scores, mask, site.meta["keep"], self.fraction)
            old.append(mask.clone())
            new.append(cand)
            proposed, budget = proposed + d, budget + b
        if self.fraction is None:  # restrict=False: follow the scores' top-k
            for (_, _, mask), cand in zip(layers, new, strict=True):
                mask.copy_(cand)
            self._steps.append(torch.stack([proposed, budget, budget]))
            return
        x, y, n_data = state.batch
        with _eval(state.net.module):
            before = state.loss_fn(state.net, guide, x, y, n_data)
            for (_, _, mask), cand in zip(layers, new, strict=True):
                mask.copy_(cand)
            after = state.loss_fn(state.net, guide, x, y, n_data)
        accept = state.replicas.mean((after - before).detach()) <= 0
        for (_, _, mask), o, cand in zip(layers, old, new, strict=True):
            mask.copy_(torch.where(accept, cand, o))
        made = torch.where(accept, budget, torch.zeros_like(budget))
        self._steps.append(torch.stack([proposed, budget, made]))

    def on_epoch_end(self, state: Any) -> None:
        record = state.history[-1]
        steps = torch.stack(self._steps).tolist() if self._steps else []
        record["jackpot_proposed"] = [s[0] for s in steps]
        record["jackpot_budget"] = [s[1] for s in steps]
        record["jackpot_swaps"] = [s[2] for s in steps]
        record["swap_fraction"] = self.fraction
        self._steps = []
