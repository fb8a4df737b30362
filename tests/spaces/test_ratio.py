"""He & Xiao's ratio finding: detects winners sharing a FLOPs/params ratio, and only then."""

from __future__ import annotations

import numpy as np
import pytest

from bayesprune.spaces import Population, ratio_finding


def population(ratio: np.ndarray, errors: np.ndarray) -> Population:
    n = ratio.size
    params = np.full(n, 100.0)
    return Population(
        "p", ("fc",), np.ones((n, 1), int), errors, errors, ratio * params, params, 1000.0, 100.0
    )


def test_winners_at_one_ratio_concentrate():
    rng = np.random.default_rng(0)
    ratio = rng.uniform(1.0, 10.0, 200)
    errors = 0.1 + 0.05 * np.abs(np.log(ratio / 3.0)) + 0.002 * rng.random(200)
    f = ratio_finding(population(ratio, errors), top=0.1)
    assert f["concentration"] < 0.3 and f["p_value"] < 0.01
    assert f["ratio_best_range"][0] <= 3.0 <= f["ratio_best_range"][1]
    assert f["n_best"] == 20


def test_errors_unrelated_to_the_ratio_do_not_concentrate():
    rng = np.random.default_rng(1)
    ratio = rng.uniform(1.0, 10.0, 200)
    f = ratio_finding(population(ratio, rng.random(200)), top=0.1)
    assert f["p_value"] > 0.05 and 0.5 < f["concentration"] < 2.0
    assert abs(f["spearman_error_ratio"]) < 0.2


def test_too_small_a_population_is_refused():
    with pytest.raises(ValueError, match="at least 4"):
        ratio_finding(population(np.ones(3), np.ones(3)))
