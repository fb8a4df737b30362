"""Likelihoods: the fused ``log_prob`` equals the Pyro statement; targets are checked."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from bayesprune.nn import Categorical, Gaussian, likelihood_from_config


def test_categorical_log_prob_equals_pyro():
    logits = torch.randn(9, 5, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (9,))
    expected = dist.Categorical(logits=logits).log_prob(y).sum()
    torch.testing.assert_close(Categorical().log_prob(logits, y), expected)
    torch.testing.assert_close(
        Categorical().distribution(logits).log_prob(y).sum(), expected, rtol=0, atol=0
    )


@pytest.mark.parametrize(
    ("out_shape", "y_shape", "normal_loc"),
    [
        ((7, 1), (7,), lambda o: o.squeeze(-1)),  # one regression output per example
        ((7,), (7,), lambda o: o),
        ((7, 3), (7, 3), lambda o: o),  # several outputs per example
    ],
)
@pytest.mark.parametrize("scale", [0.1, 1.0, 2.5])
def test_gaussian_log_prob_equals_pyro(out_shape, y_shape, normal_loc, scale):
    out = torch.randn(out_shape, dtype=torch.float64)
    y = torch.randn(y_shape, dtype=torch.float64)
    lik = Gaussian(scale)
    expected = dist.Normal(normal_loc(out), scale).log_prob(y).sum()
    torch.testing.assert_close(lik.log_prob(out, y), expected)
    d = lik.distribution(out)
    assert tuple(d.batch_shape) == (7,)  # one factor per example: the data plate
    torch.testing.assert_close(d.log_prob(y).sum(), expected)


def test_gaussian_log_prob_gradient_equals_pyro():
    out = torch.randn(6, 1, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, dtype=torch.float64)
    (g_fused,) = torch.autograd.grad(Gaussian(0.3).log_prob(out, y), out)
    (g_pyro,) = torch.autograd.grad(dist.Normal(out.squeeze(-1), 0.3).log_prob(y).sum(), out)
    torch.testing.assert_close(g_fused, g_pyro)


@pytest.mark.parametrize("lik", [Categorical(), Gaussian(0.5)], ids=["categorical", "gaussian"])
@pytest.mark.parametrize("n_data", [4, 10, 100])
def test_observe_scales_the_batch_to_n_data(lik, n_data):
    out = torch.randn(4, 3)
    y = torch.tensor([0, 2, 1, 1]) if isinstance(lik, Categorical) else torch.randn(4, 3)

    def model():
        return lik.observe(out, y, n_data)

    trace = pyro.poutine.trace(model).get_trace()
    trace.compute_log_prob()
    node = trace.nodes["obs"]
    assert node["scale"] == pytest.approx(n_data / 4)
    torch.testing.assert_close(node["log_prob_sum"], lik.log_prob(out, y) * n_data / 4)


def test_observe_with_n_data_smaller_than_the_batch_is_an_error():
    # a batch stands for n_data examples; a smaller n_data is a caller's mistake, and the
    # fused loss refuses it too (tests/inference/test_losses.py)
    with pytest.raises(ValueError, match="n_data=2 is smaller than the mini-batch"):
        pyro.poutine.trace(lambda: Categorical().observe(torch.zeros(5, 2), None, 2)).get_trace()


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_check_targets_accepts_integer_labels(dtype):
    Categorical().check_targets(torch.tensor([0, 1, 3], dtype=dtype), output_dim=4)
    Categorical().check_targets(torch.tensor([], dtype=dtype), output_dim=4)
    Categorical().check_targets(torch.tensor([7], dtype=dtype))  # no width to compare with


@pytest.mark.parametrize(
    ("y", "output_dim", "match"),
    [
        (torch.tensor([0.0, 1.0]), 3, "must be integer labels, got torch.float32"),
        (torch.tensor([0.0, 1.0], dtype=torch.float64), 3, "integer labels"),
        (torch.tensor([True, False]), 3, "integer labels"),
        (torch.tensor([0, -1, 2]), 3, "must be >= 0"),
        (torch.tensor([0, 3, 2]), 3, "target label 3 but the network has only 3 outputs"),
        (torch.tensor([9]), 2, "target label 9"),
    ],
)
def test_check_targets_errors(y, output_dim, match):
    with pytest.raises(ValueError, match=match):
        Categorical().check_targets(y, output_dim)


@pytest.mark.parametrize("scale", [0, -1.0, math.inf, math.nan, "1.0", None])
def test_gaussian_scale_validation(scale):
    with pytest.raises(ValueError, match="scale must be > 0"):
        Gaussian(scale)


@pytest.mark.parametrize("lik", [Categorical(), Gaussian(0.25)], ids=["categorical", "gaussian"])
def test_config_round_trip(lik):
    again = likelihood_from_config(lik.config())
    assert type(again) is type(lik)
    assert again.config() == lik.config()


def test_from_config_by_name_and_errors():
    assert isinstance(likelihood_from_config("categorical"), Categorical)
    assert likelihood_from_config({"name": "gaussian", "scale": 3}).scale == 3.0
    with pytest.raises(ValueError, match="unknown name 'poisson'"):
        likelihood_from_config("poisson")
    with pytest.raises(ValueError, match="unknown name None"):
        likelihood_from_config({"scale": 1.0})
