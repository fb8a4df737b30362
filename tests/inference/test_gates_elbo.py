"""The gates' objective, exactly: by enumerating every gate configuration of tiny networks,

- the fused loss (straight-through hard sample + closed-form gate cost ``Σ γθ + log Z``) and
  Pyro's ``Trace_ELBO`` (``log q(z) − log p(z | π*) − log p(π*)``) have the same expectation;
- the Trace_ELBO's score-function gradient is unbiased for the exact gradient;
- the expected negative ELBO is multilinear in θ, so its minimum over ``[0, 1]^k`` is at a
  vertex -- a deterministic network;

and, on synthetic data, ``fit`` drives θ to the vertices and prunes more as γ grows.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn as nn
from scipy import optimize

from bayesprune import fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.distributions import optimal_prior_prob
from bayesprune.guides import MAP, MeanField
from bayesprune.guides.base import key
from bayesprune.inference import FusedELBO, TraceELBO
from bayesprune.nn import Gaussian as GaussianLikelihood
from bayesprune.priors import HALO, Gaussian, UnitGates
from tests.helpers import (
    assert_fused_equals_trace,
    configuration_weight,
    configurations,
    forced_gates,
    set_gates,
)

F64 = torch.float64


def tiny(hidden: tuple[int, int] = (3, 2)) -> nn.Sequential:
    """Two gated layers (``"0"``, ``"2"``) and an output layer, float64."""
    torch.manual_seed(7)
    h1, h2 = hidden
    return nn.Sequential(
        nn.Linear(2, h1), nn.Tanh(), nn.Linear(h1, h2), nn.Tanh(), nn.Linear(h2, 3)
    ).to(F64)


def loss_given(estimator, net, guide, zs, x, y, n_data, seed=0) -> torch.Tensor:
    """One call of ``estimator`` with the gates forced to ``zs`` (other draws seeded)."""
    with forced_gates(zs) as drawn:
        torch.manual_seed(seed)
        loss = estimator(net, guide, x, y, n_data)
    assert len(drawn) == len(zs)  # every gate was drawn exactly once
    return loss


def exact_expected_loss(net, guide, x, y, n_data, seed=0) -> torch.Tensor:
    """``E_q[−ELBO]`` as a function of θ (differentiable, no straight-through): the closed-form
    gate cost plus the enumerated expectation of ``−(N/B) log p(y | x, z, W)``."""
    with forced_gates([]):  # the same weight draws as ``loss_given``
        torch.manual_seed(seed)
        values, log_q = guide.rsample()
    ctx = net.context(n_data)
    thetas = [guide.gate_probs[key(s.name)] for s in net.gates]
    fixed = {k: (v.detach() if k in {s.name for s in net.gates} else v) for k, v in values.items()}
    total = log_q - net.log_prior(fixed, ctx)
    scale = n_data / x.shape[0]
    for zs in configurations([s.shape[0] for s in net.gates]):
        zs = [z.to(net.dtype) for z in zs]
        vals = dict(fixed, **{s.name: z for s, z in zip(net.gates, zs, strict=True)})
        w = configuration_weight([z.double() for z in zs], [t.double() for t in thetas])
        total = total - w * scale * net.likelihood.log_prob(net.run(vals, x), y)
    return total


# --- fused and Trace_ELBO: the same expectation ----------------------------------------------


CASES = [
    ("map", 0.5, F64, 1e-10),
    ("map", 3.0, F64, 1e-10),
    ("map", 30.0, F64, 1e-9),
    ("mean_field", 3.0, F64, 1e-10),
    ("map", 30.0, torch.float32, 2e-5),
]


@pytest.mark.parametrize(("guide_name", "gamma", "dtype", "tol"), CASES)
def test_fused_and_trace_elbo_have_the_same_expectation(guide_name, gamma, dtype, tol):
    """Enumerating z: ``Σ_z q(z) fused(z) = Σ_z q(z) trace(z)`` though the two differ for each
    z (the fused loss has the gates' KL in closed form, the trace loss a one-sample estimate).
    At γ = 30 in float32 π* is below the float epsilon: the gate's Bernoulli must not clamp it."""
    net = sparsify(tiny().to(dtype), UnitGates(gamma=gamma, weight_prior=Gaussian(0.7)))
    guide = MAP(net) if guide_name == "map" else MeanField(net, init_scale=0.1)
    set_gates(guide, {"0": [0.15, 0.5, 0.8], "2": [0.35, 0.9]})
    x = torch.randn(4, 2, dtype=dtype)
    y = torch.tensor([0, 1, 2, 1])
    thetas = [guide.gate_probs[key(s.name)].detach().double() for s in net.gates]
    expect = {"fused": 0.0, "trace": 0.0}
    gaps = []
    for zs in configurations([s.shape[0] for s in net.gates]):
        zs = [z.to(dtype) for z in zs]
        w = float(configuration_weight([z.double() for z in zs], thetas))
        fused = float(loss_given(FusedELBO(), net, guide, zs, x, y, 40).detach())
        trace = float(loss_given(TraceELBO(), net, guide, zs, x, y, 40).detach())
        expect["fused"] += w * fused
        expect["trace"] += w * trace
        gaps.append(abs(fused - trace))
    assert max(gaps) > 0.1  # not equal draw by draw ...
    scale = 1 + abs(expect["fused"])
    assert expect["fused"] == pytest.approx(expect["trace"], abs=tol * scale)  # ... but on average
    exact = float(exact_expected_loss(net, guide, x, y, 40).detach())
    assert expect["fused"] == pytest.approx(exact, abs=tol * scale)


def test_model_sees_the_gate_prior_probability_at_its_optimum():
    net = sparsify(tiny(), UnitGates(gamma=4.0))
    guide = MAP(net)
    set_gates(guide, {"0": [0.0, 0.4, 1.0], "2": [0.6, 0.2]})
    x, y = torch.randn(3, 2, dtype=F64), torch.tensor([0, 1, 2])
    guide_tr = poutine.trace(guide).get_trace(x, y, n_data=3)
    model_tr = poutine.trace(poutine.replay(net.model, trace=guide_tr)).get_trace(x, y, n_data=3)
    for s in net.gates:
        pi = model_tr.nodes[s.meta["prob"]]["value"]
        theta = guide.gate_probs[key(s.name)].detach()
        torch.testing.assert_close(pi, optimal_prior_prob(theta, torch.tensor(4.0, dtype=F64)))
        assert torch.equal(model_tr.nodes[s.name]["value"], guide_tr.nodes[s.name]["value"])


# --- gradients ------------------------------------------------------------------------------


def gate_grads(loss: torch.Tensor, guide) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(guide.gate_probs.values()))
    return torch.cat([g.reshape(-1) for g in grads])


def test_trace_elbo_gradient_is_unbiased():
    """The score-function estimator of ``Trace_ELBO``: its expectation (exactly, by
    enumeration) and its average over many draws (within Monte-Carlo error) equal the exact
    gradient of the expected loss."""
    net = sparsify(tiny((2, 2)), UnitGates(gamma=2.0))
    guide = MAP(net)
    set_gates(guide, {"0": [0.3, 0.7], "2": [0.45, 0.8]})
    x, y = torch.randn(4, 2, dtype=F64), torch.tensor([0, 1, 2, 1])
    exact = gate_grads(exact_expected_loss(net, guide, x, y, 4), guide)
    assert float(exact.abs().min()) > 0.05
    thetas = [guide.gate_probs[key(s.name)].detach() for s in net.gates]
    enumerated = torch.zeros_like(exact)
    for zs in configurations([s.shape[0] for s in net.gates]):
        g = gate_grads(loss_given(TraceELBO(), net, guide, zs, x, y, 4), guide)
        enumerated += configuration_weight(zs, thetas) * g
    torch.testing.assert_close(enumerated, exact, rtol=1e-9, atol=1e-9)
    # Monte Carlo: Pyro's own draws
    elbo = TraceELBO(num_particles=1)
    pyro.set_rng_seed(8)
    draws = torch.stack([gate_grads(elbo(net, guide, x, y, 4), guide) for _ in range(600)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert bool(((mean - exact).abs() <= 5 * se).all()), (mean, exact, se)


# --- multilinear objective, vertex minimisers ---------------------------------------------------


def objective_on_grid(net, guide, x, y, n_data):
    def f(theta: np.ndarray) -> float:
        set_gates(guide, {"0": theta.tolist()})
        with torch.no_grad():
            return float(exact_expected_loss(net, guide, x, y, n_data))

    return f


@pytest.fixture(scope="module")
def three_gates():
    """One gated layer of 3 units (fixed weights) and targets the full network fits exactly,
    so every unit helps the likelihood (some much more than others)."""
    torch.manual_seed(9)
    module = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).to(F64)
    x = torch.randn(6, 2, dtype=F64)
    with torch.no_grad():
        y = module(x).squeeze(-1)
    return module, x, y


@pytest.mark.parametrize("gamma", [0.0, 0.5, 3.0, 40.0])
def test_expected_loss_is_multilinear_and_minimised_at_a_vertex(three_gates, gamma):
    module, x, y = three_gates
    net = sparsify(module, UnitGates(gamma=gamma), likelihood=GaussianLikelihood(0.1))
    guide = MAP(net)
    f = objective_on_grid(net, guide, x, y, 6)
    rng = np.random.default_rng(0)
    # linear in each θ_u separately, anywhere in the cube ...
    for _ in range(4):
        base = rng.uniform(0, 1, 3)
        for u in range(3):
            v = [f(np.where(np.arange(3) == u, t, base)) for t in (0.0, 0.4, 0.7, 1.0)]
            slope = (v[3] - v[0]) / 1.0
            for t, value in zip((0.4, 0.7), v[1:3], strict=True):
                assert value == pytest.approx(v[0] + slope * t, abs=1e-9 * (1 + abs(v[0])))
    # ... but not jointly linear: the units interact through the likelihood
    a, b = f(np.array([1.0, 1.0, 0.5])), f(np.array([0.0, 0.0, 0.5]))
    c, d = f(np.array([1.0, 0.0, 0.5])), f(np.array([0.0, 1.0, 0.5]))
    assert abs(a + b - c - d) > 1e-6
    # the minimum over a grid of the cube is attained at a vertex
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    values = {t: f(np.array(t)) for t in itertools.product(grid, repeat=3)}
    vertices = {t: v for t, v in values.items() if set(t) <= {0.0, 1.0}}
    best = min(values, key=values.get)
    assert min(values.values()) >= min(vertices.values()) - 1e-9
    assert set(best) <= {0.0, 1.0}, best
    # and projected gradient descent from inside the cube ends on a vertex
    res = optimize.minimize(f, np.full(3, 0.5), method="L-BFGS-B", bounds=[(0, 1)] * 3)
    assert np.all((np.abs(res.x) < 1e-6) | (np.abs(res.x - 1) < 1e-6)), res.x
    assert res.fun == pytest.approx(min(vertices.values()), abs=1e-6)
    if gamma == 0.0:  # free units are all kept
        assert best == (1.0, 1.0, 1.0)
    if gamma == 40.0:  # too expensive: all pruned
        assert best == (0.0, 0.0, 0.0)


def test_the_vertex_objective_trades_units_against_fit(three_gates):
    """Between the extremes the best deterministic network keeps some units and not others."""
    module, x, y = three_gates
    kept = []
    for gamma in (0.0, 0.5, 3.0, 40.0):
        net = sparsify(module, UnitGates(gamma=gamma), likelihood=GaussianLikelihood(0.1))
        f = objective_on_grid(net, MAP(net), x, y, 6)
        vertices = {t: f(np.array(t)) for t in itertools.product([0.0, 1.0], repeat=3)}
        kept.append(int(sum(min(vertices, key=vertices.get))))
    assert kept == sorted(kept, reverse=True) and kept[0] == 3 and kept[-1] == 0
    assert any(0 < k < 3 for k in kept), kept


# --- a HALO weight prior under the gates ---------------------------------------------------


@pytest.mark.parametrize("guide_name", ["map", "mean_field"])
@pytest.mark.parametrize("per", ["weight", "unit"])
def test_halo_weights_under_fixed_gates_fused_equals_trace(guide_name, per):
    """With θ at the vertices the gates are deterministic and both estimators compute the
    same loss and the same gradients for every weight, scale and deterministic parameter."""
    prior = UnitGates(gamma=2.5, weight_prior=HALO(xi=1e-2, psi=2e-2, per=per))
    net = sparsify(tiny(), prior)
    assert {s.role for s in net.sites} == {"gate_prob", "gate", "scale", "weight"}
    mean_field = MeanField(net, init_scale=0.1, scales="lognormal")
    guide = MAP(net) if guide_name == "map" else mean_field
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.05 * torch.randn_like(p))
    set_gates(guide, {"0": [1.0, 0.0, 1.0], "2": [0.0, 1.0]})
    x, y = torch.randn(5, 2, dtype=F64), torch.tensor([0, 1, 2, 0, 1])
    params = [p for n, p in guide.named_parameters() if not n.startswith("gate_probs")]
    params += [p for _, p in net.deterministic_parameters()]
    assert_fused_equals_trace(net, guide, x, y, 50, params, seed=11, tol=1e-9)


# --- fitting -------------------------------------------------------------------------------------


GAMMAS = (0.0, 1.0, 3.0)


@pytest.fixture(scope="module")
def fits():
    """The same tiny MLP and data fitted under three prices."""
    data = synthetic_classification(256, 64, 0, input_shape=(8,), n_classes=3, seed=0)
    out = {}
    for gamma in GAMMAS:
        torch.manual_seed(0)
        module = nn.Sequential(
            nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
        )
        net = sparsify(module, UnitGates(gamma=gamma))
        result = fit(
            net,
            data,
            epochs=40,
            batch_size=32,
            lr=1e-2,
            role_lr={"gate": 1e-2},
            progress=False,
            seed=0,
        )
        theta = torch.cat([p.detach() for p in result.guide.gate_probs.values()])
        out[gamma] = (result, theta)
    return out


def test_fit_keeps_theta_in_the_unit_interval(fits):
    for _, theta in fits.values():
        assert bool(((theta >= 0) & (theta <= 1)).all())


def test_a_high_price_drives_theta_to_the_vertices(fits):
    result, theta = fits[3.0]
    at_vertex = (theta == 0) | (theta == 1)
    near_vertex = torch.minimum(theta, 1 - theta) <= 0.05
    assert float(at_vertex.float().mean()) >= 0.5
    assert float(near_vertex.float().mean()) >= 0.75
    assert 0 < int((theta > 0.5).sum()) < theta.numel() // 2  # pruned most, not all
    assert result.history[-1]["val_accuracy"] >= 0.7


def test_free_units_are_all_kept(fits):
    _, theta = fits[0.0]
    assert bool((theta > 0.5).all())


def test_a_higher_price_keeps_fewer_units(fits):
    kept = [int((fits[g][1] > 0.5).sum()) for g in GAMMAS]
    assert kept[0] > kept[1] > kept[2], kept
