"""``evaluate``: metrics at the posterior point, in eval mode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bayesprune import sparsify
from bayesprune.data import Split
from bayesprune.guides import MAP, MeanField
from bayesprune.inference import evaluate
from bayesprune.nn import Gaussian
from bayesprune.priors import HALO


def test_classification_metrics_at_the_point_in_eval_mode(nets):
    module = nets["conv"]()
    with torch.no_grad():
        module.bn.running_mean.uniform_(-1, 1)
        module.bn.running_var.uniform_(0.5, 2.0)
    net = sparsify(module, HALO())
    guide = MeanField(net, init_scale=0.5)
    with torch.no_grad():
        guide.loc["fc/weight"].add_(torch.randn_like(guide.loc["fc/weight"]))
    split = Split(torch.randn(20, 1, 6, 6), torch.randint(0, 4, (20,)))
    module.train()
    metrics = evaluate(net, guide, split, batch_size=7)
    assert module.training  # restored
    assert sorted(metrics) == ["accuracy", "nll"]
    assert all(type(v) is float for v in metrics.values())

    module.eval()
    out = net.run(guide.point(), split.x).detach()  # the point, not a draw; running BN stats
    assert metrics["accuracy"] == pytest.approx(float((out.argmax(1) == split.y).float().mean()))
    assert metrics["nll"] == pytest.approx(float(F.cross_entropy(out, split.y)), rel=1e-5)


def test_perfect_and_wrong_predictions():
    net = sparsify(torch.nn.Linear(2, 2, bias=False), HALO())
    guide = MAP(net)
    with torch.no_grad():
        guide.unconstrained["weight"].copy_(10 * torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.5]])
    assert evaluate(net, guide, Split(x, torch.tensor([0, 1, 0])))["accuracy"] == 1.0
    assert evaluate(net, guide, Split(x, torch.tensor([1, 0, 1])))["accuracy"] == 0.0


def test_regression_metrics():
    net = sparsify(torch.nn.Linear(3, 1), HALO(), likelihood=Gaussian(0.5))
    guide = MAP(net)
    x, y = torch.randn(16, 3), torch.randn(16)
    metrics = evaluate(net, guide, Split(x, y))
    assert sorted(metrics) == ["nll", "rmse"]
    pred = net.module(x).detach().squeeze(1)
    assert metrics["rmse"] == pytest.approx(float((pred - y).square().mean().sqrt()), rel=1e-6)
    nll = 0.5 * (pred - y).square().mean() / 0.25 + math.log(0.5) + 0.5 * math.log(2 * math.pi)
    assert metrics["nll"] == pytest.approx(float(nll), rel=1e-5)


def test_batch_size_does_not_change_the_result(nets):
    net = sparsify(nets["mlp"](), HALO())
    guide = MAP(net)
    split = Split(torch.randn(33, 8), torch.randint(0, 3, (33,)))
    a = evaluate(net, guide, split, batch_size=4)
    b = evaluate(net, guide, split)
    assert a["accuracy"] == b["accuracy"]
    assert a["nll"] == pytest.approx(b["nll"], rel=1e-6)
