"""Negative ELBO estimators.

:class:`FusedELBO` computes the negative ELBO directly, without tracing the model and
guide through poutine. What it equals depends on the prior:

- **Priors without gates** (HALO, Gaussian; MAP or mean-field guides): exactly what Pyro's
  ``Trace_ELBO`` computes -- the same random draws in the same order, the same terms, the
  same loss and gradients (``tests/inference/test_losses.py``: HALO per weight and per unit,
  MLP and conv, float64 and float32; ``tests/inference/test_gate_gradient_bias.py``:
  Gaussian).
- **Gate priors** (``UnitGates``, ``BlockGates``): a straight-through estimator of the same
  ELBO. The gates' terms are taken in closed form (``Σ γθ + log Z``) and the likelihood
  sees a hard draw ``z ~ Bernoulli(θ)`` with ``∂z/∂θ = 1``. The *loss* is unbiased: its
  expectation is Trace_ELBO's, though the two differ draw by draw
  (``tests/inference/test_gates_elbo.py`` by enumeration, ``test_gate_gradient_bias.py``
  over 20,000 draws). The *θ-gradient* is biased wherever the loss is not linear in the
  gates: against the exact gradient (all 2^K gate configurations enumerated) the relative
  bias ``‖E[ĝ] − ∇‖ / ‖∇‖`` is 0.60 (cosine 0.80) on the test's 4-unit net, and
  ``benchmarks/gate_gradient_bias.py`` measures 0.02–0.81 (cosine ≥ 0.66) on untrained
  one- and two-layer MLPs and 0.70–1.43 (cosine −0.62 to 0.72) on trained ones (see
  :mod:`bayesprune.priors.gates` for why); on a LeNet-5 (width 0.25, Fashion-MNIST),
  against the mean of an unbiased estimator, 0.21 ± 0.07 at initialisation and
  0.91 ± 0.05 (cosine 0.41) after one epoch of a gated fit. Every other gradient --
  weights, scales, the network's deterministic parameters -- is Trace_ELBO's on the same
  draw, hence unbiased.

:class:`CompiledELBO` (``fit(loss="compiled")``, opt-in) is :class:`FusedELBO` through
``torch.compile``: the same loss and gradients on the same draws, to float rounding. It pays
only where many small elementwise passes dominate a step and the fit is long enough to
repay the compile: HALO with a MAP guide (``benchmarks/README.md``).

:class:`TraceELBO` runs Pyro's own ``Trace_ELBO``: slower; use it for custom priors, to
cross-check, or for an unbiased (score-function) gate gradient -- whose standard deviation
per draw is 5–430× the gradient's norm on the same MLPs with K ≤ 8 gates
(straight-through: 0.2–1.9×).

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
import torch
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.likelihoods import check_batch

#: the names :func:`loss_from_name` (and ``fit(loss=...)``) accepts
LOSSES = ("fused", "compiled", "trace")


class FusedELBO:
    """``-ELBO`` computed directly: ``log q - log p(sites) - (N/B) log p(y | x, sites)``.

    Without gates: Trace_ELBO's loss and gradients on the same draws. With gates: the
    closed-form gate terms and a straight-through gradient for θ -- an unbiased loss with a
    biased θ-gradient (see the module docstring for the measured bias)."""

    name = "fused"

    def __call__(self, net: BayesianNet, guide: Guide, x: Tensor, y: Tensor, n_data: int) -> Tensor:
        check_batch(x.shape[0], n_data)
        values, log_q = guide.rsample()
        ctx = net.context(n_data)
        log_p = net.log_prior(values, ctx)
        out = net.run(values, x)
        log_lik = net.likelihood.log_prob(out, y) * (n_data / x.shape[0])
        return log_q - log_p - log_lik


class CompiledELBO:
    """:class:`FusedELBO` compiled with ``torch.compile`` on its first call.

    Equal to :class:`FusedELBO` on the same seed up to float rounding (the compiled kernels
    sum in another order): random draws go through PyTorch's own generators
    (``fallback_random``), so the draws are the eager ones. Measured on LeNet-300-100 with a
    MAP guide (CPU, 2 threads): an epoch 1.7x faster once compiled, but the first epoch
    carries about 10 s of compiling, with a recompile for the first batch of another size
    (the last, short batch of an epoch) -- it paid only from about 15 epochs -- and another
    after every live removal of units (new shapes); with a mean-field guide a step was
    slower, with unit gates about 10% faster. Needs what ``torch.compile`` needs (a C++ compiler on
    CPU, Triton on CUDA).
    """

    name = "compiled"

    def __init__(self) -> None:
        self.fused = FusedELBO()
        self.compiled = torch.compile(self.fused.__call__)

    def __call__(self, net: BayesianNet, guide: Guide, x: Tensor, y: Tensor, n_data: int) -> Tensor:
        check_batch(x.shape[0], n_data)
        with torch._inductor.config.patch(fallback_random=True):
            return self.compiled(net, guide, x, y, n_data)


class TraceELBO:
    """Pyro's ``Trace_ELBO`` over ``net.model`` and ``guide``."""

    name = "trace"

    def __init__(self, num_particles: int = 1) -> None:
        self.elbo = pyro.infer.Trace_ELBO(num_particles=num_particles)

    def __call__(self, net: BayesianNet, guide: Guide, x: Tensor, y: Tensor, n_data: int) -> Tensor:
        return self.elbo.differentiable_loss(net.model, guide, x, y, n_data=n_data)


def loss_from_name(name: str) -> FusedELBO | CompiledELBO | TraceELBO:
    """``"fused"`` (default, fast), ``"compiled"`` (the fused loss through ``torch.compile``)
    or ``"trace"`` (Pyro's Trace_ELBO)."""
    kinds = dict(zip(LOSSES, (FusedELBO, CompiledELBO, TraceELBO), strict=True))
    if name not in kinds:
        raise ConfigError(f"loss: unknown estimator {name!r}; use 'fused', 'compiled' or 'trace'")
    return kinds[name]()
