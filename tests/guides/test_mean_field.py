"""MeanField guide, and building guides from configs."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from bayesprune import sparsify
from bayesprune.guides import MAP, MeanField, default_guide, guide_from_config
from bayesprune.priors import HALO
from tests.helpers import perturb


@pytest.mark.parametrize(("scales", "scale_kind"), [("delta", "delta"), ("lognormal", "lognormal")])
def test_site_families(net, scales, scale_kind):
    guide = MeanField(net, scales=scales)
    kinds = {s.name: guide.kind(s) for s in net.sites}
    assert kinds == {
        "conv.weight_scale": scale_kind,
        "conv.weight": "normal",
        "fc.weight_scale": scale_kind,
        "fc.weight": "normal",
    }
    n_params = sum(2 if k != "delta" else 1 for k in kinds.values())
    assert len(list(guide.parameters())) == n_params
    assert len(guide.state_dict()) == n_params


@pytest.mark.parametrize("scales", ["delta", "lognormal"])
def test_initial_state(net, scales):
    guide = MeanField(net, init_scale=0.02, scales=scales)
    point = guide.point()
    torch.testing.assert_close(point["fc.weight"], net.module.fc.weight.detach())
    torch.testing.assert_close(
        point["fc.weight_scale"], torch.full_like(point["fc.weight_scale"], 0.3)
    )
    for s in net.sites:
        if guide.kind(s) != "delta":
            torch.testing.assert_close(guide.stddev(s).detach(), torch.full(s.shape, 0.02))
    assert all(not v.requires_grad for v in point.values())


@pytest.mark.parametrize("scales", ["delta", "lognormal"])
def test_state_dict_round_trip_into_a_fresh_guide(net, scales):
    guide = MeanField(net, init_scale=0.05, scales=scales)
    perturb(guide, 0.1)
    fresh = MeanField(net, init_scale=0.05, scales=scales)
    fresh.load_state_dict(guide.state_dict())  # strict: every parameter exists from __init__
    for k, v in guide.point().items():
        assert torch.equal(fresh.point()[k], v), k
    for draw in (lambda g: g.sample(3), lambda g: g.rsample()[0]):
        torch.manual_seed(11)
        a = draw(guide)
        torch.manual_seed(11)
        b = draw(fresh)
        assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(11)
    a_lq = guide.rsample()[1]
    torch.manual_seed(11)
    assert torch.equal(fresh.rsample()[1], a_lq)


@pytest.mark.parametrize("scales", ["delta", "lognormal"])
def test_scale_sites_are_positive(net, scales):
    guide = MeanField(net, init_scale=1.0, scales=scales)
    with torch.no_grad():
        for k in ("conv/weight_scale", "fc/weight_scale"):
            (guide.loc if scales == "lognormal" else guide.unconstrained)[k].fill_(-20.0)
    draws = guide.sample(50)
    values, _ = guide.rsample()
    for name in ("conv.weight_scale", "fc.weight_scale"):
        assert torch.all(draws[name] > 0)
        assert torch.all(values[name] > 0)
        assert torch.all(guide.point()[name] > 0)


@pytest.mark.parametrize("scales", ["delta", "lognormal"])
def test_sample_shapes_and_spread(net, scales):
    guide = MeanField(net, init_scale=0.1, scales=scales)
    draws = guide.sample(2000)
    for s in net.sites:
        assert draws[s.name].shape == (2000, *s.shape)
    w = draws["fc.weight"]
    torch.testing.assert_close(w.mean(0), guide.point()["fc.weight"], atol=0.02, rtol=0)
    torch.testing.assert_close(w.std(0).mean(), torch.tensor(0.1), atol=0.005, rtol=0)
    lam = draws["fc.weight_scale"]
    if scales == "lognormal":  # the point is the median: exp(loc)
        torch.testing.assert_close(
            lam.log().median(0).values, guide.point()["fc.weight_scale"].log(), atol=0.02, rtol=0
        )
        torch.testing.assert_close(lam.log().std(0).mean(), torch.tensor(0.1), atol=0.005, rtol=0)
    else:
        assert torch.all(lam == guide.point()["fc.weight_scale"])
    assert list(guide.sample(1, sites=["conv.weight"])) == ["conv.weight"]


@pytest.mark.parametrize("scales", ["delta", "lognormal"])
def test_rsample_log_q_equals_the_distributions_and_the_pyro_guide(net, scales):
    guide = MeanField(net, init_scale=0.2, scales=scales)
    perturb(guide, 0.1)
    torch.manual_seed(3)
    values, log_q = guide.rsample()
    expected = sum(
        guide.site_distribution(s).log_prob(values[s.name])
        for s in net.sites
        if guide.kind(s) != "delta"
    )
    torch.testing.assert_close(log_q, expected, rtol=1e-6, atol=1e-3)
    # the Pyro guide draws the same values from the same random numbers
    torch.manual_seed(3)
    trace = pyro.poutine.trace(guide).get_trace()
    for s in net.sites:
        torch.testing.assert_close(
            trace.nodes[s.name]["value"], values[s.name], rtol=1e-6, atol=1e-6
        )
    trace.compute_log_prob()
    torch.testing.assert_close(
        sum(trace.nodes[s.name]["log_prob_sum"] for s in net.sites), log_q, rtol=1e-6, atol=1e-3
    )


def test_lognormal_log_q_includes_the_jacobian(nets):
    net = sparsify(nets["mlp"]().double(), HALO(), layers="2")
    guide = MeanField(net, init_scale=0.3, scales="lognormal")
    values, log_q = guide.rsample()
    lam = values["2.weight_scale"]
    loc, sd = guide.loc["2/weight_scale"], guide.stddev(net.site("2.weight_scale"))
    by_hand = (dist.Normal(loc, sd).log_prob(lam.log()) - lam.log()).sum() + dist.Normal(
        guide.loc["2/weight"], guide.stddev(net.site("2.weight"))
    ).log_prob(values["2.weight"]).sum()
    torch.testing.assert_close(log_q, by_hand)


def test_pyro_guide_site_families(net):
    guide = MeanField(net, scales="lognormal")
    trace = pyro.poutine.trace(guide).get_trace()
    for s in net.sites:
        fn = trace.nodes[s.name]["fn"]
        assert tuple(fn.event_shape) == s.shape
        assert isinstance(fn.base_dist, dist.LogNormal if s.role == "scale" else dist.Normal)


@pytest.mark.parametrize("bad", [0, 0.0, -1e-3, math.inf, math.nan])
def test_init_scale_validation(net, bad):
    with pytest.raises(ValueError, match="init_scale must be > 0"):
        MeanField(net, init_scale=bad)


def test_scales_validation(net):
    with pytest.raises(ValueError, match="scales must be 'delta' or 'lognormal', got 'gamma'"):
        MeanField(net, scales="gamma")


def test_needs_a_bayesian_net():
    with pytest.raises(TypeError, match="MeanField: expected a BayesianNet"):
        MeanField(torch.nn.Linear(2, 2))


# --- guide_from_config / default_guide ------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "kind", "attrs"),
    [
        ("map", MAP, {}),
        ({"name": "map"}, MAP, {}),
        ("mean_field", MeanField, {"scales": "delta"}),
        ("mean-field", MeanField, {}),
        ("meanfield", MeanField, {}),
        (
            {"name": "mean_field", "init_scale": 0.01, "scales": "lognormal"},
            MeanField,
            {"init_scale": 0.01, "scales": "lognormal"},
        ),
    ],
)
def test_guide_from_config(net, config, kind, attrs):
    guide = guide_from_config(net, config)
    assert type(guide) is kind
    for k, v in attrs.items():
        assert getattr(guide, k) == v
    again = guide_from_config(net, guide.config())
    assert again.config() == guide.config()


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ("laplace", "guide: unknown name 'laplace'; known guides: .*map.*mean_field"),
        ({"init_scale": 0.1}, "guide: unknown name ''"),
        ({"name": "mean_field", "init_sd": 0.1}, r"guide 'mean_field': bad options \['init_sd'\]"),
        ({"name": "map", "init_scale": 0.1}, r"guide 'map': bad options \['init_scale'\]"),
        ({"name": "mean_field", "init_scale": -1}, "init_scale must be > 0"),
    ],
)
def test_guide_from_config_errors(net, config, match):
    with pytest.raises(ValueError, match=match):
        guide_from_config(net, config)


def test_config_dict_is_not_consumed(net):
    cfg = {"name": "mean_field", "init_scale": 0.01}
    guide_from_config(net, cfg)
    assert cfg == {"name": "mean_field", "init_scale": 0.01}


def test_default_guide_follows_the_prior(net, monkeypatch):
    assert type(default_guide(net)) is MAP
    monkeypatch.setattr(net.prior, "default_guide", "mean_field")
    assert type(default_guide(net)) is MeanField
    monkeypatch.setattr(net.prior, "default_guide", "gates")
    with pytest.raises(ValueError, match="guide: unknown name 'gates'"):
        default_guide(net)
