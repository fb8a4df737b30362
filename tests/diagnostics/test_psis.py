import math

import numpy as np
import pytest
import torch

from bayesprune.diagnostics._arviz import az
from bayesprune.diagnostics.psis import pareto_khat


@pytest.mark.parametrize("spread", [0.1, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("n", [100, 1000])
def test_khat_agrees_with_arviz_psislw(spread, n):
    g = torch.Generator().manual_seed(n)
    lw = torch.randn(n, generator=g, dtype=torch.float64) * spread
    k, why = pareto_khat(lw)
    _, k_arviz = az.psislw(lw.numpy().copy())
    assert why == ""
    assert k == pytest.approx(float(np.asarray(k_arviz)), abs=1e-8)


def test_khat_grows_with_the_spread_of_the_weights():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, generator=g, dtype=torch.float64)
    ks = [pareto_khat(z * s)[0] for s in (0.1, 1.0, 3.0)]
    assert ks[0] < 0.5 < ks[2] and ks == sorted(ks)


@pytest.mark.parametrize(
    "lw, reason",
    [
        (torch.randn(10), "too few draws"),
        (torch.tensor([0.0] * 99 + [float("nan")]), "not finite"),
        (torch.zeros(100), "all log weights are equal"),
    ],
)
def test_undefined_khat_is_nan_with_a_reason(lw, reason):
    k, why = pareto_khat(lw)
    assert math.isnan(k) and reason in why and why.startswith("undefined")


@pytest.mark.parametrize("top", [1, 4])
def test_a_few_dominating_draws_give_infinite_khat_as_arviz_does(top):
    lw = torch.cat([torch.zeros(100 - top), torch.full((top,), 800.0)])  # ties below the tail
    k, why = pareto_khat(lw)
    _, k_arviz = az.psislw(lw.double().numpy().copy())
    assert k == math.inf == float(np.asarray(k_arviz)) and "carry nearly all" in why


def test_log_weights_must_be_one_dimensional():
    with pytest.raises(ValueError, match="log_weights"):
        pareto_khat(torch.zeros(4, 4))
