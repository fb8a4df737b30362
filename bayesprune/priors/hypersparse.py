"""HyperSparse: adaptive regularised training (ART, Glandorf, Kaiser & Rosenhahn, 2023) as a
MAP prior.

The weights of the chosen layers are trained under the penalty ``α · HS(w)`` per example
(:mod:`bayesprune.priors.hypersparse_penalty`; one term over *all* chosen layers' weights
together), whose weight α grows every epoch; the prior's fit callback
(:class:`~bayesprune.priors.hypersparse_schedule.ARTSchedule`, added to every fit) runs the
paper's phases: dense warm-up (α = 0), regularised training with ``α_e = λ_init · η^e``
(``e`` counted from the end of the warm-up) until the magnitude-pruned network's validation
accuracy reaches the dense one's, then a masked fine-tune at the target rate. The model's
log density is ``−α N HS(w)``, so the fit's per-example loss is the paper's
``cross-entropy + α HS(w)``.

The penalty couples the layers, while :meth:`Prior.log_prob` is called once per layer: the
*last* chosen layer's weight site carries the whole term (its :class:`~bayesprune.sites.Site`
lists the weight sites it closes over, fixed by :func:`~bayesprune.sparsify` through
:meth:`bind`), the other layers carry a flat (improper) density. In the Pyro model the last
site is sampled after the others, so its distribution sees them all -- the fused loss and
Pyro's ``Trace_ELBO`` agree (tested).

α is *state of the fit*, not a hyper-parameter: the callback derives it from the epoch and
the recorded history at the start of every epoch (so a resumed fit gets the same α) and
records it, with the phase, in ``history[-1]``; it is not in :meth:`config`.

Good::

    net = sparsify(build("lenet300"), HyperSparse(sparsity=0.98))
    result = fit(net, data, epochs=30)                  # warm-up, ART, fine-tune; stops itself
    small = extract(net, collapse(net, result.guide, keep=0.02))

Bad::

    HyperSparse(sparsity=1.0)   # ValueError: sparsity must be in (0, 1)
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor
from torch.distributions import constraints

from bayesprune.errors import ConfigError
from bayesprune.priors.base import Prior, check_positive
from bayesprune.priors.hypersparse_penalty import HyperSparseFactor, hypersparse_penalty
from bayesprune.priors.hypersparse_schedule import ARTSchedule
from bayesprune.priors.registry import register
from bayesprune.sites import Context, Site, join

#: the Site.info key listing the weight sites a layer's term closes over (last layer only)
PENALTY_OVER = "penalty_over"


def _count(owner: str, key: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{owner}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


class HyperSparse(Prior):
    """The HyperSparse penalty with ART's growing weight.

    :param sparsity: κ, the target fraction of weights removed, in ``(0, 1)``.
    :param lambda_init: α of the first regularised epoch (per example).
    :param eta: growth factor of α per epoch, ``>= 1``.
    :param warmup: dense epochs before the regularisation (``>= 1``: the stop rule compares
        with the dense network's validation accuracy at the end of the warm-up).
    :param finetune: epochs of masked fine-tuning after the stop; the fit stops after them.
    :param window: epochs in the moving average of the stop rule (the dense reference
        averages the last ``window`` warm-up epochs, fewer if the warm-up is shorter).
    :param tolerance: the stop rule fires when the pruned average reaches the dense
        reference minus this (accuracy as a fraction; 0: the paper's rule).
    :param max_regularise: fine-tune after at most this many regularised epochs even when
        the rule has not fired (``None``: no limit).

    >>> import torch.nn as nn
    >>> from bayesprune import sparsify
    >>> net = sparsify(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)),
    ...                HyperSparse(sparsity=0.9))
    >>> [s.meta["penalty_over"] for s in net.sites]
    [(), ('0.weight', '2.weight')]
    """

    name = "hypersparse"

    def __init__(
        self,
        sparsity: float = 0.9,
        lambda_init: float = 1e-5,
        eta: float = 1.5,
        *,
        warmup: int = 1,
        finetune: int = 1,
        window: int = 2,
        tolerance: float = 0.0,
        max_regularise: int | None = None,
    ) -> None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
            raise ConfigError(f"HyperSparse: sparsity must be a number in (0, 1), got {sparsity!r}")
        if not 0 < sparsity < 1:
            raise ConfigError(f"HyperSparse: sparsity must be in (0, 1), got {sparsity!r}")
        check_positive("HyperSparse", lambda_init=lambda_init, eta=eta)
        if eta < 1:
            raise ConfigError(f"HyperSparse: eta must be >= 1 (α grows), got {eta!r}")
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
            raise ConfigError(f"HyperSparse: tolerance must be a number, got {tolerance!r}")
        if not 0 <= tolerance < 1:
            raise ConfigError(f"HyperSparse: tolerance must be in [0, 1), got {tolerance!r}")
        self.sparsity = float(sparsity)
        self.lambda_init = float(lambda_init)
        self.eta = float(eta)
        self.warmup = _count("HyperSparse", "warmup", warmup, minimum=1)
        self.finetune = _count("HyperSparse", "finetune", finetune, minimum=0)
        self.window = _count("HyperSparse", "window", window, minimum=1)
        self.tolerance = float(tolerance)
        self.max_regularise = (
            None
            if max_regularise is None
            else _count("HyperSparse", "max_regularise", max_regularise, minimum=1)
        )
        #: the current penalty weight per example, set by the fit's ARTSchedule every epoch
        self.alpha = 0.0
        self._bound: tuple[str, ...] = ()

    # --- sites -------------------------------------------------------------------------
    def bind(self, module: nn.Module, layer_names: list[str], example_input: Tensor | None) -> None:
        """Remember the chosen layers: the last one's site carries the coupled term."""
        self._bound = tuple(layer_names)

    def layer_sites(self, name: str, layer: nn.Module) -> list[Site]:
        """One weight site; the last bound layer's lists every weight site it closes over (a
        layer of an unbound prior closes over itself alone)."""
        self.check_layer(name, layer)
        if name not in self._bound:
            over: tuple[str, ...] = (join(name, "weight"),)
        elif name == self._bound[-1]:
            over = tuple(join(n, "weight") for n in self._bound)
        else:
            over = ()
        w = join(name, "weight")
        return [
            Site(
                w,
                name,
                "weight",
                tuple(layer.weight.shape),
                constraints.real,
                w,
                info=((PENALTY_OVER, over),),
            )
        ]

    def initial_value(self, site: Site, layer: nn.Module) -> Tensor:
        return layer.weight.detach().clone()

    def distribution(self, site: Site, values: dict[str, Tensor], ctx: Context) -> Distribution:
        over = site.meta[PENALTY_OVER]
        if not over or self.alpha == 0:
            return dist.ImproperUniform(constraints.real, torch.Size(), torch.Size(site.shape))
        others = [values[n] for n in over[:-1]]
        return HyperSparseFactor(others, self.alpha * ctx.n_data, self.sparsity, site.shape)

    def log_prob(self, sites: list[Site], values: dict[str, Tensor], ctx: Context) -> Tensor:
        """``−α N HS(w)`` on the last layer (over every layer's weights), 0 on the others."""
        over = sites[0].meta[PENALTY_OVER]
        if not over or self.alpha == 0:
            return torch.zeros((), device=ctx.device, dtype=ctx.dtype)
        w = torch.cat([values[n].flatten() for n in over])
        return -(self.alpha * ctx.n_data) * hypersparse_penalty(w, self.sparsity)

    # --- collapse ----------------------------------------------------------------------
    def scores(self, sites: list[Site], point: dict[str, Tensor], **options: Any) -> Tensor:
        """``|ŵ|``: collapse with ``keep=1 - sparsity`` (global) is ART's magnitude pruning."""
        return point[sites[0].name].abs()

    def kept_fraction(self, net: Any, point: dict[str, Tensor]) -> float:
        """Fraction of weights not exactly 0 (``1 - sparsity`` once the fine-tune masks them)."""
        alive = total = 0
        for sites in net.layer_sites.values():
            w = point[sites[0].name]
            alive += int((w != 0).sum())
            total += w.numel()
        return alive / max(total, 1)

    def fit_callbacks(self) -> list[Any]:
        return [ARTSchedule(self)]

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sparsity": self.sparsity,
            "lambda_init": self.lambda_init,
            "eta": self.eta,
            "warmup": self.warmup,
            "finetune": self.finetune,
            "window": self.window,
            "tolerance": self.tolerance,
            "max_regularise": self.max_regularise,
        }


register("hypersparse", HyperSparse)
