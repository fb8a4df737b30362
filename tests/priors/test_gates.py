"""UnitGates: which layers it gates, its sites and prices, configs and errors, and its
densities -- the closed-form gate term is the exact ELBO contribution of its own Pyro
distributions (``E_q[log p(z | π*) + log p(π*) − log q(z)]``: the entropy folded in)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from bayesprune import sparsify
from bayesprune.distributions import Flattening, gate_cost, optimal_prior_prob
from bayesprune.distributions.flattening import log_normalizer
from bayesprune.priors import HALO, Gaussian, UnitGates, from_config
from bayesprune.priors.gates import gate_constants, probs_key
from bayesprune.sites import Context
from bayesprune.zoo import build
from tests.helpers import mlp


def names(net) -> list[str]:
    return [s.name for s in net.sites]


# --- choosing layers ------------------------------------------------------------------


def test_default_selection_leaves_out_the_output_layer():
    net = sparsify(mlp(4, 6, 5, 3), UnitGates(gamma=2.0))
    assert net.layer_names == ("0", "2")
    assert names(net)[:3] == ["0.gate_prob", "0.gate", "0.weight"]
    assert sparsify(build("lenet5", width=0.25), UnitGates()).layer_names == (
        "conv1",
        "conv2",
        "fc1",
    )
    # a single layer is kept: there is nothing else to gate
    assert names(sparsify(nn.Linear(3, 2), UnitGates())) == ["gate_prob", "gate", "weight"]


def test_explicit_layers_are_taken_as_given():
    assert sparsify(mlp(4, 6, 5, 3), UnitGates(), layers=nn.Linear).layer_names == ("0", "2", "4")
    assert sparsify(mlp(4, 6, 5, 3), UnitGates(), layers=["4"]).layer_names == ("4",)
    with pytest.raises(TypeError, match="'1'.*ReLU"):
        sparsify(mlp(4, 6, 5, 3), UnitGates(), layers=["1"])


def test_sites_describe_the_gates():
    conv = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    net = sparsify(conv, UnitGates(gamma=4.0, init_prob=0.7))
    prob, gate, weight = net.sites
    assert (prob.role, gate.role, weight.role) == ("gate_prob", "gate", "weight")
    assert prob.shape == gate.shape == (3,)
    assert prob.replaces is None and gate.replaces is None and weight.replaces == "0.weight"
    assert gate.meta["gamma"] == (4.0, 4.0, 4.0) == prob.meta["gamma"]
    assert gate.meta["dim"] == 1 and gate.meta["target"] == "0" and gate.meta["prob"] == prob.name
    assert prob.meta["gate"] == gate.name
    lin = sparsify(mlp(4, 6, 5, 3), UnitGates()).site("0.gate")
    assert lin.meta["dim"] == -1
    assert torch.equal(net.initial_value(gate), torch.full((3,), 0.7))
    torch.testing.assert_close(
        net.initial_value(prob), optimal_prior_prob(torch.full((3,), 0.7), torch.tensor(4.0))
    )


def test_halo_weight_prior_composes():
    prior = UnitGates(gamma=3.0, weight_prior=HALO(xi=1e-3, psi=2e-3, per="unit"))
    net = sparsify(mlp(4, 6, 5, 3), prior)
    assert names(net) == [
        "0.gate_prob",
        "0.gate",
        "0.weight_scale",
        "0.weight",
        "2.gate_prob",
        "2.gate",
        "2.weight_scale",
        "2.weight",
    ]
    assert net.site("0.weight_scale").shape == (6,)


# --- configs and errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "prior",
    [
        UnitGates(),
        UnitGates(gamma=0.0, cost="params", init_prob=1.0),
        UnitGates(gamma=7.5, cost="mixed", weight_prior=Gaussian(0.3), init_prob=0.5),
        UnitGates(gamma=2.0, cost="flops", weight_prior=HALO(xi=1e-3, psi=2e-3, per="unit")),
    ],
    ids=["default", "params", "mixed", "halo"],
)
def test_config_round_trip(prior):
    cfg = prior.config()
    assert cfg["name"] == "gates" and isinstance(cfg["weight_prior"], dict)
    again = from_config(json.loads(json.dumps(cfg)))
    assert isinstance(again, UnitGates)
    assert again.config() == cfg
    assert type(again.weight_prior) is type(prior.weight_prior)
    assert repr(again) == repr(prior)


def test_weight_prior_given_as_a_config():
    prior = UnitGates(weight_prior={"name": "halo", "xi": 1e-3, "psi": 1e-3})
    assert isinstance(prior.weight_prior, HALO) and prior.weight_prior.xi == 1e-3
    assert isinstance(UnitGates().weight_prior, Gaussian)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -1.0}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
        ({"gamma": float("inf")}, "gamma"),
        ({"gamma": True}, "gamma"),
        ({"gamma": "3"}, "gamma"),
        ({"cost": "FLOPS"}, "cost"),
        ({"cost": "latency"}, "cost"),
        ({"init_prob": 0.0}, "init_prob"),
        ({"init_prob": -0.2}, "init_prob"),
        ({"init_prob": 1.5}, "init_prob"),
        ({"init_prob": float("nan")}, "init_prob"),
        ({"weight_prior": {"name": "nope"}}, "unknown name"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UnitGates(**kwargs)


def test_gates_cannot_be_their_own_weight_prior():
    with pytest.raises(TypeError, match="weight_prior"):
        UnitGates(weight_prior=UnitGates())
    with pytest.raises(ValueError, match="bad hyper-parameters"):
        from_config({"name": "gates", "gama": 3.0})


# --- prices -----------------------------------------------------------------------------


@pytest.mark.parametrize("cost", ["flops", "params", "mixed"])
def test_complexity_prices_need_an_example_input(cost):
    with pytest.raises(ValueError, match="example input"):
        sparsify(mlp(4, 6, 5, 3), UnitGates(cost=cost))
    net = sparsify(
        mlp(4, 6, 5, 3), UnitGates(gamma=3.0, cost=cost), example_input=torch.zeros(1, 4)
    )
    prices = [g for s in net.gates for g in s.meta["gamma"]]
    assert sum(prices) / len(prices) == pytest.approx(3.0)


def test_uniform_prices():
    net = sparsify(mlp(4, 6, 5, 3), UnitGates(gamma=3.0))
    assert all(g == 3.0 for s in net.gates for g in s.meta["gamma"])


@pytest.mark.parametrize("cost", ["flops", "params", "mixed"])
def test_lenet5_prices(cost):
    net = sparsify(build("lenet5", width=0.25), UnitGates(gamma=10.0, cost=cost))  # zoo input
    price = {s.layer: s.meta["gamma"] for s in net.gates}
    assert {len(p) for p in price.values()} == {5, 12, 125}
    assert all(len(set(p)) == 1 for p in price.values())  # one price per layer
    assert price["conv1"][0] > price["fc1"][0]
    everything = [g for p in price.values() for g in p]
    assert sum(everything) / len(everything) == pytest.approx(10.0)
    if cost == "flops":  # MACs saved per unit: conv1 33600, conv2 10000, fc1 202 (see unit_costs)
        assert price["conv1"][0] / price["fc1"][0] == pytest.approx(33600 / 202)
        assert price["conv1"][0] > price["conv2"][0] > price["fc1"][0]
    if cost == "params":  # 326, 2126, 203
        assert price["conv2"][0] / price["conv1"][0] == pytest.approx(2126 / 326)


def test_prices_are_rebound_for_each_network():
    prior = UnitGates(gamma=2.0, cost="params")
    a = sparsify(build("lenet5", width=0.25), prior)
    b = sparsify(build("lenet300", width=0.1), prior)
    assert set(prior._prices) == {"fc1", "fc2"}
    assert a.site("conv1.gate").meta["gamma"] != b.site("fc1.gate").meta["gamma"]


# --- densities ----------------------------------------------------------------------------


def gate_values(net, theta: dict[str, torch.Tensor], dtype) -> dict[str, torch.Tensor]:
    """Site values as the guide makes them: π at π*(θ), θ under ``probs_key``, weights."""
    values: dict[str, torch.Tensor] = {}
    for s in net.sites:
        if s.role == "gate":
            values[s.name] = torch.bernoulli(theta[s.name])
            values[probs_key(s.name)] = theta[s.name]
        elif s.role == "gate_prob":
            g = torch.tensor(s.meta["gamma"], dtype=dtype)
            values[s.name] = optimal_prior_prob(theta[s.meta["gate"]], g)
        else:
            values[s.name] = net.initial_value(s).to(dtype)
    return values


@pytest.mark.parametrize(
    ("dtype", "gamma", "tol"),
    [(torch.float64, 0.0, 1e-10), (torch.float64, 3.0, 1e-10), (torch.float64, 30.0, 1e-9)]
    + [(torch.float32, 3.0, 1e-4), (torch.float32, 30.0, 1e-4)],
)
def test_closed_form_is_the_expected_elbo_term(dtype, gamma, tol):
    """``UnitGates.log_prob`` = ``Σ_u E_{z_u ~ Bern θ_u}[log p(z_u | π*_u) + log p(π*_u) −
    log q(z_u)] + log p(W)`` with the prior's own Pyro distributions. At γ = 30 in float32
    π* is far below the float epsilon: a ``Bernoulli(probs=π*)`` would clamp it (and the
    Trace_ELBO would see a wrong KL), the logits parametrisation does not."""
    prior = UnitGates(gamma=gamma, weight_prior=Gaussian(0.5))
    net = sparsify(mlp(4, 6, 5, 3).to(dtype), prior)
    ctx = Context(n_data=20, dtype=dtype)
    theta = {
        s.name: torch.tensor([0.0, 0.05, 0.3, 0.5, 0.9, 1.0], dtype=dtype)[: s.shape[0]]
        for s in net.gates
    }
    theta["2.gate"] = torch.tensor([0.2, 0.7, 1.0, 0.0, 0.999], dtype=dtype)
    values = gate_values(net, theta, dtype)
    fused = net.log_prior(values, ctx)
    total = torch.zeros((), dtype=torch.float64)
    for sites in net.layer_sites.values():
        prob_site, gate_site, weight_site = sites
        th = theta[gate_site.name].double()
        pi_dist = prior.distribution(prob_site, values, ctx)
        z_dist = prior.distribution(gate_site, values, ctx).base_dist
        lp1 = z_dist.log_prob(torch.ones_like(th, dtype=dtype)).double()
        lp0 = z_dist.log_prob(torch.zeros_like(th, dtype=dtype)).double()
        # E_q[log p(z | π*)] + H(q), with 0·log 0 = 0 (a vertex θ never draws the other z)
        e_log_p = torch.where(th > 0, th * lp1, 0.0) + torch.where(th < 1, (1 - th) * lp0, 0.0)
        entropy = -(torch.special.xlogy(th, th) + torch.special.xlogy(1 - th, 1 - th))
        total = (
            total + (e_log_p + entropy).sum() + pi_dist.log_prob(values[prob_site.name]).double()
        )
        total = (
            total
            + prior.distribution(weight_site, values, ctx)
            .log_prob(values[weight_site.name])
            .double()
        )
        # and the closed form itself is −Σ(γθ + log Z) plus the weights' density
        g = torch.tensor(gate_site.meta["gamma"], dtype=dtype)
        by_cost = -gate_cost(theta[gate_site.name], g).sum() + Gaussian(0.5).log_prob(
            [weight_site], values, ctx
        )
        torch.testing.assert_close(prior.log_prob(sites, values, ctx), by_cost)
    torch.testing.assert_close(fused.double(), total, rtol=tol, atol=tol * (1 + gamma))


def test_gate_distribution_keeps_tiny_prior_probabilities():
    """log p(z = 1 | π) = log π even for π below the float epsilon (float32 and float64)."""
    prior = UnitGates(gamma=3.0)
    net = sparsify(mlp(4, 6, 5, 3), prior)
    gate = net.site("0.gate")
    for dtype in (torch.float32, torch.float64):
        pi = torch.tensor([1e-30, 1e-12, 0.3, 1 - 1e-3, 0.0, 1.0], dtype=dtype)
        d = prior.distribution(gate, {"0.gate_prob": pi}, Context(10, dtype=dtype))
        assert d.event_shape == (6,)
        lp1 = d.base_dist.log_prob(torch.ones(6, dtype=dtype))
        lp0 = d.base_dist.log_prob(torch.zeros(6, dtype=dtype))
        torch.testing.assert_close(lp1[:4], pi[:4].log(), rtol=1e-6, atol=0)
        torch.testing.assert_close(lp0[:4], torch.log1p(-pi[:4]), rtol=1e-5, atol=1e-12)
        # the vertices: z = 0 is certain under π = 0, z = 1 under π = 1 (up to rounding)
        assert abs(float(lp0[4])) < 1e-30 and abs(float(lp1[5])) < 1e-6
        assert float(lp1[4]) < -80 and float(lp0[5]) < -15
        assert bool(torch.isfinite(lp0).all() & torch.isfinite(lp1).all())


def test_gate_prob_distribution_is_the_flattening_prior():
    prior = UnitGates(gamma=3.0, cost="params")
    net = sparsify(mlp(4, 6, 5, 3), prior, example_input=torch.zeros(1, 4))
    site = net.site("2.gate_prob")
    d = prior.distribution(site, {}, Context(100))
    assert d.event_shape == (5,)
    assert isinstance(d.base_dist, Flattening)
    torch.testing.assert_close(d.base_dist.gamma, torch.tensor(site.meta["gamma"]))


# --- collapse helpers ------------------------------------------------------------------------


def test_scores_kept_fraction_and_units_alive():
    prior = UnitGates()
    net = sparsify(mlp(4, 6, 5, 3), prior)
    point = {
        probs_key("0.gate"): torch.tensor([0.0, 0.2, 0.5, 0.51, 1.0, 0.0]),
        probs_key("2.gate"): torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0]),
    }
    assert torch.equal(prior.scores(net.layer_sites["0"], point), point[probs_key("0.gate")])
    assert prior.kept_fraction(net, point) == pytest.approx(4 / 11)
    assert prior.units_alive(net, point) == {"0": 4, "2": 2}
    assert math.isclose(prior.default_threshold, 0.5)


def test_gate_constants_are_built_once_per_prices_device_and_dtype():
    gammas = (0.1, 3.0, 30.0)
    gamma, log_z = gate_constants(gammas, torch.device("cpu"), torch.float64)
    torch.testing.assert_close(gamma, torch.tensor(gammas, dtype=torch.float64))
    torch.testing.assert_close(log_z, log_normalizer(gamma).sum())
    assert gate_constants(gammas, torch.device("cpu"), torch.float64)[0] is gamma
    assert gate_constants(gammas, torch.device("cpu"), torch.float32)[0].dtype == torch.float32


def test_gate_constants_first_built_under_inference_mode_serve_training():
    from bayesprune.priors.gates import gate_constants

    with torch.inference_mode():
        gamma, log_z = gate_constants((0.25, 0.5, 0.75), torch.device("cpu"), torch.float32)
    assert not gamma.is_inference() and not log_z.is_inference()
    theta = torch.full((3,), 0.5, requires_grad=True)
    (torch.dot(gamma, theta) + log_z).backward()  # autograd may save them
    assert torch.equal(theta.grad, gamma)
