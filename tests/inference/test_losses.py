"""FusedELBO computes exactly Pyro's Trace_ELBO: same loss, same gradients, same draws."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn

from bayesprune import sparsify
from bayesprune.guides import MAP, MeanField
from bayesprune.inference import FusedELBO, TraceELBO
from bayesprune.inference.losses import CompiledELBO, loss_from_name
from bayesprune.nn import Gaussian
from bayesprune.priors import HALO

GUIDES = {
    "map": lambda net: MAP(net),
    "mf-delta": lambda net: MeanField(net, init_scale=0.1),
    "mf-lognormal": lambda net: MeanField(net, init_scale=0.1, scales="lognormal"),
}
# (guide, per, net kind, dtype, tolerance)
CASES = [
    (g, per, kind, torch.float64, 1e-10)
    for g, per, kind in itertools.product(GUIDES, ["weight", "unit"], ["mlp", "conv"])
] + [
    ("map", "weight", "conv", torch.float32, 1e-5),
    ("mf-lognormal", "unit", "mlp", torch.float32, 1e-5),
]


def loss_and_grads(estimator, net, guide, x, y, n_data, seed):
    params = list(guide.parameters()) + [p for _, p in net.deterministic_parameters()]
    torch.manual_seed(seed)
    loss = estimator(net, guide, x, y, n_data)
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), grads, params


@pytest.mark.parametrize(
    ("guide_name", "per", "kind", "dtype", "tol"),
    CASES,
    ids=[f"{g}-{p}-{k}-{str(d)[6:]}" for g, p, k, d, _ in CASES],
)
def test_fused_equals_trace_elbo(nets, inputs, guide_name, per, kind, dtype, tol):
    module = nets[kind]().to(dtype)
    net = sparsify(module, HALO(xi=1e-2, psi=2e-2, per=per))
    guide = GUIDES[guide_name](net)
    with torch.no_grad():  # move away from the initial values, where many terms are special
        for p in guide.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = inputs(kind, 6).to(dtype)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for seed, n_data in [(1, 6), (2, 600)]:
        fused, g_fused, params = loss_and_grads(FusedELBO(), net, guide, x, y, n_data, seed)
        trace, g_trace, _ = loss_and_grads(TraceELBO(), net, guide, x, y, n_data, seed)
        torch.testing.assert_close(fused, trace, rtol=tol, atol=tol)
        assert len(params) == len(g_fused)
        for p, a, b in zip(params, g_fused, g_trace, strict=True):
            assert a.shape == p.shape
            scale = max(1.0, float(b.abs().max()))
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)
        # every guide and deterministic parameter is trained
        assert all(float(g.abs().sum()) > 0 for g in g_fused)


@pytest.mark.parametrize("guide_name", ["mf-delta", "mf-lognormal"])
def test_same_seed_same_draw_different_seed_different_draw(nets, guide_name):
    net = sparsify(nets["mlp"]().double(), HALO())
    guide = GUIDES[guide_name](net)
    x, y = torch.randn(4, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    a, *_ = loss_and_grads(FusedELBO(), net, guide, x, y, 100, seed=1)
    b, *_ = loss_and_grads(FusedELBO(), net, guide, x, y, 100, seed=1)
    c, *_ = loss_and_grads(FusedELBO(), net, guide, x, y, 100, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_regression_likelihood(nets):
    net = sparsify(torch.nn.Linear(3, 1).double(), HALO(per="unit"), likelihood=Gaussian(0.3))
    guide = MeanField(net, init_scale=0.1, scales="lognormal")
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    fused, g_fused, _ = loss_and_grads(FusedELBO(), net, guide, x, y, 50, seed=4)
    trace, g_trace, _ = loss_and_grads(TraceELBO(), net, guide, x, y, 50, seed=4)
    torch.testing.assert_close(fused, trace, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_fused, g_trace, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_map_loss_is_minus_log_prior_minus_scaled_log_likelihood(nets):
    net = sparsify(nets["mlp"]().double(), HALO())
    guide = MAP(net)
    x, y = torch.randn(4, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    values = guide.point()
    log_prior = net.log_prior(values, net.context(40))
    log_lik = net.likelihood.log_prob(net.run(values, x), y)
    loss = FusedELBO()(net, guide, x, y, 40)
    torch.testing.assert_close(loss, -log_prior - 10 * log_lik)


def test_loss_from_name():
    assert isinstance(loss_from_name("fused"), FusedELBO)
    assert isinstance(loss_from_name("trace"), TraceELBO)
    assert isinstance(loss_from_name("compiled"), CompiledELBO)
    with pytest.raises(ValueError, match="unknown estimator 'jit'"):
        loss_from_name("jit")


def test_fused_loss_refuses_n_data_smaller_than_the_batch():
    net = sparsify(nn.Sequential(nn.Linear(3, 2)), HALO(), layers=nn.Linear)
    with pytest.raises(ValueError, match="smaller than the mini-batch"):
        FusedELBO()(net, MAP(net), torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), n_data=2)


@pytest.mark.parametrize("guide_name", ["map", "mf-delta"])
def test_compiled_equals_fused_on_the_same_draws(nets, guide_name):
    net = sparsify(nets["mlp"]().double(), HALO(xi=1e-2, psi=2e-2))
    guide = GUIDES[guide_name](net)
    x, y = torch.randn(6, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    compiled = CompiledELBO()
    for seed in (1, 2):  # the second call runs the compiled code without compiling
        fused, g_fused, _ = loss_and_grads(FusedELBO(), net, guide, x, y, 600, seed)
        got, g_got, _ = loss_and_grads(compiled, net, guide, x, y, 600, seed)
        torch.testing.assert_close(got, fused, rtol=1e-10, atol=1e-10)
        for a, b in zip(g_got, g_fused, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
