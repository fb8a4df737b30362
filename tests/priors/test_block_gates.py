"""BlockGates: one Bernoulli gate per residual block; a closed gate makes the block its shortcut."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import Bottleneck

from bayesprune import sparsify
from bayesprune.blocks import to_shortcut
from bayesprune.data import synthetic_classification
from bayesprune.distributions.flattening import log_normalizer
from bayesprune.guides import MAP
from bayesprune.inference import fit
from bayesprune.priors import BlockGates, from_config
from bayesprune.priors.gates import probs_key
from bayesprune.pruning import KeepSet, collapse, extract, masked_copy
from bayesprune.zoo import build
from tests.helpers import randomise_batchnorm, resnet

BLOCKS = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)]


def gates_at(net, closed: set[str]) -> dict[str, torch.Tensor]:
    return {
        s.name: torch.zeros(1) if s.layer in closed else torch.ones(1)
        for s in net.sites
        if s.role == "gate"
    }


# --- sites ---------------------------------------------------------------------------------


def test_sites_one_gate_per_block_on_its_branch_end():
    net = sparsify(resnet(), BlockGates(gamma=7.0))
    assert list(net.layer_names) == BLOCKS  # every block by default, nothing else
    assert [s.name for s in net.sites[:2]] == ["layer1.0.gate_prob", "layer1.0.gate"]
    assert net.replacing == ()  # weights stay deterministic
    for s in net.sites:
        assert s.shape == (1,) and s.meta["gamma"] == (7.0,)
    gate = net.site("layer2.0.gate")
    assert gate.role == "gate" and gate.meta["target"] == "layer2.0.bn2"
    assert gate.meta["dim"] == 1 and gate.meta["prob"] == "layer2.0.gate_prob"
    assert net.site("layer2.0.gate_prob").meta["gate"] == "layer2.0.gate"


@pytest.mark.parametrize("size", [6, 8, 16])
def test_gate_targets_stay_on_the_branch_end_batchnorm(size):
    """The branch end is a BN fed by conv2; nothing else may capture the gate (a freed
    tensor's reused id once moved layer1.0's gate onto layer1.1.bn1 at 8x8 inputs)."""
    net = sparsify(build("resnet20", width=0.25, input_size=size), BlockGates())
    assert net.gate_targets() == {f"{b}.gate": f"{b}.bn2" for b in BLOCKS}


def test_selection_by_name_and_rejection_of_non_blocks():
    net = sparsify(resnet(), BlockGates(), layers=["layer2.*"])
    assert list(net.layer_names) == ["layer2.0", "layer2.1", "layer2.2"]
    with pytest.raises(TypeError, match="'layer1.0.conv1'.*not a residual block"):
        sparsify(resnet(), BlockGates(), layers="layer1.0.conv1")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": -1.0}, "gamma must be"),
        ({"gamma": True}, "gamma must be"),
        ({"cost": "latency"}, "cost must be one of"),
        ({"init_prob": 1.5}, "init_prob must be"),
        ({"init_prob": 0.0}, "init_prob must be"),
    ],
)
def test_bad_hyper_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockGates(**kwargs)


def test_config_round_trip():
    p = BlockGates(gamma=12.0, cost="params", init_prob=0.8)
    q = from_config(p.config())
    assert type(q) is BlockGates and q.config() == p.config()
    assert p.config()["name"] == "block_gates"


# --- prices ---------------------------------------------------------------------------------


def test_flops_prices_are_branch_macs_normalised_to_mean_gamma():
    net = sparsify(resnet(), BlockGates(gamma=10.0, cost="flops"))
    price = {s.layer: s.meta["gamma"][0] for s in net.gates}
    assert sum(price.values()) / len(price) == pytest.approx(10.0)
    # branch MACs on 8x8 inputs, width 1/4: stage 1 = 2 convs 4->4 on 8x8 (+BN); the stride-2
    # block of stage 2 convolves at 4x4 (4->8, 8->8) and its 1x1 shortcut is not priced
    conv = {"layer1.0": 2 * 4 * 4 * 9 * 64, "layer2.0": (4 * 8 + 8 * 8) * 9 * 16}
    bn = {"layer1.0": 2 * 4 * 64, "layer2.0": 2 * 8 * 16}
    ratio = (conv["layer2.0"] + bn["layer2.0"]) / (conv["layer1.0"] + bn["layer1.0"])
    assert price["layer2.0"] / price["layer1.0"] == pytest.approx(ratio)
    assert price["layer1.0"] == price["layer1.1"] == price["layer1.2"]


def test_params_prices_grow_with_the_stage():
    net = sparsify(resnet(), BlockGates(gamma=3.0, cost="params"))
    price = {s.layer: s.meta["gamma"][0] for s in net.gates}
    assert price["layer1.1"] < price["layer2.1"] < price["layer3.1"]
    assert sum(price.values()) / 9 == pytest.approx(3.0)


def test_complexity_prices_need_an_example_input():
    with pytest.raises(ValueError, match="needs an example input"):
        sparsify(torchvision.models.resnet18(num_classes=3), BlockGates(cost="flops"))


def test_fused_log_prob_is_the_closed_form():
    net = sparsify(resnet(), BlockGates(gamma=5.0))
    guide = MAP(net)
    values, _ = guide.rsample()
    theta = torch.cat([values[probs_key(s.name)] for s in net.gates])
    expected = -(5.0 * theta + log_normalizer(torch.tensor(5.0))).sum()
    torch.testing.assert_close(net.log_prior(values, net.context(10)), expected)
    assert torch.allclose(theta, torch.full((9,), 0.9))


# --- a closed gate is the shortcut ----------------------------------------------------------


@pytest.mark.parametrize(
    "closed", [{"layer1.1"}, {"layer2.0"}, {"layer1.0", "layer3.0", "layer3.2"}]
)
def test_closed_gate_equals_the_block_replaced_by_its_shortcut(closed):
    module = randomise_batchnorm(resnet()).eval()
    net = sparsify(module, BlockGates())
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        gated = net.run(gates_at(net, closed), x)
        torch.testing.assert_close(net.run(gates_at(net, set()), x), module(x))
        by_hand = extract(module, {b: KeepSet(identity=True) for b in closed}).eval()
        for b in closed:
            assert type(by_hand.get_submodule(b)).__name__ == "Shortcut"
        torch.testing.assert_close(gated, by_hand(x))
        assert not torch.allclose(gated, module(x), atol=1e-3)


def test_torchvision_resnet18_blocks_are_gated():
    module = randomise_batchnorm(torchvision.models.resnet18(num_classes=5)).eval()
    x = torch.randn(2, 3, 32, 32)
    net = sparsify(module, BlockGates(), example_input=x[:1])
    assert list(net.layer_names) == [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)]
    assert net.gate_targets()["layer3.0.gate"] == "layer3.0.bn2"
    closed = {"layer2.0", "layer4.1"}
    with torch.no_grad():
        gated = net.run(gates_at(net, closed), x)
        small = extract(module, {b: KeepSet(identity=True) for b in closed}, example_input=x[:1])
        torch.testing.assert_close(gated, small.eval()(x))


class TwoBottlenecks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.blocks = nn.Sequential(Bottleneck(16, 4), Bottleneck(16, 8, stride=2, downsample=down))
        self.fc = nn.Linear(32, 3)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_torchvision_bottlenecks_gate_bn3():
    module = randomise_batchnorm(TwoBottlenecks()).eval()
    x = torch.randn(3, 1, 8, 8)
    net = sparsify(module, BlockGates(cost="mixed"), example_input=x[:1])
    assert [s.meta["target"] for s in net.gates] == ["blocks.0.bn3", "blocks.1.bn3"]
    assert isinstance(to_shortcut(module.blocks[0]).downsample, nn.Identity)
    assert to_shortcut(module.blocks[1]).downsample is module.blocks[1].downsample
    for closed in ({"blocks.0"}, {"blocks.1"}):
        with torch.no_grad():
            expected = extract(module, {b: KeepSet(identity=True) for b in closed}).eval()(x)
            torch.testing.assert_close(net.run(gates_at(net, closed), x), expected)


# --- fitting --------------------------------------------------------------------------------


def test_a_large_price_closes_block_gates_exactly():
    """64 examples, γ far above what any block is worth: the projected gate probabilities
    hit exactly 0 within a few steps, collapse makes those blocks identities and the
    extracted network reproduces the collapsed one."""
    data = synthetic_classification(64, 16, 0, input_shape=(3, 8, 8), n_classes=3, seed=0)
    module = resnet(n_classes=3)
    net = sparsify(module, BlockGates(gamma=500.0))
    guide = MAP(net)
    fit(net, data, guide, epochs=2, batch_size=32, lr=1e-3, role_lr={"gate": 0.5}, progress=False)
    point = guide.point()
    thetas = {s.layer: float(point[probs_key(s.name)]) for s in net.gates}
    closed = {b for b, t in thetas.items() if t == 0.0}
    assert closed, thetas
    assert net.prior.units_alive(net, point) == {b: int(b not in closed) for b in BLOCKS}
    assert net.prior.kept_fraction(net, point) == pytest.approx(1 - len(closed) / 9)
    keep = collapse(net, guide)
    assert {n for n, k in keep.items() if k.identity} == closed
    assert all(k.n_units == 1 and k.n_kept == int(not k.identity) for k in keep.values())
    x = data.val.x
    small = extract(net, keep).eval()
    torch.testing.assert_close(small(x), masked_copy(net, keep).eval()(x))
    torch.testing.assert_close(small(x), net.predict(point, x))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in module.parameters())
