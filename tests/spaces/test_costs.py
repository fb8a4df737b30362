"""The cost model prices a subnetwork exactly as counting its extracted network does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from bayesprune.metrics import count_flops, count_parameters
from bayesprune.pruning import KeepSet, extract
from bayesprune.spaces import CostModel
from bayesprune.zoo import build


class TwoConv(nn.Module):
    """conv → BN → conv → flatten → Linear → Linear: BN coupling and flatten slices."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 5, 3, bias=False)
        self.fc = nn.Linear(5 * 2 * 2, 7)
        self.out = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.bn(self.c1(x)))))
        return self.out(torch.relu(self.fc(h.flatten(1))))


CASES = {
    "mlp": (
        lambda: nn.Sequential(
            nn.Linear(5, 9), nn.ReLU(), nn.Linear(9, 4), nn.ReLU(), nn.Linear(4, 2)
        ),
        ["0", "2"],
        (5,),
    ),
    "conv-bn-flatten": (TwoConv, ["c1", "c2", "fc"], (2, 6, 6)),
    "lenet5": (lambda: build("lenet5"), ["conv1", "conv2", "fc1"], (1, 28, 28)),
}


@pytest.mark.parametrize("case", CASES)
def test_costs_equal_counts_of_extracted_networks(case):
    make, layers, shape = CASES[case]
    net = make()
    x = torch.randn(1, *shape)
    cm = CostModel(net, layers, x)
    assert cm.dense_macs == count_flops(net, x)["macs"]
    rng = np.random.default_rng(0)
    counts = np.array([[int(rng.integers(1, n + 1)) for n in cm.n_units] for _ in range(4)])
    counts[0] = cm.n_units  # the dense network itself
    counts[1] = 1
    for row in counts:
        keep = {
            name: KeepSet(units=torch.as_tensor(rng.choice(n, k, replace=False)), n_units=n)
            for name, n, k in zip(layers, cm.n_units.tolist(), row.tolist(), strict=True)
        }
        small = extract(net, keep, example_input=x)
        assert cm.macs(row[None])[0] == pytest.approx(count_flops(small, x)["macs"], rel=1e-12)
        assert cm.flops(row[None])[0] == pytest.approx(count_flops(small, x)["flops"], rel=1e-12)
        assert cm.params(row[None])[0] == pytest.approx(
            count_parameters(small)["params"], rel=1e-12
        )


def test_layers_that_are_not_conv_or_linear_are_refused():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="layers: '1'"):
        CostModel(net, ["1"], torch.zeros(1, 3))
    with pytest.raises(ValueError, match="counts must have shape"):
        CostModel(net, ["0"], torch.zeros(1, 3)).macs(np.array([1, 2]))
