"""predict_pruning: the Monte-Carlo forecast of what a keep-set costs, before extraction.

Exact cases: keeping everything, or removing only units whose gates are closed (θ = 0),
changes nothing; removing the one unit that carries the signal drops accuracy to the
majority-class rate; the collapsed network's point accuracy is the extracted network's.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from bayesprune import sparsify
from bayesprune.data import Dataset, Split, synthetic_classification
from bayesprune.guides import MAP, MeanField
from bayesprune.priors import HALO, UnitGates
from bayesprune.pruning import KeepSet, PruningForecast, collapse, extract, predict_pruning
from tests.helpers import mlp_bn, randomise_batchnorm, set_gates


@pytest.fixture
def gated(class_data):
    """Gates on the first two layers of a BN MLP, θ strictly inside (0, 1) except two
    closed gates, and Normal weights wide enough that draws differ."""
    module = mlp_bn((8, 6, 5, 3))
    randomise_batchnorm(module)
    net = sparsify(module, UnitGates())
    assert net.layer_names == ("0", "3")
    guide = MeanField(net, init_scale=0.1)
    set_gates(guide, {"0": [0.0, 0.9, 0.3, 0.6, 0.8, 0.7], "3": [0.95, 0.6, 0.0, 0.4, 0.9]})
    return net, guide


def accuracy_nll(module: nn.Module, split: Split) -> tuple[float, float]:
    module.eval()
    with torch.no_grad():
        logits = module(split.x)
    nll = float(F.cross_entropy(logits.double(), split.y))
    return float((logits.argmax(-1) == split.y).double().mean()), nll


def test_keeping_everything_changes_nothing(gated, class_data):
    net, guide = gated
    keep = collapse(net, guide, keep=1.0)
    assert all(k.n_kept == k.n_units for k in keep.values())
    f = predict_pruning(net, guide, keep, class_data, num_samples=8)
    assert f.accuracy_change == 0.0 and f.accuracy_change_se == 0.0 and f.nll_change == 0.0
    assert f.accuracy_full == f.accuracy_pruned
    assert f.accuracy_full_predictive == f.accuracy_pruned_predictive
    assert f.nll_full == f.nll_pruned > 0


def test_keeping_everything_changes_nothing_for_weight_masks(class_data):
    net = sparsify(mlp_bn((8, 6, 5, 3)), HALO(), layers=nn.Linear)
    guide = MeanField(net, init_scale=0.1)
    keep = collapse(net, guide, keep=1.0)
    f = predict_pruning(net, guide, keep, class_data, num_samples=4)
    assert f.accuracy_change == 0.0 and f.nll_change == 0.0


def test_removing_closed_gates_changes_nothing(gated, class_data):
    net, guide = gated
    keep = collapse(net, guide, rule="inclusion", max_risk=0.01)
    assert keep["0"].units.tolist() == [1, 2, 3, 4, 5]
    assert keep["3"].units.tolist() == [0, 1, 3, 4]
    f = predict_pruning(net, guide, keep, class_data, num_samples=8)
    assert f.accuracy_change == 0.0 and f.nll_change == 0.0
    assert f.accuracy_full == f.accuracy_pruned


def test_draws_differ_so_the_exact_zeros_are_not_trivial(gated, class_data):
    """Removing an open gate does change the forecast, and by an amount that varies per draw."""
    net, guide = gated
    keep = collapse(net, guide, rule="inclusion", max_risk=0.5)  # drops θ = 0.3, 0.4 too
    f = predict_pruning(net, guide, keep, class_data, num_samples=16)
    assert f.nll_change != 0.0
    assert f.accuracy_change_se > 0.0


@pytest.fixture
def signal_net():
    """y = 1{x₀ > 0}. Hidden unit 0 computes relu(x₀) and alone drives the logits; unit 1
    computes relu(x₁) and is ignored. Removing unit 0 leaves all-zero logits: class 0."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(400, 2, generator=g)
    y = (x[:, 0] > 0).long()
    module = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        module[0].weight.copy_(torch.eye(2))
        module[0].bias.zero_()
        module[2].weight.copy_(torch.tensor([[0.0, 0.0], [5.0, 0.0]]))
        module[2].bias.zero_()
    net = sparsify(module, UnitGates())
    guide = MeanField(net, init_scale=1e-4)
    set_gates(guide, {"0": [0.9, 1.0]})
    return net, guide, x, y


def test_removing_the_unit_that_matters_lowers_accuracy(signal_net):
    net, guide, x, y = signal_net
    keep = {"0": KeepSet(units=torch.tensor([1]), n_units=2)}
    f = predict_pruning(net, guide, keep, (x, y), num_samples=64)
    majority = float((y == 0).double().mean())
    assert f.accuracy_pruned == pytest.approx(majority, abs=1e-12)  # logits all 0: class 0
    assert f.accuracy_point == pytest.approx(majority, abs=1e-12)
    # the gate of unit 0 is open in ~90% of the draws, and then the net is ~always right
    assert f.accuracy_full > 0.9
    assert f.accuracy_change < -0.3
    assert f.accuracy_change_se > 0
    assert f.accuracy_change == pytest.approx(f.accuracy_pruned - f.accuracy_full, abs=1e-12)
    assert f.nll_change > 0 and f.nll_pruned == pytest.approx(math.log(2), abs=1e-12)
    assert f.split == "given" and f.n_examples == 400 and f.num_samples == 64


@pytest.mark.parametrize("how", ["threshold", "fraction"])
def test_point_accuracy_is_the_extracted_networks(gated, class_data, how):
    """``fraction`` keeps some units with θ < 0.5: the collapsed network has every kept
    gate on, as the extracted network (which has no gates) does."""
    net, guide = gated
    keep = collapse(net, guide) if how == "threshold" else collapse(net, guide, keep=0.8)
    x0 = class_data.val.x[:4]
    f = predict_pruning(net, guide, keep, class_data, num_samples=2, example_input=x0)
    small = extract(net, keep, example_input=x0)
    assert sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in net.module.parameters()
    )
    acc, nll = accuracy_nll(small, class_data.val)
    assert f.accuracy_point == acc
    assert f.nll_point == pytest.approx(nll, rel=1e-5)


def test_under_map_the_pruned_draws_are_the_collapsed_network(class_data):
    """MAP + per-unit HALO, no gates: every draw is the point, so the pruned predictive is
    the collapsed network -- including the zeroed biases and BatchNorm of dropped units."""
    module = mlp_bn((8, 6, 5, 3))
    randomise_batchnorm(module)
    net = sparsify(module, HALO(per="unit"), layers=["0", "3"])
    guide = MAP(net)
    keep = collapse(net, guide, keep=0.5)
    assert 0 < keep["0"].n_kept < 6
    x0 = class_data.val.x[:4]
    f = predict_pruning(net, guide, keep, class_data, num_samples=2, example_input=x0)
    assert f.accuracy_pruned == f.accuracy_point
    assert f.nll_pruned == pytest.approx(f.nll_point, rel=1e-6)
    acc, _ = accuracy_nll(extract(net, keep, example_input=x0), class_data.val)
    assert f.accuracy_point == acc
    assert f.accuracy_change_se == 0.0  # no randomness at all under MAP without gates


def test_reproducible_and_the_global_rng_is_untouched(gated, class_data):
    net, guide = gated
    keep = collapse(net, guide)
    state = torch.get_rng_state()
    a = predict_pruning(net, guide, keep, class_data, num_samples=4, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    b = predict_pruning(net, guide, keep, class_data, num_samples=4, seed=1)
    c = predict_pruning(net, guide, keep, class_data, num_samples=4, seed=2)
    assert a == b
    assert a.nll_full != c.nll_full


def test_the_network_is_untouched(gated, class_data):
    net, guide = gated
    before = {k: v.clone() for k, v in net.module.state_dict().items()}
    predict_pruning(net, guide, collapse(net, guide), class_data, num_samples=2)
    after = net.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert net.module.training  # not left in eval mode


def test_batch_size_does_not_change_the_forecast(gated, class_data):
    net, guide = gated
    keep = collapse(net, guide)
    a = predict_pruning(net, guide, keep, class_data, num_samples=3, batch_size=7)
    b = predict_pruning(net, guide, keep, class_data, num_samples=3)
    assert a.accuracy_full == b.accuracy_full and a.accuracy_pruned == b.accuracy_pruned
    assert a.nll_full == pytest.approx(b.nll_full, rel=1e-6)


def test_data_forms(gated, class_data):
    net, guide = gated
    keep = collapse(net, guide)
    val = class_data.val
    by_pair = predict_pruning(net, guide, keep, (val.x, val.y), num_samples=2)
    by_split = predict_pruning(net, guide, keep, val, num_samples=2)
    by_dataset = predict_pruning(net, guide, keep, class_data, num_samples=2)
    assert by_dataset.split == "val" and by_pair.split == by_split.split == "given"
    assert by_pair.accuracy_full == by_split.accuracy_full == by_dataset.accuracy_full
    test_only = Dataset(train=class_data.train, test=val)
    assert predict_pruning(net, guide, keep, test_only, num_samples=2).split == "test"
    with pytest.raises(ValueError, match="neither a val nor a test"):
        predict_pruning(net, guide, keep, Dataset(train=class_data.train), num_samples=2)
    with pytest.raises(TypeError, match="data must be"):
        predict_pruning(net, guide, keep, val.x, num_samples=2)
    with pytest.raises(ValueError, match="inputs but"):
        predict_pruning(net, guide, keep, (val.x, val.y[:3]), num_samples=2)


@pytest.mark.parametrize(
    "kwargs, culprit",
    [
        ({"num_samples": 1}, "num_samples"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 2.5}, "num_samples"),
        ({"num_samples": True}, "num_samples"),
        ({"batch_size": 0}, "batch_size"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_invalid_arguments(gated, class_data, kwargs, culprit):
    net, guide = gated
    with pytest.raises(ValueError, match=culprit):
        predict_pruning(net, guide, collapse(net, guide), class_data, **kwargs)


def test_wrong_types_and_regression(gated, class_data):
    net, guide = gated
    keep = collapse(net, guide)
    with pytest.raises(TypeError, match="keep"):
        predict_pruning(net, guide, [keep["0"]], class_data)
    with pytest.raises(TypeError, match="guide"):
        predict_pruning(net, None, keep, class_data)
    reg = sparsify(nn.Linear(8, 1), HALO(), layers=nn.Linear, likelihood="gaussian")
    data = synthetic_classification(8, 8, 0, input_shape=(8,), n_classes=2, seed=0)
    with pytest.raises(ValueError, match="Categorical"):
        predict_pruning(reg, MAP(reg), {}, data)


def test_forecast_as_dict(gated, class_data):
    net, guide = gated
    f = predict_pruning(net, guide, collapse(net, guide), class_data, num_samples=2)
    assert isinstance(f, PruningForecast)
    d = f.as_dict()
    assert d["accuracy_change"] == f.accuracy_change and d["split"] == "val"
