"""HALO: the Pyro model is the paper's penalty; fused and Pyro densities agree; MAP fits
match a brute-force minimisation of the exact objective."""

from __future__ import annotations

import copy
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import optimize

from bayesprune import fit, sparsify
from bayesprune.data import Dataset, Split, synthetic_regression
from bayesprune.guides import MAP
from bayesprune.guides.base import key
from bayesprune.nn import Gaussian
from bayesprune.priors import HALO, Prior, from_config
from bayesprune.sites import Context

XI, PSI = 2e-3, 5e-3


def layer(kind: str) -> nn.Module:
    return nn.Linear(5, 3) if kind == "linear" else nn.Conv2d(2, 3, 3)


def batch(kind: str, n: int) -> torch.Tensor:
    shape = (n, 5) if kind == "linear" else (n, 2, 5, 5)
    return torch.randn(shape, dtype=torch.float64)


class Net(nn.Module):
    """One prior layer followed by a linear head (not under the prior)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.body = layer(kind)
        self.head = nn.Linear(3 if kind == "linear" else 3 * 3 * 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)).flatten(1))


def set_point(guide: MAP, values: dict[str, torch.Tensor]) -> None:
    """Put the Delta guide at ``values`` (given in the constrained space)."""
    with torch.no_grad():
        for s in guide.sites:
            v = values[s.name]
            guide.unconstrained[key(s.name)].copy_(v.log() if s.role == "scale" else v)


def random_point(net, *, zeros: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for s in net.sites:
        if s.role == "scale":
            out[s.name] = torch.rand(s.shape, dtype=torch.float64) * 1.5 + 0.2
        else:
            v = torch.randn(s.shape, dtype=torch.float64) * 0.5
            if zeros:
                v.view(-1)[::3] = 0.0
            out[s.name] = v
    return out


def penalty(prior: HALO, net, values, n_data: int) -> torch.Tensor:
    """The paper's penalty ``ξN Σ|θ|/λ² + ψN Σλ`` written out by hand."""
    total = torch.zeros((), dtype=torch.float64)
    for name in net.layer_names:
        lam = values[f"{name}.weight_scale"]
        theta = values[f"{name}.weight"]
        if prior.per == "unit":
            lam = lam.reshape((-1,) + (1,) * (theta.dim() - 1))
        total = total + prior.xi * n_data * (theta.abs() / lam.square()).sum()
        total = total + prior.psi * n_data * values[f"{name}.weight_scale"].sum()
    return total


def nll(net, values, x, y, n_data: int) -> torch.Tensor:
    """``-(N/B) Σ log p(y | x, θ)`` from a copy of the module with θ loaded."""
    module = copy.deepcopy(net.module)
    with torch.no_grad():
        for s in net.replacing:
            module.get_parameter(s.replaces).copy_(values[s.name])
    return F.cross_entropy(module(x), y, reduction="sum") * n_data / x.shape[0]


# --- (1) the model is the penalty --------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("per", ["weight", "unit"])
def test_negative_log_joint_is_the_halo_penalty_plus_nll(kind, per):
    prior = HALO(xi=XI, psi=PSI, per=per)
    net = sparsify(Net(kind).double(), prior, layers="body")
    guide = MAP(net)
    n_data, x, y = 200, batch(kind, 6), torch.tensor([0, 1, 2, 3, 0, 1])
    elbo = pyro.infer.Trace_ELBO()

    def model_terms(values):
        set_point(guide, values)
        guide_trace = pyro.poutine.trace(guide).get_trace(x, y, n_data=n_data)
        model_trace = pyro.poutine.trace(pyro.poutine.replay(net.model, guide_trace)).get_trace(
            x, y, n_data=n_data
        )
        neg_log_joint = -model_trace.log_prob_sum()
        loss = elbo.differentiable_loss(net.model, guide, x, y, n_data=n_data)
        torch.testing.assert_close(loss, neg_log_joint, rtol=1e-12, atol=1e-9)
        return neg_log_joint.detach()

    def expression(values):
        return penalty(prior, net, values, n_data) + nll(net, values, x, y, n_data)

    a, b = random_point(net), random_point(net)
    assert not torch.allclose(
        a["body.weight_scale"].log().sum(), b["body.weight_scale"].log().sum()
    )
    la, lb = model_terms(a), model_terms(b)
    ea, eb = expression(a), expression(b)
    torch.testing.assert_close(la - lb, ea - eb, rtol=1e-10, atol=1e-8)
    # the constant is the normaliser of the prior: the same at every (θ, λ)
    c = random_point(net)
    torch.testing.assert_close(model_terms(c) - expression(c), la - ea, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("per", ["weight", "unit"])
def test_hyper_prior_is_gamma_2m_plus_1_with_rate_psi_n(kind, per):
    prior = HALO(xi=XI, psi=PSI, per=per)
    lay = layer(kind)
    scale_site, weight_site = prior.layer_sites("body", lay)
    fan_in = math.prod(lay.weight.shape[1:])
    m = 1 if per == "weight" else fan_in
    assert scale_site.meta["shared"] == m
    assert scale_site.shape == (tuple(lay.weight.shape) if per == "weight" else (3,))
    ctx = Context(n_data=300, dtype=torch.float64)
    d = prior.distribution(scale_site, {}, ctx)
    assert isinstance(d.base_dist, dist.Gamma)
    assert tuple(d.event_shape) == scale_site.shape
    assert torch.all(d.base_dist.concentration == 2 * m + 1)
    torch.testing.assert_close(
        d.base_dist.rate, torch.full(scale_site.shape, PSI * 300.0, dtype=torch.float64)
    )

    lam = torch.rand(scale_site.shape, dtype=torch.float64) + 0.5
    w = prior.distribution(weight_site, {scale_site.name: lam}, ctx)
    assert tuple(w.event_shape) == weight_site.shape
    lam_b = lam if per == "weight" else lam.reshape(-1, *[1] * (lay.weight.dim() - 1))
    torch.testing.assert_close(
        w.base_dist.scale, (lam_b.square() / (XI * 300)).expand_as(lay.weight)
    )


# --- (2) the fused density equals the Pyro one ---------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("per", ["weight", "unit"])
@pytest.mark.parametrize("n_data", [1, 60000])
def test_fused_log_prob_equals_sum_of_distributions(kind, per, n_data):
    prior = HALO(xi=XI, psi=PSI, per=per)
    lay = layer(kind).double()
    sites = prior.layer_sites("body", lay)
    ctx = Context(n_data=n_data, dtype=torch.float64)

    def grads(fn):
        values = {
            s.name: v.clone().requires_grad_() for s, v in zip(sites, point.values(), strict=True)
        }
        lp = fn(sites, values, ctx)
        return lp.detach(), torch.autograd.grad(lp, list(values.values()))

    point = {
        s.name: (
            torch.rand(s.shape, dtype=torch.float64) + 0.3
            if s.role == "scale"
            else torch.randn(s.shape, dtype=torch.float64)
        )
        for s in sites
    }
    point[sites[1].name].view(-1)[::4] = 0.0  # |θ| at its kink: both must use subgradient 0
    fused, g_fused = grads(prior.log_prob)
    generic, g_generic = grads(lambda *a: Prior.log_prob(prior, *a))
    torch.testing.assert_close(fused, generic, rtol=1e-12, atol=1e-9)
    for a, b in zip(g_fused, g_generic, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)


def test_fused_log_prob_in_float32_matches_float64():
    prior = HALO(xi=XI, psi=PSI)
    lay = nn.Linear(6, 4)
    sites = prior.layer_sites("fc", lay)
    lam = torch.rand(4, 6) + 0.5
    theta = torch.randn(4, 6)
    v32 = {"fc.weight_scale": lam, "fc.weight": theta}
    v64 = {k: v.double() for k, v in v32.items()}
    lp32 = prior.log_prob(sites, v32, Context(1000))
    lp64 = prior.log_prob(sites, v64, Context(1000, dtype=torch.float64))
    assert lp32.dtype == torch.float32
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("per", ["weight", "unit"])
def test_net_log_prior_equals_the_model_trace(nets, per):
    net = sparsify(nets["conv"]().double(), HALO(xi=XI, psi=PSI, per=per))
    values = random_point(net, zeros=True)
    trace = pyro.poutine.trace(pyro.poutine.condition(net.model, data=values)).get_trace(
        torch.randn(3, 1, 6, 6, dtype=torch.float64), n_data=500
    )
    trace.compute_log_prob()
    from_trace = sum(trace.nodes[s.name]["log_prob_sum"] for s in net.sites)
    torch.testing.assert_close(
        net.log_prior(values, net.context(500)), from_trace, rtol=1e-12, atol=1e-9
    )


# --- sites ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_layer_sites_and_initial_values(kind):
    prior = HALO(init_scale=0.7)
    lay = layer(kind)
    scale, weight = prior.layer_sites("a.b", lay)
    assert (scale.name, scale.layer, scale.role, scale.replaces) == (
        "a.b.weight_scale",
        "a.b",
        "scale",
        None,
    )
    assert (weight.name, weight.role, weight.replaces) == ("a.b.weight", "weight", "a.b.weight")
    assert weight.shape == tuple(lay.weight.shape)
    assert scale.support is dist.constraints.positive
    assert weight.support is dist.constraints.real
    assert torch.equal(prior.initial_value(scale, lay), torch.full(scale.shape, 0.7))
    w0 = prior.initial_value(weight, lay)
    assert torch.equal(w0, lay.weight) and not w0.requires_grad


@pytest.mark.parametrize("bad", [nn.BatchNorm1d(3), nn.LSTM(3, 3), nn.Embedding(4, 3)])
def test_unsupported_layer_raises_naming_it(bad):
    with pytest.raises(TypeError, match=f"layer 'x' of type {type(bad).__name__}"):
        HALO().layer_sites("x", bad)


# --- (3) hyper-parameter validation --------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"xi": 0}, "xi must be a finite number > 0, got 0"),
        ({"xi": -1e-3}, "xi must be"),
        ({"psi": math.nan}, "psi must be a finite number > 0, got nan"),
        ({"psi": math.inf}, "psi must be"),
        ({"xi": True}, "xi must be"),
        ({"psi": "1e-4"}, "psi must be"),
        ({"xi": None}, "xi must be"),
        ({"init_scale": 0.0}, "init_scale must be"),
        ({"per": "x"}, "per must be 'weight' or 'unit', got 'x'"),
        ({"per": None}, "per must be"),
    ],
)
def test_hyper_parameter_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HALO(**kwargs)


def test_hyper_parameters_are_stored_as_floats():
    prior = HALO(xi=1, psi=2, per="unit", init_scale=3)
    assert (prior.xi, prior.psi, prior.init_scale) == (1.0, 2.0, 3.0)
    assert all(isinstance(v, float) for v in (prior.xi, prior.psi, prior.init_scale))


# --- (4) scores ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("per", ["weight", "unit"])
def test_scores(kind, per):
    prior = HALO(per=per)
    lay = layer(kind)
    sites = prior.layer_sites("l", lay)
    theta = torch.randn(lay.weight.shape)
    lam = torch.rand(sites[0].shape) + 0.1
    point = {"l.weight": theta, "l.weight_scale": lam}
    by_mag = prior.scores(sites, point)
    by_scale = prior.scores(sites, point, by="scale")
    assert by_mag.shape == by_scale.shape
    if per == "weight":
        assert by_mag.shape == theta.shape
        assert torch.equal(by_mag, theta.abs())
        assert torch.equal(by_scale, lam)
    else:
        assert by_mag.shape == (3,)
        torch.testing.assert_close(by_mag, theta.reshape(3, -1).norm(dim=1))
        assert torch.equal(by_scale, lam)
    assert torch.equal(prior.scores(sites, point, by="magnitude"), by_mag)
    with pytest.raises(ValueError, match="by must be 'magnitude' or 'scale', got 'norm'"):
        prior.scores(sites, point, by="norm")


@pytest.mark.parametrize("per", ["weight", "unit"])
def test_kept_fraction_counts_scores_above_the_tolerance(nets, per):
    net = sparsify(nets["mlp"](), HALO(per=per), layers=nn.Linear)
    point = {s.name: torch.ones(s.shape) for s in net.sites}
    point["0.weight"][:4] = 0.0  # 4 of the 16 units of layer 0: 32 of its 128 weights
    point["2.weight"][0, 0] = 1e-4  # below report_tol
    kept = net.prior.kept_fraction(net, point)
    if per == "weight":
        assert kept == pytest.approx((128 + 48 - 32 - 1) / (128 + 48))
    else:
        assert kept == pytest.approx((16 + 3 - 4) / (16 + 3))


# --- (5) config ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prior", [HALO(), HALO(xi=1e-4, psi=2e-4, per="unit", init_scale=0.5)], ids=["default", "unit"]
)
def test_config_round_trip(prior):
    cfg = prior.config()
    assert cfg["name"] == "halo"
    again = from_config(cfg)
    assert isinstance(again, HALO)
    assert again.config() == cfg
    assert repr(again) == repr(prior)
    assert cfg == prior.config()  # from_config does not consume the caller's dict


@pytest.mark.parametrize(
    ("cfg", "err", "match"),
    [
        ({"name": "horseshoe"}, ValueError, "unknown name 'horseshoe'; known priors: .*halo"),
        ({"xi": 1e-4}, ValueError, "unknown name None"),
        (
            {"name": "halo", "lambda": 1.0},
            ValueError,
            r"prior 'halo': bad hyper-parameters \['lambda'\]",
        ),
        ({"name": "halo", "xi": -1.0}, ValueError, "xi must be"),
    ],
)
def test_from_config_errors(cfg, err, match):
    with pytest.raises(err, match=match):
        from_config(cfg)


def test_repr_names_the_hyper_parameters():
    assert (
        repr(HALO(xi=1e-4, psi=2e-4)) == "HALO(xi=0.0001, psi=0.0002, per='weight', init_scale=1.0)"
    )


# --- (6) MAP fits against the exact objective ----------------------------------------------
def test_map_fit_equals_brute_force_minimum_of_the_exact_objective():
    sigma, xi, psi = 0.5, 0.5, 0.5
    data, _ = synthetic_regression(64, 1, noise_scale=sigma, seed=3)
    x = data.train.x[:, 0].double().numpy()
    y = data.train.y.double().numpy()
    n = len(y)

    def objective(p):
        theta, lam = p
        return (
            ((y - theta * x) ** 2).sum() / (2 * sigma**2)
            + xi * n * abs(theta) / lam**2
            + psi * n * lam
        )

    def best_lam(theta):  # argmin over λ for fixed θ: d/dλ = -2ξN|θ|/λ³ + ψN = 0
        return (2 * xi * n * abs(theta) / (psi * n)) ** (1 / 3)

    ols = float(x @ y / (x @ x))
    profile = optimize.minimize_scalar(
        lambda t: objective((t, best_lam(t))),
        bounds=(0.5 * ols, 1.5 * ols),
        method="bounded",
        options={"xatol": 1e-12},
    )
    theta_star, lam_star = profile.x, best_lam(profile.x)
    # cross-check the profile with a 2-D minimisation from elsewhere, and a grid
    joint = optimize.minimize(
        objective, [ols, 1.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12}
    )
    np.testing.assert_allclose(joint.x, [theta_star, lam_star], atol=1e-6)
    grid_t, grid_l = np.meshgrid(np.linspace(0.5, 0.8, 301), np.linspace(0.9, 1.3, 401))
    values = ((y[:, None, None] - grid_t * x[:, None, None]) ** 2).sum(0) / (2 * sigma**2)
    values = values + xi * n * np.abs(grid_t) / grid_l**2 + psi * n * grid_l
    i = np.unravel_index(values.argmin(), values.shape)
    assert abs(grid_t[i] - theta_star) <= 1e-3 and abs(grid_l[i] - lam_star) <= 1e-3
    assert abs(theta_star - ols) > 0.05  # the penalty matters at these ξ, ψ

    net = sparsify(nn.Linear(1, 1, bias=False), HALO(xi=xi, psi=psi), likelihood=Gaussian(sigma))
    guide = MAP(net)
    fit(
        net,
        data,
        guide,
        epochs=300,
        batch_size=n,
        lr=0.05,
        schedule="cosine",
        progress=False,
        validate=False,
    )
    point = guide.point()
    assert float(point["weight"]) == pytest.approx(theta_star, abs=1e-4)
    assert float(point["weight_scale"]) == pytest.approx(lam_star, abs=1e-4)


def test_strong_halo_removes_an_irrelevant_weight_and_keeps_the_relevant_one():
    data, w = synthetic_regression(128, 2, n_informative=1, noise_scale=0.1, seed=1)
    assert w[0] != 0 and w[1] == 0
    results = {}
    for strength in (1e-12, 0.05):  # (practically) no prior vs a strong one
        torch.manual_seed(0)
        net = sparsify(
            nn.Linear(2, 1, bias=False), HALO(xi=strength, psi=strength), likelihood=Gaussian(0.1)
        )
        guide = MAP(net)
        fit(
            net,
            data,
            guide,
            epochs=300,
            batch_size=128,
            lr=0.05,
            schedule="cosine",
            progress=False,
            validate=False,
        )
        results[strength] = (
            guide.point()["weight"][0],
            net.prior.kept_fraction(net, guide.point()),
        )
    (weak, weak_kept), (strong, strong_kept) = results[1e-12], results[0.05]
    assert abs(float(weak[1])) > 1e-3  # least squares picks up the noise
    assert weak_kept == 1.0
    assert abs(float(strong[1])) < 1e-4  # HALO zeroes it
    assert float(strong[0]) == pytest.approx(float(w[0]), abs=0.03)  # and keeps the signal
    assert strong_kept == 0.5


def test_dataset_of_own_tensors_fits_like_the_synthetic_one():
    """The MAP fit of y = 2x (no noise) under a weak HALO recovers 2 (Dataset/Split input)."""
    x = torch.linspace(-1, 1, 32).unsqueeze(1)
    data = Dataset(train=Split(x, 2 * x[:, 0]))
    net = sparsify(nn.Linear(1, 1, bias=False), HALO(xi=1e-6, psi=1e-6), likelihood="gaussian")
    guide = MAP(net)
    fit(net, data, guide, epochs=200, batch_size=32, lr=0.05, schedule="cosine", progress=False)
    assert float(guide.point()["weight"]) == pytest.approx(2.0, abs=1e-2)
