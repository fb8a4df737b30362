"""Run the network once per draw of the guide: log-likelihoods, predictive draws, log weights.

For each of ``num_samples`` joint draws ``z_s ~ q`` (in model order, from the global
torch RNG -- :func:`bayesprune.diagnose` forks and seeds it), the network runs on all
of ``x`` in eval mode, batched, and gives

- ``log_lik[s, i] = log p(y_i | z_s)`` from the net's likelihood;
- ``obs[s, i] ~ p(y | z_s, x_i)``: a posterior predictive draw;
- ``log_weight[s] = Σ_i log p(y_i | z_s) + log p(z_s) − log q(z_s)`` (float64; prior
  hyper-parameters scaled to ``n = len(x)``), the importance log weights behind PSIS k̂;
- for classification, the running sum of ``softmax`` over draws (the model average).

When ``q`` is random only in its Bernoulli gates (a MAP guide with gate priors), draws
often repeat a gate configuration; the network then runs once per distinct
configuration (outputs cached up to :data:`CACHE_BYTES`), which changes nothing but time.

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MeanField
>>> net = sparsify(nn.Linear(3, 2), HALO(), layers=nn.Linear)
>>> d = run_draws(net, MeanField(net), torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1]), 4)
>>> tuple(d.log_lik.shape), tuple(d.obs.shape), tuple(d.log_weight.shape)
((4, 5), (4, 5), (4,))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from bayesprune.diagnostics.log_density import draw, log_guide, log_prior, random_sites
from bayesprune.diagnostics.posterior import layer_variables
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.likelihoods import Categorical

#: most bytes of network outputs kept for repeated gate configurations
CACHE_BYTES = 512 * 2**20


@dataclass
class Draws:
    """What :func:`run_draws` returns (CPU tensors)."""

    log_lik: Tensor
    obs: Tensor
    log_weight: Tensor
    probs: Tensor | None
    posterior: dict[str, Tensor] = field(default_factory=dict)
    runs: int = 0  #: forward passes over x (fewer than draws when gate draws repeat)


def _forward(net: BayesianNet, values: dict[str, Tensor], x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([net.run(values, x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.inference_mode()
def run_draws(
    net: BayesianNet,
    guide: Guide,
    x: Tensor,
    y: Tensor,
    num_samples: int,
    *,
    batch_size: int = 1024,
    weights: bool = False,
) -> Draws:
    """See the module docstring. ``x`` and ``y`` must be on the net's device; the module
    is put in eval mode for the run and restored after.

    :param weights: also keep every weight draw in ``posterior`` (memory: ``num_samples``
        copies of the weights).
    """
    categorical = isinstance(net.likelihood, Categorical)
    gates_only = all(s.role == "gate" for s in random_sites(guide))
    rnd = [s for s in guide.sites if s.role == "gate"] if gates_only else []
    cache: dict[bytes, Tensor] = {}
    cached_bytes = 0
    runs = 0
    n = int(x.shape[0])
    log_lik, obs, log_weight = [], [], []
    per_draw: list[dict[str, Tensor]] = []
    probs_sum: Tensor | None = None
    was_training = net.module.training
    net.module.eval()
    try:
        for _ in range(num_samples):
            values = draw(guide)
            key = (
                b"".join(values[s.name].cpu().numpy().tobytes() for s in rnd)
                if gates_only
                else None
            )
            out = cache.get(key) if key is not None else None
            if out is None:
                out = _forward(net, values, x, batch_size)
                runs += 1
                if key is not None and cached_bytes + out.nbytes <= CACHE_BYTES:
                    cache[key] = out
                    cached_bytes += out.nbytes
            d = net.likelihood.distribution(out)
            ll = d.log_prob(y)
            log_lik.append(ll.cpu())
            obs.append(d.sample().cpu())
            if categorical:
                p = out.double().softmax(-1)
                probs_sum = p if probs_sum is None else probs_sum + p
            lw = ll.double().sum().cpu() + log_prior(net, values, n) - log_guide(guide, values)
            log_weight.append(lw)
            per_draw.append(layer_variables(net, guide, values, weights=weights))
    finally:
        net.module.train(was_training)
    posterior = {k: torch.stack([v[k] for v in per_draw]) for k in per_draw[0]} if per_draw else {}
    return Draws(
        log_lik=torch.stack(log_lik),
        obs=torch.stack(obs),
        log_weight=torch.stack(log_weight),
        probs=None if probs_sum is None else (probs_sum / num_samples).cpu(),
        posterior=posterior,
        runs=runs,
    )
