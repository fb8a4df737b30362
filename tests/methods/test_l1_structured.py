"""L1-norm structured pruning: the right units, the output layer whole, iterative rounds
nested, masked fine-tune through fit, and extract = the masked network, smaller."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from bayesprune.methods import l1_prune, l1_unit_keep
from bayesprune.pruning import extract, masked_copy
from tests.helpers import n_params


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 8, 3)
        self.fc1 = nn.Linear(8 * 4 * 4, 10)
        self.fc2 = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_keeps_the_units_with_largest_l1_norm_and_the_output_layer_whole():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 1, 1], [-5, 0, 0], [0.1, 0, 0], [2, -2, 0]]))
    keep = l1_unit_keep(net, keep=0.5)
    assert list(keep) == ["0"] and keep["0"].units.tolist() == [1, 3]
    assert sorted(l1_unit_keep(net, keep=0.5, include_output=True)) == ["0", "2"]


def test_global_scope_ranks_mean_magnitudes_across_layers():
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.fill_(1.0)  # mean |w| 1 per unit
        net[2].weight.fill_(0.1)  # mean |w| 0.1: globally these go first
        net[2].weight[0].fill_(2.0)
    keep = l1_unit_keep(net, keep=0.5, scope="global")
    assert keep["0"].n_kept == 3 and keep["2"].units.tolist() == [0]


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_extracted_equals_masked_and_is_smaller(scope):
    torch.manual_seed(0)
    net = ConvNet()
    keep = l1_prune(net, keep=0.5, scope=scope)
    x = torch.randn(5, 1, 8, 8)
    small = extract(net, keep, example_input=x[:1])
    torch.testing.assert_close(small(x), net(x))
    torch.testing.assert_close(small(x), masked_copy(net, keep, example_input=x[:1])(x))
    assert n_params(small) < n_params(net)
    assert small.fc2.out_features == 3  # the output layer stays whole


def test_iterative_rounds_are_nested_and_fine_tuned_through_fit():
    from bayesprune.data import synthetic_classification

    data = synthetic_classification(64, 16, 0, input_shape=(1, 8, 8), n_classes=3, seed=0)
    torch.manual_seed(0)
    net = ConvNet()
    before = copy.deepcopy(net)
    first = l1_unit_keep(net, keep=0.6)
    keep = l1_prune(net, data, keep=0.36, steps=2, finetune_epochs=1, batch_size=16, lr=1e-2)
    for name, ks in keep.items():
        assert set(ks.units.tolist()) <= set(first[name].units.tolist())
        assert ks.n_kept == max(1, round(0.36 * ks.n_units))
        w = net.get_submodule(name).weight
        dropped = torch.ones(ks.n_units, dtype=torch.bool)
        dropped[ks.units] = False
        assert bool((w[dropped] == 0).all()) and bool((w[~dropped] != 0).all())
    assert not torch.equal(net.fc2.weight, before.fc2.weight)  # the fine-tune trained
    x = data.val.x
    torch.testing.assert_close(extract(net, keep, example_input=x[:1])(x), net(x))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"keep": 0.0}, "keep"),
        ({"keep": 1.5}, "keep"),
        ({"keep": 0.5, "steps": 0}, "steps"),
        ({"keep": 0.5, "finetune_epochs": -1}, "finetune_epochs"),
        ({"keep": 0.5, "finetune_epochs": 1}, "needs data"),
        ({"keep": 0.5, "scope": "unit"}, "scope"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        l1_prune(ConvNet(), **kwargs)


def test_fine_tune_with_batchnorm_is_refused(nets, class_data):
    with pytest.raises(ValueError, match="BatchNorm"):
        l1_prune(nets["conv"](), class_data, keep=0.5, finetune_epochs=1)
