"""MAP (Delta) guide: eager parameters, save/load, support, point and samples."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from bayesprune import sparsify
from bayesprune.guides import MAP, guide_from_config
from bayesprune.priors import HALO
from tests.helpers import perturb


def test_parameters_exist_before_any_call_and_are_keyed_by_site(net):
    guide = MAP(net)
    assert sorted(guide.state_dict()) == sorted(
        f"unconstrained.{s.name.replace('.', '/')}" for s in net.sites
    )
    assert len(list(guide.parameters())) == len(net.sites)
    # the guide does not own the network's parameters
    net_params = {id(p) for p in net.parameters()}
    assert not any(id(p) in net_params for p in guide.parameters())


def test_starts_at_the_network_weights_and_the_prior_initial_scale(net):
    point = MAP(net).point()
    assert list(point) == [s.name for s in net.sites]
    torch.testing.assert_close(point["conv.weight"], net.module.conv.weight.detach())
    torch.testing.assert_close(point["fc.weight"], net.module.fc.weight.detach())
    torch.testing.assert_close(
        point["conv.weight_scale"], torch.full(net.site("conv.weight_scale").shape, 0.3)
    )
    assert all(not v.requires_grad for v in point.values())


def test_guide_values_do_not_alias_the_network_weights(net):
    guide = MAP(net)
    perturb(guide)
    assert not torch.equal(guide.point()["fc.weight"], net.module.fc.weight)


def test_state_dict_round_trip_into_a_fresh_guide(net):
    guide = MAP(net)
    perturb(guide)
    fresh = MAP(net)
    assert not torch.equal(fresh.point()["fc.weight"], guide.point()["fc.weight"])
    fresh.load_state_dict(guide.state_dict())  # strict: same keys, no lazy parameters
    for k, v in guide.point().items():
        assert torch.equal(fresh.point()[k], v), k
    torch.manual_seed(5)
    a = guide.sample(3)
    torch.manual_seed(5)
    b = fresh.sample(3)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_scale_sites_stay_positive(net):
    guide = MAP(net)
    with torch.no_grad():
        guide.unconstrained["conv/weight_scale"].fill_(-50.0)
        guide.unconstrained["fc/weight_scale"].fill_(30.0)
    point = guide.point()
    assert torch.all(point["conv.weight_scale"] > 0)
    assert torch.all(torch.isfinite(point["fc.weight_scale"]))
    values, _ = guide.rsample()
    assert torch.all(values["conv.weight_scale"] > 0)


def test_sample_shapes_and_values(net):
    guide = MAP(net)
    draws = guide.sample(4)
    point = guide.point()
    for s in net.sites:
        assert draws[s.name].shape == (4, *s.shape)
        assert torch.equal(draws[s.name], point[s.name].expand(4, *s.shape))  # a Delta
    some = guide.sample(2, sites=["fc.weight_scale"])
    assert list(some) == ["fc.weight_scale"]
    assert some["fc.weight_scale"].shape == (2, *net.site("fc.weight_scale").shape)


def test_rsample_is_the_point_with_zero_log_q_and_carries_gradients(net):
    guide = MAP(net)
    values, log_q = guide.rsample()
    assert log_q.shape == () and float(log_q) == 0.0
    for k, v in guide.point().items():
        torch.testing.assert_close(values[k], v)
    sum(v.sum() for v in values.values()).backward()
    assert all(p.grad is not None for p in guide.parameters())


def test_pyro_guide_samples_delta_sites_in_model_order(net):
    guide = MAP(net)
    trace = pyro.poutine.trace(guide).get_trace(torch.randn(2, 1, 6, 6), None, n_data=10)
    names = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert names == [s.name for s in net.sites]
    for s in net.sites:
        fn = trace.nodes[s.name]["fn"]
        assert isinstance(fn, dist.Delta)
        assert tuple(fn.event_shape) == s.shape
        torch.testing.assert_close(trace.nodes[s.name]["value"], guide.point()[s.name])


def test_parameters_by_role_cover_every_parameter(net):
    guide = MAP(net)
    groups = guide.parameters_by_role()
    assert set(groups) == {"scale", "weight"}
    flat = [id(p) for ps in groups.values() for p in ps]
    assert sorted(flat) == sorted(id(p) for p in guide.parameters())


@pytest.mark.parametrize("bad", [None, torch.nn.Linear(2, 2)])
def test_needs_a_bayesian_net(bad):
    with pytest.raises(TypeError, match="MAP: expected a BayesianNet"):
        MAP(bad)


def test_config_round_trip():
    net = sparsify(torch.nn.Linear(2, 2), HALO())
    cfg = MAP(net).config()
    assert cfg["name"] == "map"
    again = guide_from_config(net, cfg)
    assert type(again) is MAP and again.config() == cfg
