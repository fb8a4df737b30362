"""Pareto k̂: how good the variational ``q`` is as an importance proposal for the posterior.

For draws ``z_s ~ q`` the importance log weights are
``log w_s = log p(y, z_s) − log q(z_s)``. If ``q`` were the posterior they would all be
equal; the heavier the right tail of ``w``, the worse ``q`` covers where the posterior
has mass. Pareto-smoothed importance sampling (Vehtari, Gelman & Gabry) fits a
generalized Pareto distribution to the largest weights; its shape ``k̂`` reads
(Yao, Vehtari, Simpson & Gelman, "Yes, but did it work?", 2018):

- ``k̂ < 0.5``: good -- ``q`` is close to the posterior, importance sampling from it works;
- ``0.5 ≤ k̂ ≤ 0.7``: acceptable -- usable with care;
- ``k̂ > 0.7``: ``q`` is a poor importance proposal for ``p(z | y)``; summaries drawn
  from ``q`` (inclusion probabilities, uncertainty) should not be trusted as posterior
  summaries, even if its predictions are good.

The fit is :func:`pyro.ops.stats.fit_generalized_pareto` (Zhang & Stephens, with the
PSIS prior adjustment) on the ``M = ⌈min(S/5, 3√S)⌉`` largest of ``S`` weights, as in
Pyro's :func:`~pyro.infer.importance.psis_diagnostic`, which runs the model itself; here
the log weights come from :func:`bayesprune.diagnose`. A Delta (MAP) guide has no
spread, so there is nothing to weigh and ``k̂`` is undefined: ``nan`` with a reason.
The tail is cut as ArviZ's :func:`arviz.psislw` cuts it (Pyro's cut-off differs only
for weights below ``1e-15`` of the largest), and the two give the same ``k̂``.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> k, why = pareto_khat(torch.randn(1000, generator=g) * 0.1)  # nearly equal weights
>>> k < 0.5, why
(True, '')
>>> pareto_khat(torch.tensor([0.0] * 99 + [100.0]))[0]  # one draw carries all the weight
inf
"""

from __future__ import annotations

import math

import torch
from pyro.ops.stats import fit_generalized_pareto
from torch import Tensor

from bayesprune.errors import ConfigError

#: one sentence for reports and ``idata.posterior.attrs["psis_khat_meaning"]``
KHAT_MEANING = (
    "Pareto k-hat of the importance weights p(y, z)/q(z) for draws z ~ q: below 0.5 q is a "
    "good importance proposal for the posterior p(z | y), 0.5-0.7 acceptable, above 0.7 q is "
    "a poor proposal and its summaries should not be read as posterior summaries."
)

#: fewest tail weights the generalized Pareto fit is run on
MIN_TAIL = 5
#: the lowest cut-off of the tail (ArviZ's: the log of the smallest positive float64)
_LOG_TINY = math.log(torch.finfo(torch.float64).tiny)


def tail_size(n: int) -> int:
    """How many of ``n`` draws form the tail that is fitted: ``⌈min(n/5, 3√n)⌉``."""
    return int(math.ceil(min(0.2 * n, 3.0 * math.sqrt(n))))


def pareto_khat(log_weights: Tensor) -> tuple[float, str]:
    """Pareto shape ``k̂`` of the importance weights ``exp(log_weights)``.

    Follows ArviZ's ``psislw`` (same tail, same cut-off, same fit; the tests check the two
    agree): when at most 4 weights lie above the cut-off -- one or a few draws carry
    nearly all the weight -- ``k̂`` is ``inf``.

    :param log_weights: 1-d tensor of ``log p(y, z_s) − log q(z_s)``, one per draw.
    :returns: ``(k̂, note)``; ``note`` is ``""`` for a fitted ``k̂``, says why ``k̂`` is
        ``inf`` (a few draws dominate), or why it is ``nan`` (undefined: non-finite
        weights, fewer than 21 draws, or all weights equal -- every draw is the same
        network, or ``q`` is exact).
    :raises ValueError: if ``log_weights`` is not a 1-d tensor.
    """
    if not isinstance(log_weights, Tensor) or log_weights.dim() != 1:
        raise ConfigError("pareto_khat: log_weights must be a 1-d tensor (one per draw)")
    lw = log_weights.detach().double().cpu()
    if not bool(torch.isfinite(lw).all()):
        return float("nan"), "undefined: some log weights are not finite"
    n = lw.numel()
    m = tail_size(n)
    if m < MIN_TAIL:
        return float("nan"), f"undefined: too few draws ({n}) for a tail of {MIN_TAIL} weights"
    if float(lw.max() - lw.min()) == 0.0:
        return float("nan"), "undefined: all log weights are equal (every draw weighs the same)"
    lw = torch.sort(lw - lw.max()).values
    cutoff = max(_LOG_TINY, float(lw[-m - 1]))
    tail = lw[lw > cutoff]
    if tail.numel() < MIN_TAIL:
        return float("inf"), (
            f"only {tail.numel()} of {n} draws lie in the tail: a few draws carry nearly all "
            "the weight (k-hat taken as inf, as ArviZ does)"
        )
    k, _ = fit_generalized_pareto(tail.exp() - math.exp(cutoff))
    return float(k), ""
