"""Negative ELBO estimators.

:class:`FusedELBO` computes, for our model/guide pairs, exactly the quantity
Pyro's ``Trace_ELBO`` computes -- the same random draws in the same order, the
same terms -- but without tracing the model and guide through poutine. Its
tests check loss and gradients against ``Trace_ELBO`` on fixed seeds.
:class:`TraceELBO` runs Pyro's own ``Trace_ELBO`` (slower; use it for custom
priors or to cross-check).

Both return the negative ELBO of one mini-batch, with the likelihood scaled by
``n_data / batch`` so it estimates the whole training set.

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MAP
>>> net = sparsify(nn.Linear(3, 2), HALO(), layers=nn.Linear)
>>> x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
>>> loss = FusedELBO()(net, MAP(net), x, y, n_data=100)
>>> loss.shape
torch.Size([])
"""

from __future__ import annotations

import pyro.infer
from torch import Tensor

from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.likelihoods import check_batch


class FusedELBO:
    """``-ELBO`` computed directly: ``log q - log p(sites) - (N/B) log p(y | x, sites)``."""

    name = "fused"

    def __call__(self, net: BayesianNet, guide: Guide, x: Tensor, y: Tensor, n_data: int) -> Tensor:
        check_batch(x.shape[0], n_data)
        values, log_q = guide.rsample()
        ctx = net.context(n_data)
        log_p = net.log_prior(values, ctx)
        out = net.run(values, x)
        log_lik = net.likelihood.log_prob(out, y) * (n_data / x.shape[0])
        return log_q - log_p - log_lik


class TraceELBO:
    """Pyro's ``Trace_ELBO`` over ``net.model`` and ``guide``."""

    name = "trace"

    def __init__(self, num_particles: int = 1) -> None:
        self.elbo = pyro.infer.Trace_ELBO(num_particles=num_particles)

    def __call__(self, net: BayesianNet, guide: Guide, x: Tensor, y: Tensor, n_data: int) -> Tensor:
        return self.elbo.differentiable_loss(net.model, guide, x, y, n_data=n_data)


def loss_from_name(name: str) -> FusedELBO | TraceELBO:
    """``"fused"`` (default, fast) or ``"trace"`` (Pyro's Trace_ELBO)."""
    if name == "fused":
        return FusedELBO()
    if name == "trace":
        return TraceELBO()
    raise ValueError(f"loss: unknown estimator {name!r}; use 'fused' or 'trace'")
