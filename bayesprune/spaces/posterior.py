"""The posterior-induced space: subnetworks drawn from a fitted gate posterior ``q(z)``.

Under unit gates (:class:`bayesprune.priors.UnitGates`) the guide gives every unit a gate
``q(z_u = 1) = θ_u`` (:func:`bayesprune.pruning.inclusion_probs`). Read as a pruning
space, a subnetwork keeps unit ``u`` when ``z_u ~ Bernoulli(θ_u)`` draws 1, every unit
independently: the units the posterior is sure of are always there, the ones it doubts
come and go. :meth:`PosteriorSpace.sample` draws from ``q(z)`` **conditioned** on every
pruned layer keeping at least one unit and on the cost constraints, by rejection (exact:
accepted draws are distributed as ``q(z | constraints)``); without constraints and with
θ away from 0 the kept frequencies are θ (tested). The weights are the guide's point
estimate (written into every subnetwork through ``KeepSet.values``, as
:func:`bayesprune.collapse` does).

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.guides import MAP
>>> from bayesprune.priors import UnitGates
>>> net = sparsify(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), UnitGates())
>>> space = PosteriorSpace(net, MAP(net), example_input=torch.zeros(1, 4))
>>> space.layers, space.theta["0"].shape
(('0',), (8,))
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.inclusion import inclusion_kind, inclusion_probs
from bayesprune.pruning.keepset import KeepSet
from bayesprune.spaces.base import Space
from bayesprune.spaces.uniform import _check_n


class PosteriorSpace(Space):
    """Subnetworks drawn from a fitted gate posterior. See the module docstring.

    :param net: a fitted :class:`~bayesprune.BayesianNet` with unit gates.
    :param guide: its fitted guide (gate probabilities θ).
    :param flops: ``(lo, hi)``: FLOPs as a fraction of the dense network's.
    :param params: ``(lo, hi)``: parameters as a fraction of the dense network's.
    :param ratio: ``(lo, hi)``: FLOPs per parameter.
    :param example_input: input batch to trace the network (default: the net's own).
    :param max_draws: rejection sampling gives up (``ValueError``) after this many draws.
    :raises ValueError: for a net without unit gates (``net``), a layer whose gates are all
        closed (``guide``), constraints no draw can meet (naming them).
    """

    owner = "PosteriorSpace"

    def __init__(
        self,
        net: BayesianNet,
        guide: Guide,
        *,
        flops: tuple[float, float] | None = None,
        params: tuple[float, float] | None = None,
        ratio: tuple[float, float] | None = None,
        example_input: Tensor | None = None,
        max_draws: int = 1_000_000,
    ) -> None:
        if not isinstance(net, BayesianNet) or not net.gates:
            raise ConfigError(
                "PosteriorSpace: net must be a BayesianNet with unit gates "
                "(sparsify(module, UnitGates(...)))"
            )
        if inclusion_kind(net, guide) != "gate":
            raise ConfigError("PosteriorSpace: net: every prior layer must carry unit gates")
        tied = [s.layer for s in net.gates if s.meta.get("tile", 1) > 1]
        if tied:  # a draw would have to keep whole gates (bayesprune.priors.group_ties)
            raise ConfigError(
                f"PosteriorSpace: net: the gates of layers {tied} are tied across the groups of "
                "a grouped conv, which this space does not sample yet"
            )
        super().__init__(
            net,
            None,
            flops=flops,
            params=params,
            ratio=ratio,
            example_input=example_input,
            guide=guide,
        )
        probs = inclusion_probs(net, guide)
        #: θ per layer: each unit's probability of being kept
        self.theta: dict[str, np.ndarray] = {
            n: probs[n].detach().cpu().double().numpy() for n in self.layers
        }
        for name, th in self.theta.items():
            if not (th > 0).any():
                raise ConfigError(
                    f"PosteriorSpace: guide gives every unit of layer {name!r} θ = 0: no "
                    "subnetwork keeps a unit there"
                )
        self.max_draws = int(max_draws)
        #: fraction of draws accepted by the last :meth:`sample_masks`
        self.acceptance: float | None = None
        low = np.array([max(1, int((th >= 1).sum())) for th in self.theta.values()])
        high = np.array([int((th > 0).sum()) for th in self.theta.values()])
        self.check_reachable(low, high)

    def sample_masks(self, n: int, *, seed: int = 0) -> dict[str, np.ndarray]:
        """``n`` accepted draws of every gate: ``{layer: bool array (n, units)}``."""
        n = _check_n(self.owner, n)
        rng = np.random.default_rng(seed)
        kept: dict[str, list[np.ndarray]] = {name: [] for name in self.layers}
        got = drawn = 0
        while got < n:
            if drawn >= self.max_draws:
                raise self.no_subnetwork(f"{drawn} posterior draws (max_draws)")
            batch = min(16384, self.max_draws - drawn)
            z = {name: rng.random((batch, th.size)) < th for name, th in self.theta.items()}
            counts = np.stack([m.sum(1) for m in z.values()], axis=1)
            ok = (counts >= 1).all(1) & self.accepts(counts)
            drawn += batch
            got += int(ok.sum())
            for name in self.layers:
                kept[name].append(z[name][ok])
        self.acceptance = got / drawn
        return {name: np.concatenate(v)[:n] for name, v in kept.items()}

    def sample(self, n: int, *, seed: int = 0) -> list[dict[str, KeepSet]]:
        """``n`` subnetworks, each ``{layer: KeepSet(units=...)}``, from ``q(z | constraints)``."""
        masks = self.sample_masks(n, seed=seed)
        return [
            self.keepsets(
                {name: torch.as_tensor(np.flatnonzero(m[i])) for name, m in masks.items()}
            )
            for i in range(n)
        ]
