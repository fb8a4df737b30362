"""The uniform pruning space: constraints hold, sampling is uniform, bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import chi2

from bayesprune.spaces import PruningSpace


def mlp3() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


X = torch.zeros(1, 4)
DENSE_MACS = 4 * 6 + 6 * 5 + 5 * 3


def macs(c1: int, c2: int) -> int:
    return 4 * c1 + c1 * c2 + c2 * 3


@pytest.mark.parametrize("exact_limit", [10**6, 0], ids=["enumerated", "rejection"])
def test_samples_meet_the_constraints(exact_limit):
    space = PruningSpace(
        mlp3(), flops=(0.3, 0.6), params=(0.2, 0.7), example_input=X, exact_limit=exact_limit
    )
    counts = space.sample_counts(300, seed=1)
    for c1, c2 in counts:
        assert 0.3 <= macs(c1, c2) / DENSE_MACS <= 0.6
    costs = space.costs(counts)
    assert ((costs["params_frac"] >= 0.2) & (costs["params_frac"] <= 0.7)).all()
    keeps = space.sample(20, seed=1)
    assert all(0.3 <= macs(k["0"].n_kept, k["2"].n_kept) / DENSE_MACS <= 0.6 for k in keeps)


@pytest.mark.parametrize("exact_limit", [10**6, 0], ids=["enumerated", "rejection"])
def test_sampling_is_uniform_over_the_feasible_widths(exact_limit):
    space = PruningSpace(mlp3(), flops=(0.0, 0.5), example_input=X, exact_limit=exact_limit)
    feasible = {(a, b) for a in range(1, 7) for b in range(1, 6) if macs(a, b) <= 0.5 * DENSE_MACS}
    assert {
        tuple(r) for r in PruningSpace(mlp3(), flops=(0.0, 0.5), example_input=X).feasible()
    } == feasible
    n = 6000
    counts = space.sample_counts(n, seed=3)
    got = {}
    for r in map(tuple, counts):
        got[r] = got.get(r, 0) + 1
    assert set(got) <= feasible
    observed = np.array([got.get(f, 0) for f in sorted(feasible)])
    expected = n / len(feasible)
    stat = float(((observed - expected) ** 2 / expected).sum())
    assert stat < chi2.ppf(0.999, len(feasible) - 1), (stat, observed)
    # and the chi-square bound can fail: a sampler that never draws one width does
    skewed = observed.copy()
    skewed[0], skewed[1] = 0, observed[1] + observed[0]
    assert float(((skewed - expected) ** 2 / expected).sum()) > chi2.ppf(0.999, len(feasible) - 1)


def test_a_width_grid_and_width_range_restrict_the_choices():
    space = PruningSpace(mlp3(), widths=[0.2, 0.5, 1.0], width_range=(0.3, 1.0), example_input=X)
    assert space.choices["0"].tolist() == [3, 6]
    assert space.choices["2"].tolist() == [2, 5]  # round(0.5 * 5) = 2 (banker's), 0.2*5=1 < 0.3*5
    per_layer = PruningSpace(mlp3(), widths={"0": [0.5], "2": [1.0]}, example_input=X)
    assert per_layer.size == 1 and per_layer.sample_counts(2).tolist() == [[3, 5], [3, 5]]


def test_l1_keeps_the_largest_rows_and_random_varies():
    net = mlp3()
    with torch.no_grad():
        net[0].weight.copy_(torch.arange(6.0)[:, None].repeat(1, 4))  # row norms 0..5*4
    space = PruningSpace(net, widths={"0": [0.5], "2": [1.0]}, example_input=X)
    assert space.sample(1)[0]["0"].units.tolist() == [3, 4, 5]
    rnd = PruningSpace(net, widths={"0": [0.5], "2": [1.0]}, units="random", example_input=X)
    chosen = {tuple(k["0"].units.tolist()) for k in rnd.sample(30, seed=0)}
    assert len(chosen) > 5 and all(len(c) == 3 for c in chosen)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"flops": (1.5, 2.0)}, "flops"),
        ({"params": (0.0, 0.001)}, "params"),
        ({"flops": (0.5, 0.2)}, "flops"),
        ({"ratio": (100.0, 200.0)}, "ratio"),
        ({"flops": (0.41, 0.42), "widths": [0.5, 1.0]}, "flops"),
        ({"widths": [0.0, 0.5]}, "widths"),
        ({"width_range": (0.9, 1.0), "widths": [0.5]}, "width_range"),
        ({"units": "l2"}, "units"),
        ({"layers": ["1"]}, "layers"),
    ],
)
def test_impossible_or_bad_arguments_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        space = PruningSpace(mlp3(), example_input=X, **kwargs)
        space.sample(1)


def test_rejection_gives_up_with_a_value_error():
    space = PruningSpace(
        mlp3(), ratio=(100.0, 200.0), example_input=X, exact_limit=0, max_draws=1000
    )
    with pytest.raises(ValueError, match="ratio=.*max_draws"):
        space.sample(1)


def test_n_must_be_positive():
    with pytest.raises(ValueError, match="n must be"):
        PruningSpace(mlp3(), example_input=X).sample(0)
