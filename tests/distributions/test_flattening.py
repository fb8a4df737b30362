"""The flattening hyper-prior: a proper density with a consistent cdf, icdf, sampler and
mean for every γ ≥ 0 (uniform at 0, no overflow at 300, float32 as good as float64); and
the derivation behind it, checked numerically: maximising ``−KL(Bern θ ‖ Bern π) + log p(π)``
over π gives ``π*(θ) = optimal_prior_prob`` and the value ``−gate_cost(θ) = −γθ − log Z``,
linear in θ."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from scipy import integrate, optimize, special, stats

from bayesprune.distributions import Flattening, gate_cost, log_normalizer, optimal_prior_prob

GAMMAS = [0.0, 1e-9, 1e-4, 0.5, 3.0, 30.0, 300.0]
F64 = torch.float64


def flat(gamma: float, dtype: torch.dtype = F64, **kw) -> Flattening:
    return Flattening(torch.tensor(gamma, dtype=dtype), **kw)


def log_density(gamma: float, s: np.ndarray | float) -> np.ndarray:
    """``log p(π)`` at ``π = e^s``, written out independently of the library:
    ``−log(1 + π(e^γ − 1)) − log(γ / (e^γ − 1))``."""
    s = np.asarray(s, dtype=np.float64)
    if gamma == 0.0:
        return np.zeros_like(s)
    one_minus = -np.expm1(s)  # 1 − π, accurate near π = 1
    with np.errstate(divide="ignore"):  # log(0) = −inf at π = 1 is what logaddexp wants
        log_1pc = np.logaddexp(gamma + s, np.log(one_minus))  # log(π e^γ + 1 − π)
    log_z = math.log(gamma) - gamma - math.log(-math.expm1(-gamma))
    return -log_1pc - log_z


def integrate_log_space(f, gamma: float) -> float:
    """``∫_0^1 f(π) p(π) dπ`` as ``∫ f(e^s) p(e^s) e^s ds``: the mass of a large γ sits in
    ``π ≲ e^{−γ}``, far below what quadrature in π resolves."""
    lo = -(gamma + 60.0)
    pts = [-gamma - 5.0, -gamma, -gamma + 5.0] if gamma > 10 else None
    pts = [p for p in pts if lo < p < 0] if pts else None
    val, err = integrate.quad(
        lambda s: f(math.exp(s)) * math.exp(float(log_density(gamma, s)) + s),
        lo,
        0.0,
        points=pts,
        limit=400,
        epsabs=1e-13,
        epsrel=1e-11,
    )
    return val


# --- a proper density -------------------------------------------------------------


@pytest.mark.parametrize("gamma", GAMMAS)
def test_density_integrates_to_one(gamma):
    d = flat(gamma)
    # the library's own density, integrated in log space (all γ) ...
    total = integrate.quad(
        lambda s: math.exp(float(d.log_prob(torch.tensor(math.exp(s), dtype=F64))) + s),
        -(gamma + 60.0),
        0.0,
        points=[-gamma] if gamma > 10 else None,
        limit=400,
    )[0]
    assert total == pytest.approx(1.0, abs=1e-8)
    # ... and directly in π where quadrature resolves it
    if gamma <= 30:
        direct = integrate.quad(
            lambda p: math.exp(float(d.log_prob(torch.tensor(p, dtype=F64)))), 0, 1, limit=400
        )[0]
        assert direct == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_log_prob_matches_the_formula(gamma):
    p = torch.tensor([1e-300, 1e-30, 1e-3, 0.2, 0.5, 0.9, 1.0 - 1e-12], dtype=F64)
    got = flat(gamma).log_prob(p)
    want = log_density(gamma, np.log(p.numpy()))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    # the endpoints: p(0) = 1/Z, p(1) = e^−γ / Z
    ends = flat(gamma).log_prob(torch.tensor([0.0, 1.0], dtype=F64))
    log_z = float(log_normalizer(torch.tensor(gamma, dtype=F64)))
    np.testing.assert_allclose(ends.numpy(), [-log_z, -gamma - log_z], rtol=1e-12, atol=1e-12)


def test_gamma_zero_is_uniform():
    d = flat(0.0)
    p = torch.linspace(0, 1, 11, dtype=F64)
    assert torch.equal(d.log_prob(p), torch.zeros_like(p))
    assert torch.equal(d.cdf(p), p)
    assert torch.equal(d.icdf(p), p)
    assert float(d.mean) == 0.5


@pytest.mark.parametrize("gamma", GAMMAS)
def test_cdf_and_icdf_are_inverse(gamma):
    d = flat(gamma)
    u = torch.linspace(0, 1, 101, dtype=F64)
    x = d.icdf(u)
    assert bool(torch.isfinite(x).all())
    assert float(x[0]) == 0.0 and float(x[-1]) == pytest.approx(1.0, abs=1e-15)
    assert bool((x[1:] >= x[:-1]).all())  # monotone
    torch.testing.assert_close(d.cdf(x), u, rtol=0, atol=1e-12)
    p = torch.tensor([0.0, 1e-6, 0.1, 0.5, 0.9, 1.0], dtype=F64)
    torch.testing.assert_close(d.icdf(d.cdf(p)), p, rtol=1e-9, atol=1e-12 + 1e-12 * gamma)


@pytest.mark.parametrize("gamma", [1e-4, 0.5, 3.0, 30.0])
def test_cdf_is_the_integral_of_the_density(gamma):
    d = flat(gamma)
    for x in (0.01, 0.3, 0.8):
        mass = integrate.quad(
            lambda p: math.exp(float(d.log_prob(torch.tensor(p, dtype=F64)))), 0, x, limit=200
        )[0]
        assert float(d.cdf(torch.tensor(x, dtype=F64))) == pytest.approx(mass, abs=1e-9)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 3.0, 30.0, 300.0])
def test_rsample_follows_the_cdf(gamma):
    torch.manual_seed(1)
    d = flat(gamma)
    x = d.rsample((4000,))
    assert x.shape == (4000,)
    assert bool(((x >= 0) & (x <= 1)).all())
    p_value = stats.kstest(x.numpy(), lambda v: d.cdf(torch.as_tensor(v, dtype=F64)).numpy()).pvalue
    assert p_value > 1e-3


@pytest.mark.parametrize("gamma", GAMMAS)
def test_mean(gamma):
    mean = float(flat(gamma).mean)
    assert mean == pytest.approx(integrate_log_space(lambda p: p, gamma), rel=1e-8, abs=1e-12)
    if gamma >= 1:  # large γ: mean → 1/γ
        assert mean == pytest.approx(1 / gamma - 1 / math.expm1(gamma), rel=1e-12)
    torch.manual_seed(2)
    draws = flat(gamma).sample((20000,))
    assert float(draws.mean()) == pytest.approx(mean, abs=5 * float(draws.std()) / math.sqrt(20000))


@pytest.mark.parametrize("gamma", [2e-6, 1e-5, 1e-3, 0.1, 1.0, 30.0, 90.0, 120.0, 300.0])
def test_float32_agrees_with_float64(gamma):
    """The default dtype must not lose the density: no overflow of ``e^γ`` (γ > 88) and no
    cancellation in ``1/γ − 1/(e^γ − 1)`` or ``log(1 + p(e^γ − 1))`` for tiny γ."""
    d32, d64 = flat(gamma, torch.float32), flat(gamma)
    u = torch.linspace(0, 1, 51)
    theta = torch.tensor([0.0, 0.2, 0.5, 0.999, 1.0])
    g32, g64 = torch.tensor(gamma), torch.tensor(gamma, dtype=F64)
    pairs = [
        (d32.mean, d64.mean, 1e-6),
        (d32.icdf(u), d64.icdf(u.double()), 1e-6),
        (d32.cdf(u), d64.cdf(u.double()), 1e-6),
        (d32.log_prob(u), d64.log_prob(u.double()), 1e-6 * (1 + gamma)),
        (log_normalizer(g32), log_normalizer(g64), 1e-6 * (1 + gamma)),
        (optimal_prior_prob(theta, g32), optimal_prior_prob(theta.double(), g64), 1e-6),
        (gate_cost(theta, g32), gate_cost(theta.double(), g64), 1e-6 * (1 + gamma)),
    ]
    for a, b, tol in pairs:
        assert bool(torch.isfinite(a).all()), (a, b)
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=tol)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_log_prob_gradients_are_finite_and_right(gamma):
    g = torch.tensor(gamma, dtype=F64, requires_grad=True)
    p = torch.tensor([1e-3, 0.3, 0.7, 0.999], dtype=F64, requires_grad=True)
    Flattening(g).log_prob(p).sum().backward()
    assert bool(torch.isfinite(p.grad).all()) and bool(torch.isfinite(g.grad))
    if gamma <= 30:  # d/dπ log p(π) = −c / (1 + cπ), c = e^γ − 1
        c = math.expm1(gamma)
        want = -c / (1 + c * p.detach())
        torch.testing.assert_close(p.grad, want, rtol=1e-9, atol=1e-12)


def test_rsample_is_differentiable_in_gamma():
    g = torch.tensor([0.5, 3.0, 300.0], dtype=F64, requires_grad=True)
    torch.manual_seed(3)
    x = Flattening(g).rsample((5,))
    x.sum().backward()
    assert bool(torch.isfinite(g.grad).all())
    assert bool((g.grad <= 0).all())  # a higher price moves every draw towards 0


# --- validation and shapes --------------------------------------------------------


def test_negative_gamma_is_refused_when_validating():
    with pytest.raises(ValueError, match="gamma"):
        flat(-1.0, validate_args=True)
    with pytest.raises(ValueError, match="gamma"):
        flat(float("nan"), validate_args=True)
    pyro.enable_validation(True)
    with pytest.raises(ValueError, match="gamma"):
        Flattening(torch.tensor([1.0, -0.5]))
    d = Flattening(torch.tensor(2.0))
    with pytest.raises(ValueError, match="support"):
        d.log_prob(torch.tensor(1.5))
    pyro.enable_validation(False)
    Flattening(torch.tensor(-1.0))  # not checked when validation is off


def test_shapes_and_expand():
    g = torch.tensor([[0.0, 1.0, 30.0], [2.0, 3.0, 300.0]])
    d = Flattening(g)
    assert d.batch_shape == (2, 3) and d.event_shape == ()
    assert d.sample().shape == (2, 3)
    assert d.rsample((4,)).shape == (4, 2, 3)
    assert d.log_prob(torch.full((5, 2, 3), 0.5)).shape == (5, 2, 3)
    assert d.mean.shape == (2, 3)
    e = Flattening(torch.tensor([1.0, 2.0]), validate_args=True).expand((4, 2))
    assert isinstance(e, Flattening) and e.batch_shape == (4, 2)
    assert torch.equal(e.gamma, torch.tensor([1.0, 2.0]).expand(4, 2))
    assert e._validate_args
    assert e.sample().shape == (4, 2)
    ev = Flattening(torch.full((3,), 2.0)).to_event(1)
    assert ev.event_shape == (3,) and ev.log_prob(torch.full((3,), 0.1)).shape == ()
    # a scalar γ broadcasts against a batch of values
    assert flat(3.0).log_prob(torch.rand(7, dtype=F64)).shape == (7,)


# --- the derivation ---------------------------------------------------------------


def neg_kl(theta: float, s: float) -> float:
    """``−KL(Bern θ ‖ Bern π)`` at ``π = e^s`` (``0 log 0 = 0``)."""
    log_1m_pi = math.log(-math.expm1(s)) if s < 0 else -math.inf
    kl = special.xlogy(theta, theta) - theta * s + special.xlogy(1 - theta, 1 - theta)
    kl -= 0.0 if theta == 1 else (1 - theta) * log_1m_pi
    return -kl


def objective(theta: float, gamma: float, s: float) -> float:
    """``−KL(Bern θ ‖ Bern π) + log p(π)`` at ``π = e^s``; ``s = −∞`` is the limit π → 0."""
    if s == -math.inf:  # only θ = 0 has a finite limit: 0 + log p(0) = −log Z
        return -float(log_normalizer(torch.tensor(gamma, dtype=F64))) if theta == 0 else -math.inf
    return neg_kl(theta, s) + float(log_density(gamma, s))


def best_prior_prob(theta: float, gamma: float) -> tuple[float, float]:
    """``argmax_π`` and ``max_π`` of the objective, found numerically in ``s = log π``
    (it is concave there; the optimum of a large γ lies near ``π ≈ e^{−γ}``, out of reach
    of a search in π)."""
    res = optimize.minimize_scalar(
        lambda s: -objective(theta, gamma, s),
        bounds=(-(gamma + 60.0), 0.0),
        method="bounded",
        options={"xatol": 1e-12, "maxiter": 5000},
    )
    return float(res.x), -float(res.fun)


THETAS = np.round(np.linspace(0, 1, 11), 10).tolist()


@pytest.mark.parametrize("gamma", [0.0, 0.1, 1.0, 5.0, 30.0, 300.0])
def test_optimum_over_the_prior_probability(gamma):
    g = torch.tensor(gamma, dtype=F64)
    values = []
    for theta in THETAS:
        s, value = best_prior_prob(theta, gamma)
        t = torch.tensor(theta, dtype=F64)
        pi_star = float(optimal_prior_prob(t, g))
        # the maximiser is π*(θ): nothing the search finds beats it ...
        at_pi_star = objective(theta, gamma, math.log(pi_star) if pi_star > 0 else -math.inf)
        assert at_pi_star >= value - 1e-12 * (1 + gamma)
        if 0 < theta < 1:  # (at θ ∈ {0, 1} the objective is flat near the optimum, π* ∈ {0, 1})
            assert s == pytest.approx(math.log(pi_star), abs=1e-4)
        else:
            assert pi_star == theta
        # ... and the maximum is −γθ − log Z = −gate_cost(θ)
        assert value == pytest.approx(-float(gate_cost(t, g)), abs=1e-9 * (1 + gamma))
        assert at_pi_star == pytest.approx(-float(gate_cost(t, g)), abs=1e-12 * (1 + gamma))
        values.append(value)
    # the value is linear in θ: the posterior's entropy has been cancelled
    second = np.diff(np.array(values), 2)
    assert np.abs(second).max() < 1e-8 * (1 + gamma)
    slope = np.diff(np.array(values)) / 0.1
    np.testing.assert_allclose(slope, -gamma, atol=1e-7 * (1 + gamma))


@pytest.mark.parametrize("gamma", [0.5, 5.0, 30.0])
def test_optimum_is_the_stationary_point(gamma):
    """``θ/π − (1−θ)/(1−π) − c/(1 + cπ) = 0`` at ``π*`` (the derivation's first step)."""
    theta = torch.tensor([0.05, 0.3, 0.6, 0.95], dtype=F64)
    pi = optimal_prior_prob(theta, torch.tensor(gamma, dtype=F64))
    c = math.expm1(gamma)
    terms = [theta / pi, (1 - theta) / (1 - pi), c / (1 + c * pi)]
    residual = terms[0] - terms[1] - terms[2]
    scale = sum(t.abs() for t in terms)
    assert float((residual.abs() / scale).max()) < 1e-12


def test_optimal_prior_prob_at_the_vertices_and_in_between():
    for gamma in [0.0, 1.0, 30.0, 120.0, 300.0, 1000.0]:
        for dtype in (torch.float32, F64):
            g = torch.tensor(gamma, dtype=dtype)
            pi = optimal_prior_prob(torch.tensor([0.0, 0.5, 1.0], dtype=dtype), g)
            assert float(pi[0]) == 0.0 and float(pi[2]) == 1.0
            assert 0.0 <= float(pi[1]) <= 0.5
    theta = torch.linspace(0, 1, 21, dtype=F64)
    torch.testing.assert_close(optimal_prior_prob(theta, torch.tensor(0.0, dtype=F64)), theta)
    pi = optimal_prior_prob(theta, torch.tensor(3.0, dtype=F64))
    assert bool((pi[1:] > pi[:-1]).all()) and bool((pi <= theta).all())


@pytest.mark.parametrize("gamma", [0.1, 2.0, 30.0, 120.0])
def test_log_prob_has_finite_gradients_at_the_vertices(gamma):
    """Pyro's Trace_ELBO differentiates log p(π*(θ)) with θ at 0 or 1: no NaN/Inf may leak
    from either branch of the density."""
    pi = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    lp = flat(gamma, torch.float32).log_prob(pi)
    (grad,) = torch.autograd.grad(lp.sum(), pi)
    assert bool(torch.isfinite(lp).all()) and not bool(torch.isnan(grad).any()), grad
    assert float(grad[2]) == pytest.approx(-1 / (1 + 1 / math.expm1(gamma)), rel=1e-4)
