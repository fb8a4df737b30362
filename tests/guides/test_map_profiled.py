"""MAP with profiled scales: λ is the closed-form mode of p(λ | θ), not a trained tensor."""

from __future__ import annotations

import pyro
import pytest
import torch
import torch.nn as nn

from bayesprune import fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.errors import ConfigError
from bayesprune.guides import MAP, guide_from_config
from bayesprune.inference.losses import loss_from_name
from bayesprune.priors import HALO, UnitGates
from bayesprune.sites import Context
from tests.conftest import mlp


def _profiled(per: str = "weight", strength: float = 1e-2):
    torch.manual_seed(0)
    net = sparsify(mlp(4, 6, 3).double(), HALO(strength, 2 * strength, per=per))
    return net, MAP(net, positive="profiled", min_positive=1e-6)


def _batch(n: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(3, (n,), generator=g)


@pytest.mark.parametrize("per", ["weight", "unit"])
def test_the_profiled_scale_maximises_the_joint_density_given_the_weights(per):
    net, guide = _profiled(per)
    values = {k: v.detach() for k, v in guide.rsample()[0].items()}
    ctx = Context(n_data=100, device=torch.device("cpu"), dtype=torch.float64)
    for scale in (s for s in guide.sites if s.role == "scale"):
        lam = values[scale.name].clone().requires_grad_(True)
        theta = values[scale.layer + ".weight"]
        sites = net.layer_sites[scale.layer]
        log_p = net.prior.log_prob(sites, {scale.name: lam, sites[1].name: theta}, ctx)
        (grad,) = torch.autograd.grad(log_p, lam)
        assert float(grad.abs().max()) < 1e-8  # a stationary point ...
        for factor in (0.9, 1.1):  # ... and a maximum
            moved = {scale.name: lam.detach() * factor, sites[1].name: theta}
            assert float(net.prior.log_prob(sites, moved, ctx)) < float(log_p.detach())


@pytest.mark.parametrize("per", ["weight", "unit"])
def test_pyro_trace_elbo_equals_the_fused_loss_and_the_detached_gradient_is_exact(per):
    """Trace_ELBO through ``net.model`` and the Pyro guide gives the fused loss's value; the
    gradient w.r.t. θ with λ* detached equals the one through λ*(θ) (envelope theorem)."""
    net, guide = _profiled(per)
    x, y = _batch()
    theta = [p for p in guide.parameters()]
    fused = loss_from_name("fused")(net, guide, x, y, 100)
    trace = pyro.infer.Trace_ELBO().differentiable_loss(net.model, guide, x, y, n_data=100)
    assert float(trace.detach()) == pytest.approx(float(fused.detach()), rel=1e-12)
    detached = torch.autograd.grad(trace, theta)

    # the same objective with λ*(θ) left in the graph
    scales = [s for s in guide.sites if s.role == "scale"]
    original = guide.value

    def through(site):
        if site.role != "scale":
            return original(site)
        weight = guide.unconstrained[site.layer.replace(".", "/") + "/weight"]
        mode = net.prior.conditional_mode(site, {site.layer + ".weight": weight})
        return mode.clamp_min(guide.min_positive)

    guide.value = through
    try:
        attached = torch.autograd.grad(loss_from_name("fused")(net, guide, x, y, 100), theta)
    finally:
        del guide.value
    assert scales
    for a, b in zip(detached, attached, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_only_the_weights_are_trained_and_pyro_svi_trains_them():
    net, guide = _profiled()
    assert sorted(guide.state_dict()) == ["unconstrained.0/weight", "unconstrained.2/weight"]
    pyro.clear_param_store()
    svi = pyro.infer.SVI(net.model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    x, y = _batch(64)
    before = guide.state_dict()["unconstrained.0/weight"].clone()
    losses = [svi.step(x, y, n_data=64) for _ in range(30)]
    assert losses[-1] < losses[0]
    assert not torch.equal(before, guide.state_dict()["unconstrained.0/weight"])


def test_scales_sit_at_the_floor_where_the_weights_are_zero():
    net, guide = _profiled()
    with torch.no_grad():
        guide.unconstrained["0/weight"].zero_()
    scale = guide.point()["0.weight_scale"]
    assert torch.equal(scale, torch.full_like(scale, 1e-6))


def test_fit_and_the_config_round_trip():
    data = synthetic_classification(n_train=256, n_val=64, input_shape=(16,), n_classes=3)
    net = sparsify(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), HALO(1e-4, 1e-4))
    guide = guide_from_config(net, {"name": "map", "positive": "profiled"})
    r = fit(net, data, guide, epochs=3, batch_size=32, lr=1e-2, progress=False)
    assert r.final["val_accuracy"] > 0.6
    assert guide.config()["positive"] == "profiled"


def test_a_prior_without_a_closed_form_mode_is_refused():
    # UnitGates has no positive site: profiling is a no-op there, not an error
    gated = sparsify(mlp(4, 6, 3), UnitGates(), layers=["0"])
    MAP(gated, positive="profiled")
    net = sparsify(mlp(4, 6, 3), HALO())
    net.prior.profiled_roles = ()  # an instance without the closed form
    with pytest.raises(ConfigError, match="no closed-form conditional mode"):
        MAP(net, positive="profiled")
