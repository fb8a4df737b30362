"""JackpotGuide: straight-through score gradient, Pyro's Trace_ELBO, state, initialisation."""

import pyro
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bayesprune as bp
from bayesprune.guides import JackpotGuide, guide_from_config
from bayesprune.inference import FusedELBO
from bayesprune.priors import HALO, Jackpot
from bayesprune.priors.jackpot_mask import mask_key
from tests.helpers import assert_fused_equals_trace


def tiny_net(**kwargs):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    return bp.sparsify(module, Jackpot(sparsity=0.5, **kwargs))


def test_score_gradient_is_the_masked_weight_gradient_times_w0():
    net = tiny_net()
    guide = JackpotGuide(net)
    x, y, n = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1]), 50
    loss = FusedELBO()(net, guide, x, y, n)
    loss.backward()
    # by hand: the same network on w = w0 * mask, d(-log lik)/dw, times w0
    m = net.module
    w1 = (m[0].weight * guide.mask(net.sites[0])).requires_grad_()
    w2 = (m[2].weight * guide.mask(net.sites[1])).requires_grad_()
    h = torch.tanh(x @ w1.T + m[0].bias)
    nll = F.cross_entropy(h @ w2.T + m[2].bias, y, reduction="sum") * (n / 5)
    g1, g2 = torch.autograd.grad(nll, (w1, w2))
    torch.testing.assert_close(guide.scores["0/weight"].grad, g1 * m[0].weight)
    torch.testing.assert_close(guide.scores["2/weight"].grad, g2 * m[2].weight)
    assert guide.scores["0/weight"].grad[~guide.mask(net.sites[0])].abs().sum() > 0
    assert all(p.grad is None for p in m.parameters())


def test_fused_loss_equals_pyro_trace_elbo_for_the_same_mask():
    net = tiny_net()
    guide = JackpotGuide(net)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    params = list(guide.scores.values())
    assert_fused_equals_trace(net, guide, x, y, 60, params, seed=0, tol=1e-6)


def test_pyro_svi_trains_the_scores_only():
    net = tiny_net()
    guide = JackpotGuide(net)
    before = {k: v.clone() for k, v in net.module.state_dict().items()}
    scores = guide.scores["0/weight"].detach().clone()
    pyro.clear_param_store()
    svi = pyro.infer.SVI(net.model, guide, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO())
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 1, 0, 1, 0])
    loss = svi.step(x, y, n_data=6)
    assert loss == loss and not torch.equal(scores, guide.scores["0/weight"])
    for k, v in net.module.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_value_is_exactly_w0_times_mask_and_point_carries_the_mask():
    net = tiny_net()
    guide = JackpotGuide(net)
    values, log_q = guide.rsample()
    point = guide.point()
    for s in net.sites:
        w0 = net.prior.frozen_weight(s.layer)
        m = guide.mask(s)
        assert torch.equal(values[s.name].detach(), w0 * m) and torch.equal(point[s.name], w0 * m)
        assert torch.equal(point[mask_key(s.name)], m.float())
        assert int(m.sum()) == s.meta["keep"]
    assert log_q.item() == 0.0


def test_initialisation_magnitude_and_random():
    net = tiny_net()
    w0 = net.prior.frozen_weight("0")
    mag = JackpotGuide(net).scores["0/weight"]
    assert torch.equal(mag, w0.abs())
    rnd_net = tiny_net(init="random")
    torch.manual_seed(1)
    rnd = JackpotGuide(rnd_net).scores["0/weight"]
    w0r = rnd_net.prior.frozen_weight("0")
    assert torch.equal(rnd.flatten().sort().values, w0r.abs().flatten().sort().values)
    assert not torch.equal(rnd, w0r.abs())


def test_state_dict_roles_and_registry():
    net = tiny_net()
    guide = guide_from_config(net, "jackpot")
    with torch.no_grad():
        guide.masks._buffers["0/weight"].copy_(~guide.mask(net.sites[0]))
        guide.scores["0/weight"].add_(1.0)
    fresh = JackpotGuide(net)
    fresh.load_state_dict(guide.state_dict())
    assert torch.equal(fresh.mask(net.sites[0]), guide.mask(net.sites[0]))
    assert list(guide.parameters_by_role()) == ["score"]
    assert guide.config() == {"name": "jackpot"}
    with pytest.raises(TypeError, match="Jackpot"):
        JackpotGuide(bp.sparsify(nn.Linear(3, 2), HALO()))
