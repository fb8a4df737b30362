"""``select_layers``: which modules of a network get the prior."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bayesprune import sparsify
from bayesprune.nn import select_layers
from bayesprune.priors import DEFAULT_LAYER_TYPES, HALO


class Net(nn.Module):
    """features.{0: Conv2d, 1: ReLU, 2: Conv2d}, pool, head.{fc1: Linear, fc2: Linear}."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.ModuleDict({"fc1": nn.Linear(2, 4), "fc2": nn.Linear(4, 3)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.features(x)).flatten(1)
        return self.head["fc2"](torch.relu(self.head["fc1"](h)))


def select(layers):
    return select_layers(Net(), layers, default=DEFAULT_LAYER_TYPES)


CASES = [
    # (selector, chosen names in module order)
    (None, ["features.0", "features.2", "head.fc1", "head.fc2"]),
    (nn.Linear, ["head.fc1", "head.fc2"]),
    (nn.Conv2d, ["features.0", "features.2"]),
    ((nn.Conv2d, nn.Linear), ["features.0", "features.2", "head.fc1", "head.fc2"]),
    (nn.ReLU, ["features.1"]),
    ("head.fc2", ["head.fc2"]),
    ("features", ["features"]),
    ("head.*", ["head.fc1", "head.fc2"]),
    ("features.*", ["features.0", "features.1", "features.2"]),
    ("*fc?", ["head.fc1", "head.fc2"]),
    ("features.[02]", ["features.0", "features.2"]),
    (lambda n, m: isinstance(m, nn.Linear) and m.out_features == 4, ["head.fc1"]),
    # lists mix kinds, keep module order and drop duplicates
    (["head.fc2", nn.Conv2d], ["features.0", "features.2", "head.fc2"]),
    (["head.fc1", "head.*", nn.Linear], ["head.fc1", "head.fc2"]),
    (("head.fc2", "features.0"), ["features.0", "head.fc2"]),  # a tuple of names is a list
    ([(nn.Conv2d, nn.ReLU)], ["features.0", "features.1", "features.2"]),
    ({"head.fc1"}, ["head.fc1"]),  # any iterable of selectors
    ([lambda n, m: n.endswith("2"), "pool"], ["features.2", "pool", "head.fc2"]),
]


@pytest.mark.parametrize(("layers", "expected"), CASES, ids=[str(i) for i in range(len(CASES))])
def test_select(layers, expected):
    assert select(layers) == expected


def test_default_types_are_used_only_for_none():
    net = Net()
    assert select_layers(net, None, default=(nn.ReLU,)) == ["features.1"]
    assert select_layers(net, nn.Linear, default=(nn.ReLU,)) == ["head.fc1", "head.fc2"]


@pytest.mark.parametrize("name", ["fc1", "head.fc3", "features.9", "head.fc1.weight", "x*"])
def test_unmatched_name_raises_naming_it(name):
    with pytest.raises(ValueError, match="matches no module") as err:
        select(["head.fc2", name])
    assert repr(name) in str(err.value)
    assert "head.fc1" in str(err.value)  # lists the modules that exist


@pytest.mark.parametrize("bad", [3, 2.5, [3], ["head.fc1", 3.0], [None], b"head"])
def test_bad_selector_object_raises_type_error(bad):
    with pytest.raises(TypeError, match="layers: cannot select modules with"):
        select(bad)


@pytest.mark.parametrize(
    "layers",
    [nn.LSTM, (nn.LSTM, nn.GRU), lambda n, m: False, [], [nn.BatchNorm1d]],
    ids=["type", "types", "predicate", "empty-list", "list"],
)
def test_nothing_selected_raises(layers):
    with pytest.raises(ValueError, match="chose no module of Net"):
        select(layers)


def test_predicate_gets_names_and_modules():
    seen = []

    def pred(name, module):
        seen.append((name, type(module).__name__))
        return False

    with pytest.raises(ValueError):
        select(pred)
    assert ("features.0", "Conv2d") in seen
    assert ("head", "ModuleDict") in seen
    assert all(n for n, _ in seen)  # the root container is never offered


def test_root_module_is_selected_when_it_is_the_layer():
    lin = nn.Linear(3, 2)
    assert select_layers(lin, None, default=DEFAULT_LAYER_TYPES) == [""]
    assert select_layers(lin, nn.Linear, default=DEFAULT_LAYER_TYPES) == [""]
    with pytest.raises(ValueError, match="chose no module of Linear"):
        select_layers(lin, nn.Conv2d, default=DEFAULT_LAYER_TYPES)

    net = sparsify(lin, HALO())
    assert net.layer_names == ("",)
    assert [s.name for s in net.sites] == ["weight_scale", "weight"]
    assert [s.replaces for s in net.sites] == [None, "weight"]
    x = torch.randn(4, 3)
    values = {"weight_scale": torch.ones(2, 3), "weight": torch.zeros(2, 3)}
    torch.testing.assert_close(net.run(values, x), lin.bias.expand(4, 2))


def test_container_root_is_not_selectable():
    seq = nn.Sequential(nn.Linear(3, 2))
    assert select_layers(seq, None, default=DEFAULT_LAYER_TYPES) == ["0"]
