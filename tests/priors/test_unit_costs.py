"""What removing one unit saves, against hand counts: the unit's weight row and bias, the
BatchNorm channel after it, and its slice of every consumer (including flatten→Linear)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bayesprune.priors.unit_costs import complexity_prices, unit_costs
from bayesprune.zoo import build


class ConvFlat(nn.Module):
    """conv(2→3, 3x3) → BN → ReLU → flatten (3·3·3 = 27) → Linear(27→4), on (2, 5, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(27, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def check(costs, name, n_units, params, flops):
    c = costs[name]
    assert torch.equal(c["params"], torch.full((n_units,), float(params)))
    assert torch.equal(c["flops"], torch.full((n_units,), float(flops)))


@pytest.mark.parametrize("batch", [1, 3])
def test_mlp(batch):
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    costs = unit_costs(net, ["0", "2"], torch.zeros(batch, 4))
    # unit of "0": 4 weights + 1 bias + 5 weights of "2"; MACs 4 (own) + 5 (consumer)
    check(costs, "0", 6, params=4 + 1 + 5, flops=4 + 5)
    # unit of "2": 6 weights + 1 bias + 2 weights of the output layer; MACs 6 + 2
    check(costs, "2", 5, params=6 + 1 + 2, flops=6 + 2)
    # means over all 11 gated units of both layers (MACs per example, whatever the batch)
    assert costs["0"]["params_mean"] == pytest.approx((6 * 10 + 5 * 9) / 11)
    assert costs["2"]["flops_mean"] == pytest.approx((6 * 9 + 5 * 8) / 11)


def test_conv_batchnorm_flatten_linear():
    net = ConvFlat()
    was = net.training
    costs = unit_costs(net, ["conv"], torch.zeros(1, 2, 5, 5))
    assert net.training == was
    # params: 2·3·3 weights + 1 bias + BN weight and bias (2) + 9 flattened inputs × 4 of fc
    # MACs:   18 per output position × 9 positions + BN 9 elements + 9 × 4 of fc
    check(costs, "conv", 3, params=18 + 1 + 2 + 36, flops=18 * 9 + 9 + 36)
    assert costs["conv"]["params_mean"] == 57.0 and costs["conv"]["flops_mean"] == 207.0


def test_conv_without_bias_or_batchnorm():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.ReLU(), nn.Conv2d(4, 2, 1))
    costs = unit_costs(net, ["0"], torch.zeros(1, 1, 6, 6))
    # own 9 weights, consumer 2 weights (1x1 conv); MACs 9·16 + 2·16 on the 4x4 map
    check(costs, "0", 4, params=9 + 2, flops=9 * 16 + 2 * 16)


def test_lenet5_quarter_width():
    net = build("lenet5", width=0.25)  # conv1 5, conv2 12 (4x4 after pooling → 192), fc1 125
    costs = unit_costs(net, ["conv1", "conv2", "fc1"], net.example_input())
    check(costs, "conv1", 5, params=25 + 1 + 12 * 25, flops=25 * 24 * 24 + 12 * 25 * 8 * 8)
    check(costs, "conv2", 12, params=5 * 25 + 1 + 16 * 125, flops=5 * 25 * 8 * 8 + 16 * 125)
    check(costs, "fc1", 125, params=192 + 1 + 10, flops=192 + 10)
    n = 5 + 12 + 125
    assert costs["fc1"]["params_mean"] == pytest.approx((5 * 326 + 12 * 2126 + 125 * 203) / n)
    assert costs["fc1"]["flops_mean"] == pytest.approx((5 * 33600 + 12 * 10000 + 125 * 202) / n)


def test_complexity_prices_average_gamma_and_fall_back_to_uniform():
    costs = {
        "a": {"flops": torch.tensor([1.0, 3.0]), "params": torch.zeros(2)},
        "b": {"flops": torch.tensor([8.0]), "params": torch.zeros(1)},
    }
    flops = complexity_prices(6.0, "flops", costs)
    assert torch.cat(list(flops.values())).mean() == pytest.approx(6.0)
    assert flops["a"].tolist() == pytest.approx([1.5, 4.5])
    # no unit saves a parameter: every unit is priced alike, at gamma
    assert {n: p.tolist() for n, p in complexity_prices(6.0, "params", costs).items()} == {
        "a": [6.0, 6.0],
        "b": [6.0],
    }
    mixed = complexity_prices(6.0, "mixed", costs)
    assert mixed["b"].tolist() == pytest.approx([0.5 * (flops["b"].item() + 6.0)])
    with pytest.raises(ValueError, match="cost"):
        complexity_prices(6.0, "uniform", costs)
