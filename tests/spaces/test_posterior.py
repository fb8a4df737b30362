"""The posterior-induced space: units kept with their gate probability θ."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from bayesprune import sparsify
from bayesprune.guides import MAP
from bayesprune.priors import HALO, UnitGates
from bayesprune.spaces import PosteriorSpace
from tests.helpers import mlp, set_gates

X = torch.zeros(1, 4)
THETA = {"0": [0.1, 0.5, 0.9, 1.0, 0.3, 0.7], "2": [0.8, 0.2, 0.6, 0.95, 0.4]}


def gated(theta: dict[str, list[float]] = THETA):
    net = sparsify(mlp(4, 6, 5, 3), UnitGates())
    guide = MAP(net)
    set_gates(guide, theta)
    return net, guide


def test_kept_frequencies_match_theta():
    net, guide = gated()
    space = PosteriorSpace(net, guide, example_input=X)
    n = 20000
    masks = space.sample_masks(n, seed=0)
    for layer, th in THETA.items():
        freq = masks[layer].mean(0)
        # conditioning on >= 1 unit per layer changes these θ by < 1e-3; 5 standard errors
        bound = 5 * np.sqrt(np.array(th) * (1 - np.array(th)) / n) + 2e-3
        assert np.all(np.abs(freq - np.array(th)) <= bound), (layer, freq, th)
    assert masks["0"][:, 3].all()  # θ = 1: always kept
    keeps = space.sample(5, seed=0)
    assert keeps[0]["0"].n_units == 6 and keeps[0]["2"].n_units == 5


def test_draws_meet_the_flops_range_and_follow_the_conditional():
    net, guide = gated()
    space = PosteriorSpace(net, guide, flops=(0.0, 0.45), example_input=X)
    masks = space.sample_masks(4000, seed=1)
    counts = np.stack([m.sum(1) for m in masks.values()], axis=1)
    dense = 4 * 6 + 6 * 5 + 5 * 3
    mac = 4 * counts[:, 0] + counts[:, 0] * counts[:, 1] + 3 * counts[:, 1]
    assert (counts >= 1).all() and (mac <= 0.45 * dense + 1e-9).all()
    assert 0 < space.acceptance < 1
    # conditioning on few FLOPs lowers every unit's frequency below its θ (θ < 1)
    assert (masks["2"].mean(0) < np.array(THETA["2"])).all()


def test_a_flops_range_no_draw_can_reach_raises_naming_flops():
    net, guide = gated({"0": [0.0, 0.0, 0.5, 1.0, 0.0, 0.0], "2": [1.0, 1.0, 0.5, 0.5, 0.5]})
    with pytest.raises(ValueError, match="flops=.*leaves no subnetwork"):
        PosteriorSpace(net, guide, flops=(0.9, 1.0), example_input=X)


def test_a_range_met_too_rarely_gives_up_naming_the_constraint():
    net, guide = gated()
    space = PosteriorSpace(net, guide, ratio=(1.99, 2.0), example_input=X, max_draws=2000)
    with pytest.raises(ValueError, match="ratio=.*max_draws"):
        space.sample(1)


def test_a_layer_with_every_gate_closed_raises_naming_guide():
    net, guide = gated({"0": [0.0] * 6, "2": THETA["2"]})
    with pytest.raises(ValueError, match="guide gives every unit of layer '0'"):
        PosteriorSpace(net, guide, example_input=X)


def test_a_net_without_gates_is_refused():
    net = sparsify(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), HALO())
    with pytest.raises(ValueError, match="net must be a BayesianNet with unit gates"):
        PosteriorSpace(net, MAP(net), example_input=X)
