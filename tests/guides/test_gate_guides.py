"""Gate handling in every guide: ``q(z) = Bernoulli(θ)`` with θ a projected parameter, the
gate's prior probability a Delta at π*(θ), and the straight-through estimator of the fused
path -- exact in expectation for losses multilinear in the gates, biased otherwise."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
import torch.nn as nn

from bayesprune import sparsify
from bayesprune.distributions import optimal_prior_prob
from bayesprune.guides import MAP, MeanField
from bayesprune.inference import FusedELBO
from bayesprune.priors import HALO, UnitGates
from bayesprune.priors.gates import probs_key
from tests.helpers import configuration_weight, configurations, mlp, set_gates

F64 = torch.float64
GUIDES = {"map": MAP, "mean_field": lambda net: MeanField(net, init_scale=0.05)}


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", GUIDES)
def test_gate_parameters(name):
    net = sparsify(mlp(3, 4, 3, 2), UnitGates(gamma=2.0, init_prob=0.8, weight_prior=HALO()))
    guide = GUIDES[name](net)
    assert sorted(guide.gate_probs) == ["0/gate", "2/gate"]
    assert torch.equal(guide.gate_probs["0/gate"], torch.full((4,), 0.8))
    roles = guide.parameters_by_role()
    assert [p.shape for p in roles["gate"]] == [(4,), (3,)]
    assert roles["gate"][0] is guide.gate_probs["0/gate"]
    assert roles.get("gate_prob", []) == []  # π is not a parameter: it sits at π*(θ)
    # a freshly built guide loads the state
    set_gates(guide, {"0": [0.1, 0.2, 0.3, 0.4]})
    other = GUIDES[name](net)
    other.load_state_dict(guide.state_dict())
    assert torch.equal(other.gate_probs["0/gate"], guide.gate_probs["0/gate"])


@pytest.mark.parametrize("name", GUIDES)
def test_pyro_guide_draws_bernoulli_gates_and_puts_pi_at_its_optimum(name):
    net = sparsify(mlp(3, 4, 3, 2), UnitGates(gamma=3.0))
    guide = GUIDES[name](net)
    theta = [0.0, 0.25, 0.75, 1.0]
    set_gates(guide, {"0": theta})
    tr = pyro.poutine.trace(guide).get_trace()
    z = tr.nodes["0.gate"]["value"]
    assert set(z.tolist()) <= {0.0, 1.0} and z[0] == 0 and z[3] == 1
    q = tr.nodes["0.gate"]["fn"]
    assert q.event_shape == (4,)
    torch.testing.assert_close(q.base_dist.probs, torch.tensor(theta))
    pi = tr.nodes["0.gate_prob"]["value"]
    assert isinstance(tr.nodes["0.gate_prob"]["fn"], pyro.distributions.Delta)
    want = optimal_prior_prob(torch.tensor(theta), torch.tensor(3.0))
    torch.testing.assert_close(pi, want)
    assert torch.equal(guide.point()["0.gate_prob"], pi)
    # sample(): many draws at once
    draws = guide.sample(2000, sites=["0.gate", "0.gate_prob"])
    assert draws["0.gate"].shape == (2000, 4)
    torch.testing.assert_close(draws["0.gate"].mean(0), torch.tensor(theta), atol=0.04, rtol=0)
    assert torch.equal(draws["0.gate_prob"], want.expand(2000, 4))


def test_fused_draw_is_hard_with_a_straight_through_gradient():
    net = sparsify(mlp(3, 4, 3, 2), UnitGates(gamma=3.0))
    guide = MAP(net)
    set_gates(guide, {"0": [0.0, 0.3, 0.6, 1.0]})
    site = net.site("0.gate")
    torch.manual_seed(4)
    draws = []
    for _ in range(3000):
        z, log_q = guide.rsample_site(site)
        assert log_q is None  # folded into the prior's closed form
        draws.append(z.detach())
    z_all = torch.stack(draws)
    hard = z_all.round()
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    assert bool((z_all[hard == 0] == 0).all())  # a closed gate is an exact zero
    # an open one is 1 up to the rounding of ``(1 + θ) − θ`` in the straight-through sum
    torch.testing.assert_close(z_all, hard, rtol=0, atol=2 * torch.finfo(z_all.dtype).eps)
    torch.testing.assert_close(z_all.mean(0), torch.tensor([0.0, 0.3, 0.6, 1.0]), atol=0.03, rtol=0)
    theta = guide.gate_probs["0/gate"]
    set_gates(guide, {"0": [0.2, 0.3, 0.6, 0.8]})
    z, _ = guide.rsample_site(site)
    (grad,) = torch.autograd.grad((z * torch.arange(1.0, 5.0)).sum(), theta)
    assert torch.equal(grad, torch.arange(1.0, 5.0))  # ∂z/∂θ = 1
    values, log_q = guide.rsample()
    assert torch.equal(values[probs_key("0.gate")], theta.detach())
    assert float(log_q) == 0.0  # MAP weights, gates folded in
    pi, _ = guide.rsample_site(net.site("0.gate_prob"))
    torch.testing.assert_close(pi, optimal_prior_prob(theta.detach(), torch.tensor(3.0)))


def test_point_is_the_median_gate_and_keeps_theta():
    net = sparsify(mlp(3, 4, 3, 2), UnitGates(gamma=3.0))
    guide = MAP(net)
    set_gates(guide, {"0": [0.0, 0.5, 0.51, 1.0]})
    point = guide.point()
    assert torch.equal(point["0.gate"], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(point[probs_key("0.gate")], torch.tensor([0.0, 0.5, 0.51, 1.0]))
    assert not point[probs_key("0.gate")].requires_grad


@pytest.mark.parametrize("name", GUIDES)
def test_project_puts_theta_back_into_the_unit_interval(name):
    net = sparsify(mlp(3, 4, 3, 2), UnitGates(gamma=3.0))
    guide = GUIDES[name](net)
    set_gates(guide, {"0": [-0.5, 0.3, 1.7, 1.0], "2": [2.0, -1e-9, 0.5]})
    # a draw already treats θ as clamped
    values, _ = guide.rsample()
    assert values["0.gate"].detach()[0] == 0 and values["0.gate"].detach()[2] == 1
    guide.project_()
    assert torch.equal(guide.gate_probs["0/gate"], torch.tensor([0.0, 0.3, 1.0, 1.0]))
    assert torch.equal(guide.gate_probs["2/gate"], torch.tensor([1.0, 0.0, 0.5]))


def test_a_gate_at_one_whose_price_outweighs_its_use_is_pruned():
    """Projected gradient descent needs the gradient *at* the boundary: the gate cost is
    ``γθ`` with slope γ at θ = 1 too, so an unused unit at θ = 1 must move towards 0."""
    net = sparsify(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), UnitGates(gamma=50.0))
    with torch.no_grad():
        net.module[1].weight.zero_()  # the gated units are useless
    guide = MAP(net)
    set_gates(guide, {"0": [1.0, 1.0, 1.0, 1.0]})
    x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
    loss = FusedELBO()(net, guide, x, y, n_data=8)
    (grad,) = torch.autograd.grad(loss, guide.gate_probs["0/gate"])
    torch.testing.assert_close(grad, torch.full((4,), 50.0))


# --- the straight-through estimator -----------------------------------------------------------


def exact_expectation(loss_of_z, thetas: list[torch.Tensor]) -> torch.Tensor:
    """``E_{z ~ Bern θ}[loss(z)]`` by enumeration, differentiable in θ."""
    total = torch.zeros((), dtype=F64)
    for zs in configurations([t.numel() for t in thetas]):
        total = total + configuration_weight(zs, thetas) * loss_of_z(zs)
    return total


def test_straight_through_is_unbiased_for_a_multilinear_loss():
    """Two gated Linear layers, no nonlinearity, a linear read-out: the output is linear in
    each gate separately (bilinear across the two layers), so ``E[∂L/∂z_u](z ~ q) =
    ∂E[L]/∂θ_u`` and the mean straight-through gradient equals the exact gradient."""
    torch.manual_seed(5)
    module = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 3), nn.Linear(3, 2)).to(F64)
    net = sparsify(module, UnitGates(gamma=1.0), layers=["0", "1"])
    guide = MAP(net)
    set_gates(guide, {"0": [0.2, 0.5, 0.7, 0.9], "1": [0.3, 0.6, 0.8]})
    x = torch.randn(5, 3, dtype=F64)
    c = torch.randn(5, 2, dtype=F64)
    thetas = [guide.gate_probs["0/gate"], guide.gate_probs["1/gate"]]
    base = guide.point()

    def loss_of_z(zs):
        values = dict(base, **{"0.gate": zs[0], "1.gate": zs[1]})
        return (net.run(values, x) * c).sum()

    exact = torch.autograd.grad(exact_expectation(loss_of_z, thetas), thetas)
    exact = torch.cat([g.reshape(-1) for g in exact])

    draws = []
    for _ in range(1500):
        values, _ = guide.rsample()
        loss = (net.run(values, x) * c).sum()
        draws.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, thetas)]))
    draws = torch.stack(draws)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert float(draws.std(0).min()) > 0  # the estimate is random, not trivially exact
    assert bool(((mean - exact).abs() <= 5 * se + 1e-9).all()), (mean, exact, se)


def test_straight_through_is_biased_for_a_nonlinear_loss():
    """For a squared error the straight-through gradient is biased: with ``L = (a·z − y)²``
    the mean ST gradient is ``2a_u(a·θ − y)`` while the exact one is ``a_u²(1 − 2θ_u) +
    2a_u(a·θ − y)``. When the residual dominates (a target far from the output) the bias is
    small next to the gradient and the sign -- the direction θ moves -- is still right."""
    module = nn.Sequential(nn.Linear(1, 2, bias=False), nn.Linear(2, 1, bias=False)).to(F64)
    with torch.no_grad():
        module[0].weight.copy_(torch.tensor([[1.0], [1.0]]))
        module[1].weight.copy_(torch.tensor([[0.5, -2.0]]))  # a = (0.5, −2)
    net = sparsify(module, UnitGates(gamma=1.0), layers=["0"])
    guide = MAP(net)
    set_gates(guide, {"0": [0.2, 0.7]})
    theta = guide.gate_probs["0/gate"]
    x, y = torch.ones(1, 1, dtype=F64), 3.0
    a = torch.tensor([0.5, -2.0], dtype=F64)
    base = guide.point()

    def loss_of_z(zs):
        return (net.run(dict(base, **{"0.gate": zs[0]}), x) - y).square().sum()

    (exact,) = torch.autograd.grad(exact_expectation(loss_of_z, [theta]), [theta])
    # the straight-through gradient's expectation, by enumeration of its draws
    st_mean = torch.zeros(2, dtype=F64)
    for (z,) in configurations([2]):
        w = torch.where(z > 0, theta, 1 - theta).prod().detach()
        z = z.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss_of_z([z]), z)
        st_mean = st_mean + w * g
    th = theta.detach()
    resid = float((a * th).sum()) - y
    torch.testing.assert_close(st_mean, 2 * a * resid)
    torch.testing.assert_close(exact, a.square() * (1 - 2 * th) + 2 * a * resid)
    assert float((exact - st_mean).abs().max()) > 0.05  # biased ...
    assert torch.equal(torch.sign(exact), torch.sign(st_mean))  # ... but the sign agrees
    # and the library's own draws average to the biased value, not the exact one
    torch.manual_seed(6)
    draws = []
    for _ in range(2000):
        values, _ = guide.rsample()
        loss = (net.run(values, x) - y).square().sum()
        draws.append(torch.autograd.grad(loss, theta)[0])
    draws = torch.stack(draws)
    se = draws.std(0) / math.sqrt(len(draws))
    assert bool(((draws.mean(0) - st_mean).abs() <= 5 * se).all())
