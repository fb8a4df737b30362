"""Posterior inclusion probabilities: θ for gates, Normal probabilities under mean-field
(closed form per weight, Monte Carlo per unit -- both checked against independent draws
of the guide), 0/1 indicators under MAP."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn as nn
from torch.distributions import biject_to

from bayesprune import sparsify
from bayesprune.guides import MAP, MeanField
from bayesprune.guides.base import key
from bayesprune.priors import HALO, BlockGates, Gaussian, Prior, UnitGates
from bayesprune.pruning import collapse, inclusion_kind, inclusion_probs
from bayesprune.zoo import build
from tests.helpers import mlp


def set_normal(guide: MeanField, name: str, loc: torch.Tensor, sd: torch.Tensor) -> None:
    with torch.no_grad():
        guide.loc[key(name)].copy_(loc)
        guide.rho[key(name)].copy_(sd.expm1().log())  # inverse softplus


def set_map(guide: MAP, name: str, value: torch.Tensor) -> None:
    site = next(s for s in guide.sites if s.name == name)
    with torch.no_grad():
        guide.unconstrained[key(name)].copy_(biject_to(site.support).inv(value))


def mc_fraction(guide, name: str, delta: float, n: int, per: str) -> torch.Tensor:
    """Fraction of ``n`` independent guide draws whose |w| (or unit norm) exceeds δ."""
    w = guide.sample(n, [name])[name]
    size = w.flatten(2).norm(dim=2) if per == "unit" else w.abs()
    return (size > delta).double().mean(0)


@pytest.fixture
def normal_net():
    """Per-weight HALO under mean-field, each weight a different (μ, σ) around δ = 0.1."""
    net = sparsify(mlp(3, 4, 2), HALO(), layers=nn.Linear)
    guide = MeanField(net)
    g = torch.Generator().manual_seed(1)
    for name in ("0.weight", "2.weight"):
        shape = net.site(name).shape
        loc = 0.3 * torch.randn(shape, generator=g)
        sd = 0.02 + 0.2 * torch.rand(shape, generator=g)
        set_normal(guide, name, loc, sd)
    return net, guide


def test_per_weight_closed_form_matches_monte_carlo(normal_net):
    net, guide = normal_net
    n = 40_000
    probs = inclusion_probs(net, guide, delta=0.1)
    assert inclusion_kind(net, guide) == "normal"
    for layer, name in (("0", "0.weight"), ("2", "2.weight")):
        mc = mc_fraction(guide, name, 0.1, n, "weight")
        p = probs[layer].double()
        assert p.shape == net.site(name).shape
        assert int(((p > 0.1) & (p < 0.9)).sum()) >= 3  # real probabilities, not 0/1
        se = (p * (1 - p) / n).sqrt()
        assert bool(((p - mc).abs() <= 5 * se + 1e-3).all())


def test_per_weight_closed_form_formula(normal_net):
    net, guide = normal_net
    site = net.site("0.weight")
    mu, sd = guide.loc[key(site.name)].detach(), guide.stddev(site).detach()
    phi = torch.distributions.Normal(0.0, 1.0).cdf
    want = 1 - (phi((0.1 - mu) / sd) - phi((-0.1 - mu) / sd))
    torch.testing.assert_close(inclusion_probs(net, guide, delta=0.1)["0"], want)


def test_zero_delta_gives_probability_one_under_a_normal(normal_net):
    net, guide = normal_net
    assert all(bool((p == 1).all()) for p in inclusion_probs(net, guide, delta=0.0).values())


def test_default_delta_is_the_priors_threshold(normal_net):
    net, guide = normal_net
    got = inclusion_probs(net, guide)
    want = inclusion_probs(net, guide, delta=HALO.report_tol)
    assert HALO.report_tol == 1e-3
    for layer in got:
        torch.testing.assert_close(got[layer], want[layer])


def unit_net(fan_in: int) -> tuple[Any, MeanField]:
    net = sparsify(nn.Sequential(nn.Linear(fan_in, 5)), HALO(per="unit"), layers=nn.Linear)
    guide = MeanField(net)
    g = torch.Generator().manual_seed(2)
    shape = net.site("0.weight").shape
    set_normal(
        guide,
        "0.weight",
        0.2 * torch.randn(shape, generator=g),
        0.05 + 0.1 * torch.rand(shape, generator=g),
    )
    return net, guide


def test_per_unit_monte_carlo_matches_independent_draws():
    net, guide = unit_net(fan_in=3)
    n = 20_000
    p = inclusion_probs(net, guide, delta=0.3, num_samples=n)["0"].double()
    mc = mc_fraction(guide, "0.weight", 0.3, n, "unit")
    assert p.shape == (5,)
    assert int(((p > 0.1) & (p < 0.9)).sum()) >= 2
    se = (p * (1 - p) / n).sqrt()  # two independent estimates: sd of the difference is √2·se
    assert bool(((p - mc).abs() <= 5 * math.sqrt(2) * se + 1e-3).all())


def test_per_unit_with_one_weight_per_unit_matches_the_closed_form():
    """With fan-in 1 a unit's norm is |w|: the Monte-Carlo estimate must approach Φ terms."""
    net, guide = unit_net(fan_in=1)
    n = 40_000
    p = inclusion_probs(net, guide, delta=0.1, num_samples=n)["0"].double()
    site = net.site("0.weight")
    mu, sd = guide.loc[key(site.name)].detach()[:, 0], guide.stddev(site).detach()[:, 0]
    phi = torch.distributions.Normal(0.0, 1.0).cdf
    exact = (phi((mu - 0.1) / sd) + phi((-mu - 0.1) / sd)).double()
    se = (exact * (1 - exact) / n).sqrt()
    assert bool(((p - exact).abs() <= 5 * se + 1e-3).all())


def test_per_unit_is_reproducible_and_leaves_the_global_rng_alone():
    net, guide = unit_net(fan_in=3)
    state = torch.get_rng_state()
    a = inclusion_probs(net, guide, delta=0.3, num_samples=500, seed=7)["0"]
    assert torch.equal(torch.get_rng_state(), state)
    b = inclusion_probs(net, guide, delta=0.3, num_samples=500, seed=7)["0"]
    c = inclusion_probs(net, guide, delta=0.3, num_samples=500, seed=8)["0"]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_gates_give_theta_clamped_into_the_unit_interval():
    net = sparsify(mlp(3, 4, 2), UnitGates())
    for guide in (MAP(net), MeanField(net)):
        theta = torch.tensor([0.0, 0.25, 1.0, 1.5])
        with torch.no_grad():
            guide.gate_probs[key("0.gate")].copy_(theta)
        assert inclusion_kind(net, guide) == "gate"
        p = inclusion_probs(net, guide)
        assert list(p) == ["0"]  # the output layer is not gated
        torch.testing.assert_close(p["0"], torch.tensor([0.0, 0.25, 1.0, 1.0]))


def test_gated_layer_ignores_the_weight_prior():
    """UnitGates over HALO weights: the gate decides, so P(keep) is θ, not a weight probability."""
    net = sparsify(mlp(3, 4, 2), UnitGates(weight_prior=HALO()))
    guide = MeanField(net)
    with torch.no_grad():
        guide.gate_probs[key("0.gate")].copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    torch.testing.assert_close(inclusion_probs(net, guide)["0"], torch.tensor([0.1, 0.2, 0.3, 0.4]))


def test_block_gates_give_one_probability_per_block():
    net = sparsify(build("resnet20", width=0.25, input_size=8), BlockGates())
    guide = MAP(net)
    with torch.no_grad():
        guide.gate_probs[key("layer1.1.gate")].fill_(0.125)
    p = inclusion_probs(net, guide)
    assert set(p) == set(net.layer_names)
    assert all(v.shape == (1,) for v in p.values())
    assert float(p["layer1.1"]) == 0.125 and float(p["layer1.0"]) == pytest.approx(
        BlockGates().init_prob
    )


@pytest.mark.parametrize("per", ["weight", "unit"])
def test_map_gives_the_indicator_at_the_point(per):
    net = sparsify(mlp(3, 4, 2), HALO(per=per), layers=nn.Linear)
    guide = MAP(net)
    value = torch.tensor([[0.5, 0.0, 0.0], [0.05, 0.05, 0.0], [0.0, 0.0, 0.0], [-2.0, 1.0, 0.0]])
    set_map(guide, "0.weight", value)
    assert inclusion_kind(net, guide) == "map-indicator"
    p = inclusion_probs(net, guide, delta=0.06)["0"]
    if per == "unit":  # row norms 0.5, 0.0707, 0, 2.24
        assert p.tolist() == [1.0, 1.0, 0.0, 1.0]
    else:
        assert torch.equal(p, (value.abs() > 0.06).float())


def test_map_indicator_with_the_default_delta_is_what_threshold_collapse_keeps():
    net = sparsify(mlp(3, 4, 2), HALO(), layers=nn.Linear)
    guide = MAP(net)
    set_map(guide, "0.weight", torch.tensor([[1e-4, 2e-3, -5e-4], [1.0, -1e-3, 0.0]] * 2))
    p = inclusion_probs(net, guide)
    keep = collapse(net, guide)
    for layer, ks in keep.items():
        assert torch.equal(p[layer].bool(), ks.weight_mask)


def test_gaussian_prior_is_per_weight():
    net = sparsify(mlp(3, 4, 2), Gaussian(), layers=nn.Linear)
    guide = MeanField(net, init_scale=0.5)
    p = inclusion_probs(net, guide, delta=0.2)
    assert p["0"].shape == (4, 3) and p["2"].shape == (2, 4)
    assert bool(((p["0"] > 0) & (p["0"] < 1)).all())
    assert Gaussian.default_threshold == 0.0  # the default δ: every Normal weight has P = 1
    assert all(bool((v == 1).all()) for v in inclusion_probs(net, guide).values())


class HalfMAP(MeanField):
    """A guide that is a Delta for the first layer's weights: inclusion kinds differ."""

    def _distribution(self, site):
        import pyro.distributions as dist

        if site.name == "0.weight":
            return dist.Delta(self.loc[key(site.name)], event_dim=site.event_dim)
        return super()._distribution(site)


def test_kind_is_mixed_when_layers_differ():
    net = sparsify(mlp(3, 4, 2), HALO(), layers=nn.Linear)
    guide = HalfMAP(net)
    assert inclusion_kind(net, guide) == "mixed"
    p = inclusion_probs(net, guide)
    assert set(p["0"].unique().tolist()) <= {0.0, 1.0}


class Unknown(Prior):
    """A prior without an inclusion probability (delegates everything to Gaussian)."""

    name = "unknown"

    def __init__(self) -> None:
        self.inner = Gaussian()

    def layer_sites(self, name, layer):
        return self.inner.layer_sites(name, layer)

    def initial_value(self, site, layer):
        return self.inner.initial_value(site, layer)

    def distribution(self, site, values, ctx):
        return self.inner.distribution(site, values, ctx)

    def scores(self, sites, point, **options):
        return self.inner.scores(sites, point)

    def config(self):
        return {"name": self.name}


def test_unknown_prior_is_refused_naming_it_and_the_layer():
    net = sparsify(mlp(3, 4, 2), Unknown(), layers=nn.Linear)
    with pytest.raises(TypeError, match="layer '0'.*Unknown"):
        inclusion_probs(net, MeanField(net))
    with pytest.raises(TypeError, match="Unknown"):
        inclusion_kind(net, MeanField(net))


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"delta": -0.1}, "delta"),
        ({"delta": float("nan")}, "delta"),
        ({"delta": float("inf")}, "delta"),
        ({"delta": True}, "delta"),
        ({"delta": "0.1"}, "delta"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"seed": "a"}, "seed"),
    ],
)
def test_invalid_arguments(normal_net, kwargs, culprit):
    net, guide = normal_net
    with pytest.raises(ValueError, match=culprit):
        inclusion_probs(net, guide, **kwargs)


def test_wrong_types():
    net = sparsify(mlp(3, 4, 2), HALO(), layers=nn.Linear)
    with pytest.raises(TypeError, match="BayesianNet"):
        inclusion_probs(mlp(3, 4, 2), MAP(net))
    with pytest.raises(TypeError, match="Guide"):
        inclusion_kind(net, object())
