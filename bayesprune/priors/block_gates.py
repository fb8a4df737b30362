"""Bernoulli block gates: one gate per residual block (Guenter & Sideris' layer pruning).

A residual block computes ``act(branch(x) + shortcut(x))``. Its gate
``z_b ~ Bernoulli(π_b)`` multiplies the branch before the addition, with the
flattening hyper-prior on ``π_b`` as for unit gates
(:class:`~bayesprune.priors.UnitGates`)::

    π_b ~ Flattening(γ_b)            site "<block>.gate_prob"   shape (1,)
    z_b | π_b ~ Bernoulli(π_b)       site "<block>.gate"        shape (1,)

so ``z_b = 0`` turns the block into ``act(shortcut(x))`` -- the identity (then
ReLU) for most blocks, the 1×1 conv + BatchNorm path where the block changes
shape. The gate multiplies the output of the branch's last module (its *branch
end*, ``bn2`` of a basic block, ``bn3`` of a bottleneck; see
:mod:`bayesprune.blocks`), so a closed gate removes the branch exactly and
:func:`bayesprune.extract` replaces the block by its shortcut.

Everything else is as for unit gates: the guide's ``q(z_b) = Bernoulli(θ_b)``
with θ projected into [0, 1], the prior parameter at its optimum, and each gate
costing exactly ``γ_b θ_b`` in the negative ELBO, so the fit drives θ to
{0, 1}. The block's weights stay ordinary (deterministic) parameters.

``cost="flops"`` / ``"params"`` / ``"mixed"`` prices each block by the MACs
(:func:`bayesprune.metrics.count_flops`) or parameters of its branch --
what removing it saves -- normalised so the mean price over the gated blocks
is γ.

>>> from bayesprune import sparsify
>>> from bayesprune.zoo import build
>>> net = sparsify(build("resnet20", width=0.25), BlockGates(gamma=50.0))
>>> len(net.layer_names), net.layer_names[:2]
(9, ('layer1.0', 'layer1.1'))
>>> gate = net.site("layer1.0.gate")
>>> gate.shape, gate.meta["target"]
((1,), 'layer1.0.bn2')
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor

from bayesprune.blocks import block_spec, block_types
from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.priors.base import Prior
from bayesprune.priors.gates import (
    GateSitesMixin,
    check_gate_args,
    gate_budget_metrics,
    probs_key,
)
from bayesprune.priors.registry import register
from bayesprune.priors.unit_costs import block_branch_costs, complexity_prices
from bayesprune.sites import Context, Site, join


class BlockGates(GateSitesMixin, Prior):
    """One Bernoulli gate per residual block, with the flattening hyper-prior.

    :param gamma: price of keeping one block (the mean price with a complexity-aware
        ``cost``); not scaled by the data-set size.
    :param cost: ``"uniform"`` (γ for every block), ``"flops"`` (by the MACs of the
        block's residual branch), ``"params"`` (by its parameters) or ``"mixed"`` (the
        mean of the two).
    :param init_prob: starting gate probability θ.
    """

    name = "block_gates"
    default_threshold = 0.5

    def __init__(self, gamma: float = 100.0, *, cost: str = "uniform", init_prob: float = 0.9):
        check_gate_args("BlockGates", gamma, cost, init_prob)
        self.gamma = float(gamma)
        self.cost = cost
        self.init_prob = float(init_prob)
        self._prices: dict[str, float] = {}

    # --- choosing blocks and prices ---------------------------------------------------
    @property
    def default_layer_types(self) -> tuple[type, ...]:  # type: ignore[override]
        return block_types()

    @property
    def supported_layer_types(self) -> tuple[type, ...]:  # type: ignore[override]
        return block_types()

    def check_layer(self, name: str, layer: nn.Module) -> None:
        if block_spec(layer) is None:
            kinds = ", ".join(t.__name__ for t in block_types())
            raise UnsupportedError(
                f"BlockGates cannot be put on layer {name!r} of type {type(layer).__name__}: "
                f"not a residual block (supported: {kinds}, or any module whose class names "
                "its branch end in a 'branch_end' attribute; see bayesprune.blocks)"
            )

    def bind(self, module: nn.Module, layer_names: list[str], example_input: Tensor | None) -> None:
        self._prices = {}
        if self.cost == "uniform" or not layer_names:
            return
        if example_input is None:
            raise ConfigError(
                f"BlockGates(cost={self.cost!r}) needs an example input to count the FLOPs of "
                "each block: pass sparsify(..., example_input=x) or use a zoo network"
            )
        costs = block_branch_costs(module, layer_names, example_input)
        prices = complexity_prices(self.gamma, self.cost, costs)
        self._prices = {n: float(p) for n, p in prices.items()}

    def price(self, name: str) -> float:
        """γ_b of the block ``name``."""
        return self._prices.get(name, self.gamma)

    # --- sites ------------------------------------------------------------------------
    def layer_sites(self, name: str, layer: nn.Module) -> list[Site]:
        self.check_layer(name, layer)
        spec = block_spec(layer)
        gammas = (float(self.price(name)),)
        return self.gate_sites(
            name, (1,), gammas, target=join(name, spec.branch_end), dim=1, extra=(("block", True),)
        )

    def initial_value(self, site: Site, layer: nn.Module) -> Tensor:
        dtype = next((p.dtype for p in layer.parameters()), torch.get_default_dtype())
        return self.gate_initial_value(site, dtype)

    def distribution(self, site: Site, values: dict[str, Tensor], ctx: Context) -> Distribution:
        return self.gate_distribution(site, values, ctx)

    def log_prob(self, sites: list[Site], values: dict[str, Tensor], ctx: Context) -> Tensor:
        """Closed form ``-Σ(γθ + log Z)`` (the guide's entropy folded in, as for unit gates)."""
        return self.gates_log_prob(sites, values, ctx)

    # --- budgets ----------------------------------------------------------------------
    def budget_metrics(self) -> tuple[str, ...]:
        """``units`` (blocks) always; ``flops``/``params`` with prices that count them."""
        return gate_budget_metrics(self.cost)

    # --- collapse and reports ---------------------------------------------------------
    def scores(self, sites: list[Site], point: dict[str, Tensor], **options: Any) -> Tensor:
        """The block's gate probability θ, shape ``(1,)``: the block is kept where θ > 0.5
        by default, else it becomes its shortcut (``KeepSet(identity=True)``)."""
        gate = next(s for s in sites if s.role == "gate")
        return point[probs_key(gate.name)]

    def kept_fraction(self, net: Any, point: dict[str, Tensor]) -> float:
        """Fraction of gated blocks with θ > 0.5."""
        kept = [
            bool(self.scores(s, point) > self.default_threshold) for s in net.layer_sites.values()
        ]
        return sum(kept) / max(len(kept), 1)

    def units_alive(self, net: Any, point: dict[str, Tensor]) -> dict[str, int]:
        """1 for every block whose θ > 0 (not yet removable), else 0."""
        return {n: int(bool(self.scores(s, point) > 0)) for n, s in net.layer_sites.items()}

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gamma": self.gamma,
            "cost": self.cost,
            "init_prob": self.init_prob,
        }


register("block_gates", BlockGates)
