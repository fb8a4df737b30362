import json

import pytest
import torch
import torch.fx

from bayesprune.zoo import LeNet5Caffe, LeNet300100, from_config
from tests.helpers import n_params

# (class, kwargs, parameter count, {layer: (in, out)})
TABLE = [
    (
        LeNet300100,
        {},
        266_610,
        {"fc1": (784, 300), "fc2": (300, 100), "fc3": (100, 10)},
    ),
    (
        LeNet300100,
        {"width": 0.5, "n_classes": 3},
        784 * 150 + 150 + 150 * 50 + 50 + 50 * 3 + 3,
        {"fc1": (784, 150), "fc2": (150, 50), "fc3": (50, 3)},
    ),
    (
        LeNet300100,
        {"hidden": (7, 5), "in_features": 20},
        20 * 7 + 7 + 7 * 5 + 5 + 5 * 10 + 10,
        {"fc1": (20, 7), "fc2": (7, 5), "fc3": (5, 10)},
    ),
    (
        LeNet5Caffe,
        {},
        431_080,
        {"conv1": (1, 20), "conv2": (20, 50), "fc1": (800, 500), "fc2": (500, 10)},
    ),
    (
        LeNet5Caffe,
        {"width": 2.0},
        40 * 25 + 40 + 40 * 100 * 25 + 100 + 1600 * 1000 + 1000 + 1000 * 10 + 10,
        {"conv1": (1, 40), "conv2": (40, 100), "fc1": (1600, 1000), "fc2": (1000, 10)},
    ),
    (
        LeNet5Caffe,
        {"in_channels": 3, "input_size": 32},
        3 * 20 * 25 + 20 + 25_050 + 1250 * 500 + 500 + 5010,
        {"conv1": (3, 20), "conv2": (20, 50), "fc1": (1250, 500), "fc2": (500, 10)},
    ),
    (
        LeNet5Caffe,
        {"channels": (4, 6, 8), "input_size": 16},
        4 * 25 + 4 + 4 * 6 * 25 + 6 + 6 * 8 + 8 + 8 * 10 + 10,
        {"conv1": (1, 4), "conv2": (4, 6), "fc1": (6, 8), "fc2": (8, 10)},
    ),
]
IDS = [f"{cls.__name__}-{kw}" for cls, kw, _, _ in TABLE]


def sizes(module: torch.nn.Module) -> tuple[int, int]:
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels


@pytest.mark.parametrize(("cls", "kwargs", "count", "layers"), TABLE, ids=IDS)
def test_layers_and_parameter_count(cls, kwargs, count, layers):
    net = cls(**kwargs)
    assert n_params(net) == count
    named = {name: sizes(m) for name, m in net.named_children()}
    assert named == layers


@pytest.mark.parametrize(("cls", "kwargs", "count", "layers"), TABLE, ids=IDS)
def test_forward_shape(cls, kwargs, count, layers):
    net = cls(**kwargs)
    out = net(net.example_input(3))
    n_classes = kwargs.get("n_classes", 10)
    assert out.shape == (3, n_classes)


def test_lenet300_accepts_images_and_vectors():
    net = LeNet300100()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(net(x), net(x.reshape(2, 784)))


def test_example_input_shapes():
    assert LeNet300100().example_input().shape == (1, 784)
    assert LeNet5Caffe().example_input(4).shape == (4, 1, 28, 28)
    assert LeNet5Caffe(in_channels=3, input_size=32).example_input().shape == (1, 3, 32, 32)


def test_example_input_follows_parameter_dtype():
    net = LeNet5Caffe().double()
    x = net.example_input(2)
    assert x.dtype == torch.float64 and not x.any()


def test_width_never_gives_empty_layers():
    net = LeNet5Caffe(width=0.001)
    assert (net.conv1.out_channels, net.conv2.out_channels, net.fc1.out_features) == (1, 1, 1)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (LeNet300100, {"width": 0}, "width"),
        (LeNet300100, {"n_classes": 0}, "n_classes"),
        (LeNet300100, {"hidden": (3,)}, "hidden"),
        (LeNet300100, {"hidden": (3, 0)}, "hidden"),
        (LeNet5Caffe, {"input_size": 15}, "input_size"),
        (LeNet5Caffe, {"width": -1.0}, "width"),
        (LeNet5Caffe, {"channels": (1, 2)}, "channels"),
    ],
)
def test_rejects_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_config_records_constructor_arguments():
    assert LeNet5Caffe(width=0.5).config == {
        "name": "lenet5",
        "in_channels": 1,
        "n_classes": 10,
        "width": 0.5,
        "input_size": 28,
    }
    assert LeNet300100(hidden=(3, 2)).config["hidden"] == [3, 2]


@pytest.mark.parametrize(("cls", "kwargs", "count", "layers"), TABLE, ids=IDS)
def test_from_config_round_trip_through_json(cls, kwargs, count, layers):
    net = cls(**kwargs)
    config = json.loads(json.dumps(net.config))
    rebuilt = from_config(config)
    assert type(rebuilt) is cls
    assert rebuilt.config == net.config
    rebuilt.load_state_dict(net.state_dict())  # strict: same names and shapes
    x = net.example_input(2).normal_()
    torch.testing.assert_close(rebuilt(x), net(x))


@pytest.mark.parametrize("cls", [LeNet300100, LeNet5Caffe])
def test_fx_symbolic_trace(cls):
    net = cls()
    traced = torch.fx.symbolic_trace(net)
    x = net.example_input(2).normal_()
    torch.testing.assert_close(traced(x), net(x))
    called = {n.target for n in traced.graph.nodes if n.op == "call_module"}
    assert called == {name for name, _ in net.named_children()}


def test_torch_pruning_dependency_graph():
    tp = pytest.importorskip("torch_pruning")
    net = LeNet5Caffe()
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=net.example_input())
    graph.get_pruning_group(net.conv2, tp.prune_conv_out_channels, idxs=[0, 1]).prune()
    # conv2 lost 2 of 50 filters: fc1 loses the 2 * 4 * 4 features they fed
    assert net.conv2.out_channels == 48 and net.fc1.in_features == 768
    assert net(net.example_input(2)).shape == (2, 10)
