"""End to end on a tiny MLP: sample both spaces, extract, fine-tune, score, summarise, plot."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from bayesprune import fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.guides import MAP
from bayesprune.priors import UnitGates
from bayesprune.spaces import (
    PosteriorSpace,
    PruningSpace,
    dominance,
    evaluate,
    plot_edfs,
    ratio_finding,
)


@pytest.fixture(scope="module")
def data():
    return synthetic_classification(256, 128, 0, input_shape=(8,), n_classes=3, seed=0)


def gated_mlp(data, epochs: int):
    """A gated 8-12-8-3 MLP fitted ``epochs`` epochs: ``(net, guide)``."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)
    )
    net = sparsify(module, UnitGates(gamma=2.0))
    guide = MAP(net)
    fit(net, data, guide, epochs=epochs, batch_size=32, role_lr={"gate": 1e-2}, progress=False)
    return net, guide


@pytest.fixture(scope="module")
def fitted(data):
    return gated_mlp(data, epochs=3)


def test_uniform_and_posterior_populations_end_to_end(fitted, data, tmp_path):
    net, guide = fitted
    before = {k: v.clone() for k, v in net.module.state_dict().items()}
    post = PosteriorSpace(net, guide, flops=(0.3, 0.9))
    uni = PruningSpace(net, flops=(0.3, 0.9), guide=guide)
    assert uni.layers == post.layers == ("0", "2")
    pops = [
        evaluate(
            net,
            space.sample(6, seed=0),
            data,
            name=name,
            finetune_epochs=1,
            finetune_examples=64,
            batch_size=16,
        )
        for name, space in (("posterior", post), ("uniform", uni))
    ]
    for pop, space in zip(pops, (post, uni), strict=True):
        assert len(pop) == 6 and pop.counts.shape == (6, 2)
        # FLOPs/params counted on the extracted networks = the cost model of the space
        costs = space.costs(pop.counts)
        np.testing.assert_allclose(pop.flops, costs["flops"], rtol=1e-12)
        np.testing.assert_allclose(pop.params, costs["params"], rtol=1e-12)
        assert ((pop.flops_frac >= 0.3 - 1e-9) & (pop.flops_frac <= 0.9 + 1e-9)).all()
        assert ((pop.errors >= 0) & (pop.errors <= 1)).all()
        assert not np.array_equal(pop.errors, pop.errors_inherited)  # the fine-tune ran
        assert pop.records()[0]["space"] == pop.name and "ratio" in pop.records()[0]
        finding = ratio_finding(pop, top=0.5, permutations=200)
        assert 0 < finding["p_value"] <= 1 and finding["n_best"] == 3
    # the sampled network is untouched
    assert all(torch.equal(before[k], v) for k, v in net.module.state_dict().items())
    assert set(dominance(pops[0].errors, pops[1].errors)) >= {"dominates", "area"}
    png = plot_edfs(pops, tmp_path / "edf.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_subnetworks_inherit_the_fitted_weights(data):
    net, guide = gated_mlp(data, epochs=1)
    with torch.no_grad():  # the module's weights are not the guide's point estimate now
        net.module[0].weight.add_(1.0)
    point = guide.point()
    assert not torch.equal(point["0.weight"], net.module[0].weight)  # the test can fail
    uni = PruningSpace(net, widths=[1.0], guide=guide)  # only the dense network
    pop = evaluate(net, uni.sample(2), data)
    dense = copy.deepcopy(net.module)
    with torch.no_grad():
        dense[0].weight.copy_(point["0.weight"])
        dense[2].weight.copy_(point["2.weight"])
        dense_err = float((dense(data.val.x).argmax(-1) != data.val.y).float().mean())
    assert pop.errors.tolist() == pytest.approx([dense_err] * 2)
    assert pop.errors.tolist() == pop.errors_inherited.tolist()
    assert pop.flops_frac.tolist() == pytest.approx([1.0, 1.0])


def test_posterior_subnetworks_carry_the_point_estimate(fitted):
    net, guide = fitted
    keep = PosteriorSpace(net, guide).sample(1)[0]
    assert torch.equal(keep["2"].values["weight"], guide.point()["2.weight"])


def test_a_bayesian_net_without_its_guide_is_refused(fitted):
    net, _ = fitted
    with pytest.raises(ValueError, match="guide is needed"):
        PruningSpace(net)


def test_bad_evaluate_arguments_are_named(fitted, data):
    net, guide = fitted
    keep = PruningSpace(net, guide=guide).sample(1)
    with pytest.raises(ValueError, match="population is empty"):
        evaluate(net, [], data)
    with pytest.raises(ValueError, match="finetune_epochs"):
        evaluate(net, keep, data, finetune_epochs=-1)
    with pytest.raises(ValueError, match="'test' split"):
        evaluate(net, keep, data, split="test")
