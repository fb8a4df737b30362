"""Post-activation unit gates: same network as pre-activation for hard gates under ReLU,
a straight-through slope that a closed gate still feels, the Pyro model, a fit with live
removal, extraction, and refusals where there is no single post-activation point."""

import pyro
import pytest
import torch
import torch.nn as nn

from bayesprune import collapse, extract, fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.guides import MAP
from bayesprune.nn.gate_consumers import gate_consumers
from bayesprune.priors import UnitGates
from bayesprune.zoo import build
from tests.helpers import mlp

PLACES = ("pre-activation", "post-activation")


def lenet5_pair(seed: int = 0):
    """LeNet-5 (width 0.5) under unit gates at both places, with the same weights."""
    torch.manual_seed(seed)
    module = build("lenet5", width=0.5)
    nets = {}
    for place in PLACES:
        copy = build("lenet5", width=0.5)
        copy.load_state_dict(module.state_dict())
        nets[place] = sparsify(copy, UnitGates(place=place))
    return nets


def hard_values(net, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    values = MAP(net).point()
    for s in net.gates:
        values[s.name] = (torch.rand(s.shape, generator=gen) < 0.5).float()
    return values


def test_the_readers_of_each_gated_layer():
    net = lenet5_pair()["post-activation"]
    # conv2's 25 filters are read by fc1 over 4 x 4 positions each (flattened)
    assert net.gate_readers() == {
        "conv1": [("conv2", 1)],
        "conv2": [("fc1", 16)],
        "fc1": [("fc2", 1)],
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_gates_give_the_same_network_at_both_places(seed):
    nets = lenet5_pair(seed)
    x = torch.randn(4, 1, 28, 28)
    values = hard_values(nets["pre-activation"], seed)
    outs = [nets[p].run(values, x) for p in PLACES]
    torch.testing.assert_close(outs[0], outs[1])


def test_a_closed_gate_feels_its_unit_only_after_the_activation():
    nets = lenet5_pair()
    x = torch.randn(8, 1, 28, 28)
    slopes = {}
    for place, net in nets.items():
        values = hard_values(net, 0)
        z = values["conv1.gate"].clone().zero_().requires_grad_(True)  # every conv1 gate shut
        values["conv1.gate"] = z
        net.run(values, x).square().sum().backward()
        slopes[place] = z.grad
    assert torch.count_nonzero(slopes["pre-activation"]) == 0  # relu'(0) = 0
    assert torch.count_nonzero(slopes["post-activation"]) == z.numel()


def test_the_pyro_model_runs_with_post_activation_gates():
    net = lenet5_pair()["post-activation"]
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    guide = MAP(net)
    loss = pyro.infer.Trace_ELBO().differentiable_loss(net.model, guide, x, y, n_data=100)
    assert torch.isfinite(loss)


def test_a_fit_with_live_removal_extracts_the_collapsed_model():
    data = synthetic_classification(96, 32, 32, input_shape=(1, 28, 28), n_classes=10, seed=0)
    torch.manual_seed(0)
    net = sparsify(build("lenet5", width=0.5), UnitGates(8.0, place="post-activation"))
    guide = MAP(net)
    fit(net, data, guide, epochs=3, batch_size=16, role_lr={"gate": 0.2}, remove_dead=True,
        progress=False)  # fmt: skip
    assert sum(s.numel for s in net.gates) < 10 + 25 + 250  # units were cut out live
    keep = collapse(net, guide)
    small = extract(net, keep).eval()
    x = data.test.x
    torch.testing.assert_close(small(x), net.predict(guide.point(), x), atol=1e-4, rtol=1e-4)


def test_refused_where_units_are_coupled_or_not_read_by_a_plain_layer():
    resnet = build("resnet20", width=0.25, in_channels=1, input_size=16)
    with pytest.raises(UnsupportedError, match="coupled to the outputs"):
        gate_consumers(resnet, ["conv1"], torch.zeros(1, 1, 16, 16))
    depthwise = nn.Sequential(nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(UnsupportedError, match="layer '0' are coupled to the outputs of '2'"):
        gate_consumers(depthwise, ["0"], torch.zeros(1, 2, 5, 5))
    with pytest.raises(UnsupportedError, match="no Conv/Linear layer reads"):
        gate_consumers(mlp(3, 4), ["0"], torch.zeros(1, 3))


def test_place_is_checked_and_kept_in_the_config():
    with pytest.raises(ConfigError, match="place must be one of"):
        UnitGates(place="after")
    assert "place" not in UnitGates().config()  # the default leaves configs as they were
    assert UnitGates(place="post-activation").config()["place"] == "post-activation"
