"""Gaussian weight prior: the fused log density is the sum of its Pyro distributions'
(value and gradient), configs round-trip, bad scales are refused."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

from bayesprune import sparsify
from bayesprune.priors import Gaussian, Prior, from_config
from bayesprune.sites import Context


@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_fused_log_prob_is_the_distributions_sum(scale, kind):
    module = nn.Linear(5, 3) if kind == "linear" else nn.Conv2d(2, 3, 3)
    prior = Gaussian(scale)
    sites = prior.layer_sites("layer", module)
    assert [s.name for s in sites] == ["layer.weight"]
    assert sites[0].shape == tuple(module.weight.shape)
    ctx = Context(n_data=50, dtype=torch.float64)
    w = torch.randn(sites[0].shape, dtype=torch.float64, requires_grad=True)
    values = {"layer.weight": w}
    fused = prior.log_prob(sites, values, ctx)
    reference = Prior.log_prob(prior, sites, values, ctx)  # Σ distribution(site).log_prob
    by_hand = torch.distributions.Normal(0.0, torch.tensor(scale, dtype=torch.float64))
    by_hand = by_hand.log_prob(w).sum()
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused, by_hand, rtol=1e-12, atol=1e-12)
    (g_fused,) = torch.autograd.grad(fused, w)
    (g_ref,) = torch.autograd.grad(reference, w)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_fused, -w.detach() / scale**2)


def test_distribution_shape_and_independence_of_the_data_size():
    prior = Gaussian(2.0)
    (site,) = prior.layer_sites("fc", nn.Linear(4, 3))
    for n in (1, 1000):
        d = prior.distribution(site, {}, Context(n_data=n))
        assert d.event_shape == (3, 4) and d.batch_shape == ()
        assert float(d.log_prob(torch.zeros(3, 4))) == pytest.approx(
            -12 * (math.log(2.0) + 0.5 * math.log(2 * math.pi)), rel=1e-6
        )


def test_initial_value_and_scores_are_the_weights():
    layer = nn.Linear(4, 3)
    prior = Gaussian()
    (site,) = prior.layer_sites("fc", layer)
    init = prior.initial_value(site, layer)
    assert torch.equal(init, layer.weight.detach()) and init.data_ptr() != layer.weight.data_ptr()
    w = torch.randn(3, 4)
    assert torch.equal(prior.scores([site], {"fc.weight": w}), w.abs())


def test_on_a_network():
    net = sparsify(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), Gaussian(0.5))
    assert [s.name for s in net.sites] == ["0.weight", "2.weight"]
    assert all(s.replaces == s.name for s in net.sites)


def test_config_round_trip():
    prior = Gaussian(0.25)
    cfg = prior.config()
    assert cfg == {"name": "gaussian", "scale": 0.25}
    json.dumps(cfg)
    again = from_config(cfg)
    assert isinstance(again, Gaussian) and again.config() == cfg
    assert repr(again) == "Gaussian(scale=0.25)"
    with pytest.raises(ValueError, match="bad hyper-parameters"):
        from_config({"name": "gaussian", "sigma": 1.0})


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf"), True, "1"])
def test_bad_scale_is_refused(scale):
    with pytest.raises(ValueError, match="scale"):
        Gaussian(scale)


def test_unsupported_layer_is_named():
    with pytest.raises(TypeError, match="'norm'.*BatchNorm1d"):
        Gaussian().layer_sites("norm", nn.BatchNorm1d(3))
