"""Where a gate acts and what pruning a gated network gives: a gate multiplies its layer's
output -- or the output of a BatchNorm fed directly by that layer -- so a closed gate zeroes
the unit exactly, and the hard-gated network equals ``extract(net, collapse(net, guide))``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from bayesprune import collapse, extract, sparsify
from bayesprune.guides import MAP
from bayesprune.guides.base import key
from bayesprune.priors import UnitGates
from bayesprune.pruning.extract import masked_copy
from bayesprune.zoo import build
from tests.helpers import mlp, mlp_bn, randomise_batchnorm


class ConvBN(nn.Module):
    """conv → BN → ReLU → conv → BN → ReLU → pool → linear, on (2, 8, 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.bn2 = nn.BatchNorm2d(5)
        self.fc = nn.Linear(5 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(nn.functional.max_pool2d(x, 2).flatten(1))


class ConvReluBN(nn.Module):
    """The BatchNorm sees the conv's output only after a ReLU: the gate stays on the conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(torch.relu(self.conv(x))).flatten(1))


# --- gate placement ---------------------------------------------------------------------


def test_gate_moves_onto_the_batchnorm_that_consumes_the_layer():
    net = sparsify(ConvBN(), UnitGates())
    assert net.layer_names == ("conv1", "conv2")
    targets = net.gate_targets(torch.randn(2, 2, 8, 8))
    assert targets == {"conv1.gate": "bn1", "conv2.gate": "bn2"}
    assert net.gate_targets() is targets  # traced once, cached
    assert sparsify(mlp_bn(), UnitGates()).gate_targets(torch.randn(2, 5)) == {
        "0.gate": "1",
        "3.gate": "3",
    }


def test_gate_stays_on_the_layer_otherwise():
    net = sparsify(ConvReluBN(), UnitGates())
    assert net.gate_targets(torch.randn(1, 1, 6, 6)) == {"conv.gate": "conv"}
    lenet = sparsify(build("lenet5", width=0.25), UnitGates())
    assert lenet.gate_targets() == {"conv1.gate": "conv1", "conv2.gate": "conv2", "fc1.gate": "fc1"}
    # no input to trace (and none recorded): the layers themselves, not cached
    bare = sparsify(ConvBN(), UnitGates())
    assert bare.gate_targets() == {"conv1.gate": "conv1", "conv2.gate": "conv2"}
    assert bare._gate_targets is None


def zero_after(module: nn.Module, name: str, closed: list[int], dim: int):
    """A forward hook on ``module.<name>`` zeroing the given channels of its output."""

    def hook(mod, inputs, out):
        out = out.clone()
        out.index_fill_(dim, torch.tensor(closed), 0.0)
        return out

    return module.get_submodule(name).register_forward_hook(hook)


@pytest.mark.parametrize("train", [True, False])
def test_closed_gates_zero_their_units_after_batchnorm(train):
    module = ConvBN()
    randomise_batchnorm(module)
    reference = copy.deepcopy(module)
    net = sparsify(module, UnitGates())
    module.train(train)
    reference.train(train)
    x = torch.randn(4, 2, 8, 8)
    values = MAP(net).point()
    # all gates open: the user's network
    torch.testing.assert_close(net.run(values, x), copy.deepcopy(reference)(x))
    values["conv1.gate"] = torch.tensor([1.0, 0.0, 1.0, 0.0])
    values["conv2.gate"] = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0])
    handles = [zero_after(reference, "bn1", [1, 3], 1), zero_after(reference, "bn2", [0, 4], 1)]
    want = reference(x)
    for h in handles:
        h.remove()
    torch.testing.assert_close(net.run(values, x), want)


def test_closed_gates_zero_linear_units():
    module = mlp_bn().eval()
    randomise_batchnorm(module)
    reference = copy.deepcopy(module)
    net = sparsify(module, UnitGates())
    x = torch.randn(3, 5)
    values = MAP(net).point()
    values["0.gate"] = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    values["3.gate"] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    handles = [zero_after(reference, "1", [0, 3], 1), zero_after(reference, "3", [1], 1)]
    torch.testing.assert_close(net.run(values, x), reference(x))
    for h in handles:
        h.remove()


# --- collapse and extract ----------------------------------------------------------------------


def lenet() -> nn.Module:
    return build("lenet5", width=0.25)


CASES = {
    "lenet5": (lenet, (1, 28, 28)),
    "mlp": (lambda: mlp(5, 8, 6, 2), (5,)),
    "mlp-bn": (mlp_bn, (5,)),
    "conv-bn": (ConvBN, (2, 8, 8)),
}


@pytest.mark.parametrize("case", CASES)
def test_hard_gated_network_equals_the_extracted_one(case):
    make, shape = CASES[case]
    torch.manual_seed(12)
    module = make()
    randomise_batchnorm(module)
    x = torch.randn(6, *shape)
    net = sparsify(module, UnitGates(gamma=1.0), example_input=x[:2])
    guide = MAP(net)
    dropped = {}
    with torch.no_grad():  # θ: some units at 0, some at 1, some in between either side of 1/2
        for s in net.gates:
            n = s.shape[0]
            theta = torch.tensor([1.0, 0.0, 0.7, 0.3, 1.0, 0.0] * n)[:n]
            theta[0] = 1.0
            guide.gate_probs[key(s.name)].copy_(theta)
            dropped[s.layer] = int((theta <= 0.5).sum())
    collapsed = net.predict(guide.point(), x)  # eval mode, gates at their medians
    keep = collapse(net, guide)
    small = extract(net, keep)
    small.eval()
    with torch.no_grad():
        out = small(x)
    torch.testing.assert_close(out, collapsed, rtol=1e-5, atol=1e-5)
    masked = masked_copy(net, keep).eval()
    with torch.no_grad():
        torch.testing.assert_close(masked(x), collapsed, rtol=1e-5, atol=1e-5)
    # the dropped units are physically gone
    for name, n_dropped in dropped.items():
        before = net.module.get_submodule(name).weight.shape[0]
        assert small.get_submodule(name).weight.shape[0] == before - n_dropped
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("bn", [False, True])
def test_a_layer_with_every_gate_closed_keeps_one_unit_at_zero(bn):
    """``min_units=1`` keeps one unit of a layer whose gates are all closed; the collapsed
    model has it at 0, and so must the extracted network (not switched back on)."""
    torch.manual_seed(0)
    module = mlp_bn() if bn else nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    if bn:
        randomise_batchnorm(module)
    module.eval()
    net = sparsify(module, UnitGates(), layers="0", example_input=torch.randn(2, 5))
    guide = MAP(net)
    with torch.no_grad():
        guide.gate_probs[key("0.gate")].zero_()
    keep = collapse(net, guide)
    assert keep["0"].n_kept == 1 and keep["0"].zeroed is not None
    assert keep["0"].zeroed.tolist() == keep["0"].units.tolist()
    x = torch.randn(7, 5)
    expected = net.predict(guide.point(), x)  # the hard-gated network: layer 0 all off
    small = extract(net, keep)
    assert small[0].out_features == 1
    with torch.no_grad():
        torch.testing.assert_close(small(x), expected)
        torch.testing.assert_close(masked_copy(net, keep)(x), expected)
