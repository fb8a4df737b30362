"""How far each gate gradient estimator is from the exact gradient of the ELBO.

A net small enough to enumerate all ``2^K`` gate configurations gives the exact negative
ELBO and its exact gradient in θ. Every estimator here is, for a MAP guide, a deterministic
function of the drawn gates ``z``, so its value at each configuration is computed once by
the library's own code (``torch.bernoulli`` forced to that ``z``) and a Monte-Carlo run of
many draws is the count-weighted average of those values: the same numbers as calling the
estimator once per draw, without the loop. Then:

- the fused loss (hard draw, closed-form gate terms) and Pyro's ``Trace_ELBO`` both average
  to the exact negative ELBO;
- the fused loss's straight-through θ-gradient does *not* average to the exact gradient
  (biased, beyond Monte-Carlo error; ``benchmarks/gate_gradient_bias.py`` measures by how
  much), Pyro's score-function gradient does (unbiased), with a much larger variance;
- at a vertex (θ ∈ {0, 1}, where fits end) the straight-through gradient is still not the
  exact one, and for an open gate its slope is the unit's weight gradient along its weights;
- every other gradient of the fused loss is Trace_ELBO's, draw by draw;
- without gates there is nothing to estimate: fused and Trace_ELBO agree draw by draw.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

from bayesprune import sparsify
from bayesprune.guides import MAP, MeanField
from bayesprune.guides.base import key
from bayesprune.inference import FusedELBO, TraceELBO
from bayesprune.priors import HALO, Gaussian, UnitGates
from tests.helpers import assert_fused_equals_trace, forced_gates

F64 = torch.float64
THETA = [0.3, 0.6, 0.8, 0.45]
N_DRAWS = 20_000
N_DATA = 80


@pytest.fixture(scope="module")
def case():
    """One gated tanh layer of K = 4 units, a fixed batch of 8, θ inside the cube."""
    torch.manual_seed(3)
    module = nn.Sequential(nn.Linear(2, len(THETA)), nn.Tanh(), nn.Linear(len(THETA), 3)).to(F64)
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(3.0)  # a strongly non-linear network: the gates interact
    net = sparsify(module, UnitGates(gamma=1.0))
    guide = MAP(net)
    theta = guide.gate_probs[key("0.gate")]
    with torch.no_grad():
        theta.copy_(torch.tensor(THETA, dtype=F64))
    x = torch.randn(8, 2, dtype=F64)
    y = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1])
    configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=len(THETA))), dtype=F64)
    q = torch.where(configs > 0, theta.detach(), 1 - theta.detach()).prod(1)
    return net, guide, theta, x, y, configs, q


def per_config(estimator, case) -> tuple[torch.Tensor, torch.Tensor]:
    """The estimator's loss and θ-gradient at every gate configuration: ``(2^K,)``, ``(2^K, K)``."""
    net, guide, theta, x, y, configs, _ = case
    losses, grads = [], []
    for z in configs:
        with forced_gates(z):
            loss = estimator(net, guide, x, y, N_DATA)
        losses.append(loss.detach())
        grads.append(torch.autograd.grad(loss, theta)[0])
    return torch.stack(losses), torch.stack(grads)


def exact(case) -> tuple[torch.Tensor, torch.Tensor]:
    """The negative ELBO by enumeration, ``log q(W) − log p(W) + Σ γθ + log Z − Σ_z q(z)
    (N/B) log p(y | x, z, W)``, built from the fused loss's pieces; and its gradient in θ."""
    net, guide, theta, x, y, configs, _ = case
    values, log_q = guide.rsample()
    total = log_q - net.log_prior(values, net.context(N_DATA))  # the gates' closed form
    for z in configs:
        w = torch.where(z > 0, theta, 1 - theta).prod()
        out = net.run(dict(values, **{"0.gate": z}), x)
        total = total - w * (N_DATA / x.shape[0]) * net.likelihood.log_prob(out, y)
    return total.detach(), torch.autograd.grad(total, theta)[0]


def monte_carlo(values: torch.Tensor, case, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error of ``N_DRAWS`` draws of a per-configuration quantity."""
    *_, theta, _, _, configs, _ = case
    gen = torch.Generator().manual_seed(seed)
    draws = torch.bernoulli(theta.detach().expand(N_DRAWS, -1), generator=gen)
    index = (draws * 2 ** torch.arange(len(THETA) - 1, -1, -1, dtype=F64)).sum(1).long()
    assert torch.equal(configs[index], draws)
    sample = values[index]
    return sample.mean(0), sample.std(0) / math.sqrt(N_DRAWS)


def expectation(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (q.reshape(-1, *[1] * (values.dim() - 1)) * values).sum(0)


def test_both_losses_average_to_the_exact_elbo(case):
    q = case[-1]
    exact_loss, _ = exact(case)
    for estimator, seed in [(FusedELBO(), 1), (TraceELBO(), 2)]:
        losses, _ = per_config(estimator, case)
        torch.testing.assert_close(expectation(losses, q), exact_loss, rtol=1e-10, atol=1e-10)
        mean, se = monte_carlo(losses, case, seed)
        assert float(se) > 0
        assert abs(float(mean - exact_loss)) <= 5 * float(se), (estimator.name, mean, exact_loss)


def test_straight_through_gradient_is_biased(case):
    """The mean of 20k straight-through gradients misses the exact gradient by many standard
    errors; its relative bias ‖E[ĝ] − ∇‖ / ‖∇‖ is far above what Monte Carlo could explain."""
    q = case[-1]
    _, exact_grad = exact(case)
    _, grads = per_config(FusedELBO(), case)
    mean, se = monte_carlo(grads, case, seed=3)
    assert bool((se > 0).all())
    assert float(((mean - exact_grad).abs() / se).max()) > 10  # a real bias, not noise
    bias = expectation(grads, q) - exact_grad  # the bias itself, by enumeration
    relative = float(bias.norm() / exact_grad.norm())
    assert relative > 10 * float(se.norm() / exact_grad.norm())
    assert bool(((mean - expectation(grads, q)).abs() <= 5 * se).all())  # MC sees that bias


def test_score_function_gradient_is_unbiased_but_noisier(case):
    q = case[-1]
    _, exact_grad = exact(case)
    _, grads = per_config(TraceELBO(), case)
    torch.testing.assert_close(expectation(grads, q), exact_grad, rtol=1e-9, atol=1e-9)
    mean, se = monte_carlo(grads, case, seed=4)
    assert bool((se > 0).all())
    assert bool(((mean - exact_grad).abs() <= 5 * se).all()), (mean, exact_grad, se)
    _, st = per_config(FusedELBO(), case)
    variance = {
        name: expectation((g - expectation(g, q)).square(), q)
        for name, g in [("trace", grads), ("fused", st)]
    }
    assert bool((variance["trace"] > variance["fused"]).all()), variance


def test_straight_through_is_not_the_exact_gradient_at_a_vertex(case):
    """θ ∈ {0, 1}: the draw is certain, the exact gradient is ``f(z_u = 1) − f(z_u = 0) + γ_u``
    and the straight-through one the slope ``∂f/∂z_u + γ_u`` at the drawn z."""
    net, guide, theta, x, y, _, _ = case
    with torch.no_grad():
        theta.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64))
    try:
        _, exact_grad = exact(case)
        loss = FusedELBO()(net, guide, x, y, N_DATA)
        st = torch.autograd.grad(loss, theta)[0]
        assert float((st - exact_grad).abs().max()) > 0.1 * float(exact_grad.abs().max())
    finally:
        with torch.no_grad():
            theta.copy_(torch.tensor(THETA, dtype=F64))


def test_straight_through_slope_of_an_open_gate_is_its_weights_gradient_along_them(case):
    """``a_u = z_u (w_u·x + b_u)``, so at ``z_u = 1`` the slope ``∂f/∂z_u`` is ``⟨∂f/∂w_u, w_u⟩ +
    b_u ∂f/∂b_u``: it vanishes where the unit's weights are stationary for the likelihood,
    whatever removing the unit would cost."""
    net, guide, theta, x, y, _, _ = case
    z = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64)
    with forced_gates(z):
        loss = FusedELBO()(net, guide, x, y, N_DATA)
    gamma = torch.tensor(net.site("0.gate").meta["gamma"], dtype=F64)
    slope = torch.autograd.grad(loss, theta)[0] - gamma
    values = guide.point()
    values["0.gate"] = z
    w = values["0.weight"].clone().requires_grad_()
    b = net.module[0].bias
    f = -(N_DATA / x.shape[0]) * net.likelihood.log_prob(
        net.run(dict(values, **{"0.weight": w}), x), y
    )
    gw, gb = torch.autograd.grad(f, [w, b])
    along = (gw * w).sum(1) + gb * b
    torch.testing.assert_close(slope[z > 0], along[z > 0].detach(), rtol=1e-10, atol=1e-10)
    assert float(slope[z > 0].abs().min()) > 1e-3  # a real check: not zero on this net


def test_other_gradients_equal_trace_elbo_draw_by_draw_with_gates(case):
    """Only θ's gradient differs: on one gate draw, the weights' and the deterministic
    parameters' gradients of the fused loss are Trace_ELBO's (the gates' terms do not
    depend on them), so they are unbiased."""
    net, guide, theta, x, y, configs, _ = case
    params = list(guide.unconstrained.parameters()) + [p for _, p in net.deterministic_parameters()]
    for z in configs[[3, 10]]:
        out = {}
        for estimator in (FusedELBO(), TraceELBO()):
            with forced_gates(z):
                loss = estimator(net, guide, x, y, N_DATA)
            out[estimator.name] = torch.autograd.grad(loss, params)
        for a, b in zip(out["fused"], out["trace"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("per", ["weight", "unit"])
def test_other_gradients_equal_trace_elbo_under_mean_field_and_halo(per):
    """The same with sampled weights and HALO scales: one seed, one gate draw, both losses
    see the same weights, and every non-gate gradient agrees."""
    torch.manual_seed(4)
    module = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 3)).to(F64)
    net = sparsify(module, UnitGates(gamma=1.0, weight_prior=HALO(xi=1e-2, psi=2e-2, per=per)))
    guide = MeanField(net, init_scale=0.1, scales="lognormal")
    with torch.no_grad():
        guide.gate_probs[key("0.gate")].copy_(torch.tensor([0.3, 0.6, 0.8], dtype=F64))
    params = [p for n, p in guide.named_parameters() if not n.startswith("gate_probs")]
    params += [p for _, p in net.deterministic_parameters()]
    x, y = torch.randn(5, 2, dtype=F64), torch.tensor([0, 1, 2, 0, 1])
    out = {}
    for estimator in (FusedELBO(), TraceELBO()):
        torch.manual_seed(11)
        with forced_gates(torch.tensor([1.0, 0.0, 1.0], dtype=F64)):
            loss = estimator(net, guide, x, y, 50)
        out[estimator.name] = torch.autograd.grad(loss, params)
    assert len(params) > 4
    for a, b in zip(out["fused"], out["trace"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("guide_cls", [MAP, MeanField])
def test_without_gates_fused_equals_trace_draw_by_draw(guide_cls):
    """The contrast: a Gaussian weight prior has no discrete site, both losses use the same
    reparameterised draws, and their values and gradients agree to rounding."""
    torch.manual_seed(2)
    module = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(F64)
    net = sparsify(module, Gaussian(0.7))
    guide = guide_cls(net)
    params = list(guide.parameters()) + [p for _, p in net.deterministic_parameters()]
    x, y = torch.randn(6, 3, dtype=F64), torch.tensor([0, 1, 2, 0, 1, 2])
    assert_fused_equals_trace(net, guide, x, y, 60, params, seed=9, tol=1e-10)
