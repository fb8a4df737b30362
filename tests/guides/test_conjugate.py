"""TyXe's best test, for our MeanField guide: a conjugate case with a closed-form posterior.

Bayesian linear regression ``y = X w + ε``, ``ε ~ N(0, σ²)`` with σ known, prior
``w ~ N(0, s² I)`` (the Gaussian weight prior) and an orthogonal design (``XᵀX = c I``): the
posterior is ``N(μ, v I)`` with ``v = 1 / (c/σ² + 1/s²)`` and ``μ = v Xᵀy / σ²`` -- a
product of independent Normals, which the mean-field family holds exactly. At that
posterior both ELBO estimators return the log evidence for every draw, and ``fit`` finds it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.distributions import MultivariateNormal

import bayesprune as bp
from bayesprune.guides import MeanField
from bayesprune.inference import FusedELBO, TraceELBO
from bayesprune.priors import Gaussian

N, D, C, SIGMA, S = 32, 4, 4.0, 0.5, 1.0
# posterior sd is 1/√17 ≈ 0.243: the fit must land within 8% (mean) and 5% (sd) of it
MEAN_TOL = {"atol": 0.02, "rtol": 0.0}
SD_TOL = {"atol": 0.012, "rtol": 0.0}


def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=g))
    x = q[:, :D] * C**0.5  # XᵀX = C·I
    y = x @ torch.tensor([1.0, -0.5, 0.25, 0.0]) + SIGMA * torch.randn(N, generator=g)
    var = 1.0 / (C / SIGMA**2 + 1.0 / S**2)
    mean = var * (x.T @ y) / SIGMA**2
    return x, y, mean, torch.full((D,), var**0.5)


def _net() -> bp.BayesianNet:
    return bp.sparsify(
        nn.Linear(D, 1, bias=False), Gaussian(S), likelihood={"name": "gaussian", "scale": SIGMA}
    )


def test_design_is_orthogonal():
    x, *_ = _problem()
    torch.testing.assert_close(x.T @ x, C * torch.eye(D), atol=1e-5, rtol=0)


def _exact_guide(net: bp.BayesianNet, mean: torch.Tensor, sd: torch.Tensor) -> MeanField:
    guide = MeanField(net)
    with torch.no_grad():
        guide.loc["weight"].copy_(mean.reshape(1, D))
        guide.rho["weight"].copy_(torch.log(torch.expm1(sd)).reshape(1, D))  # softplus⁻¹
    return guide


@pytest.mark.parametrize("loss", [FusedELBO(), TraceELBO()])
def test_elbo_at_the_exact_posterior_is_the_log_evidence_for_every_draw(loss):
    """With q equal to the posterior, ``log p(y, w) − log q(w) = log p(y)`` whatever w is
    drawn: both estimators must return exactly ``−log p(y)``, the Gaussian evidence
    ``y ~ N(0, σ²I + s²XXᵀ)``."""
    x, y, mean, sd = _problem()
    net = _net()
    guide = _exact_guide(net, mean, sd)
    evidence = MultivariateNormal(torch.zeros(N), SIGMA**2 * torch.eye(N) + S**2 * x @ x.T)
    expected = -float(evidence.log_prob(y))
    for _ in range(5):
        assert float(loss(net, guide, x, y, N).detach()) == pytest.approx(
            expected, rel=1e-5, abs=1e-4
        )


def test_elbo_away_from_the_posterior_is_lower():
    x, y, mean, sd = _problem()
    net = _net()
    exact = _exact_guide(net, mean, sd)
    off = _exact_guide(net, mean + 0.5 * sd, 1.5 * sd)
    torch.manual_seed(1)
    a = torch.stack([FusedELBO()(net, exact, x, y, N) for _ in range(200)]).mean()
    b = torch.stack([FusedELBO()(net, off, x, y, N) for _ in range(200)]).mean()
    assert float(b.detach()) > float(a.detach()) + 0.1


def test_fit_mean_field_recovers_the_exact_posterior():
    x, y, mean, sd = _problem()
    net = _net()
    guide = MeanField(net, init_scale=0.1)
    bp.fit(
        net,
        (x, y),
        guide,
        epochs=3000,
        batch_size=N,
        lr=3e-2,
        schedule="cosine",
        progress=False,
        log_every=500,
        validate=False,
    )
    torch.testing.assert_close(guide.loc["weight"].detach().flatten(), mean, **MEAN_TOL)
    torch.testing.assert_close(guide.stddev(net.sites[0]).detach().flatten(), sd, **SD_TOL)


@pytest.mark.parametrize("wrong", ["mean", "sd"])
def test_the_check_can_fail(wrong):
    """The tolerances above are tight enough to reject a posterior off by 10%."""
    _, _, mean, sd = _problem()
    got_mean, got_sd = mean.clone(), sd.clone()
    if wrong == "mean":
        got_mean = got_mean + 0.1 * sd
    else:
        got_sd = 1.1 * got_sd
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got_mean, mean, **MEAN_TOL)
        torch.testing.assert_close(got_sd, sd, **SD_TOL)
