"""``sparsify``: the user's module survives; unsupported or repeated use is refused."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from bayesprune import BayesianNet, sparsify
from bayesprune.nn import Categorical, Gaussian
from bayesprune.priors import HALO


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.fc = nn.Linear(5, 2)


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
        self.classifier = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def test_module_is_kept_not_copied_and_names_survive():
    module = ConvBN()
    before_names = [n for n, _ in module.named_modules()]
    before_state = {k: v.clone() for k, v in module.state_dict().items()}
    net = sparsify(module, HALO())
    assert net.module is module
    assert [n for n, _ in net.module.named_modules()] == before_names
    assert net.layer_names == ("features.0", "classifier")
    assert [s.name for s in net.sites] == [
        "features.0.weight_scale",
        "features.0.weight",
        "classifier.weight_scale",
        "classifier.weight",
    ]
    assert all(s.layer in net.layer_names for s in net.sites)
    # the module's parameters and buffers are untouched, and the net's state is the module's
    for k, v in module.state_dict().items():
        assert torch.equal(v, before_state[k]), k
    assert sorted(net.state_dict()) == sorted(f"module.{k}" for k in before_state)
    # still an ordinary module: its own forward works
    assert module(torch.randn(2, 1, 6, 6)).shape == (2, 3)


def test_site_shapes_follow_the_layers():
    net = sparsify(ConvBN(), HALO(per="unit"), layers=(nn.Conv2d, nn.Linear))
    shapes = {s.name: s.shape for s in net.sites}
    assert shapes == {
        "features.0.weight_scale": (2,),
        "features.0.weight": (2, 1, 3, 3),
        "classifier.weight_scale": (3,),
        "classifier.weight": (3, 32),
    }
    assert [s.replaces for s in net.replacing] == ["features.0.weight", "classifier.weight"]


@pytest.mark.parametrize(
    ("module", "layers", "layer_name", "layer_type"),
    [
        (Recurrent(), "lstm", "lstm", "LSTM"),
        (Recurrent(), nn.LSTM, "lstm", "LSTM"),
        (Recurrent(), ["fc", "lstm"], "lstm", "LSTM"),
        (ConvBN(), "features.1", "features.1", "BatchNorm2d"),
        (ConvBN(), nn.BatchNorm2d, "features.1", "BatchNorm2d"),
        (ConvBN(), lambda n, m: n == "features.2", "features.2", "ReLU"),
    ],
)
def test_unsupported_layer_chosen_explicitly_raises_naming_it(
    module, layers, layer_name, layer_type
):
    with pytest.raises(TypeError, match="HALO cannot be put on layer") as err:
        sparsify(module, HALO(), layers=layers)
    assert repr(layer_name) in str(err.value)
    assert layer_type in str(err.value)


def test_default_selection_skips_unsupported_layers():
    net = sparsify(Recurrent(), HALO())
    assert net.layer_names == ("fc",)


def test_already_sparsified_is_refused():
    net = sparsify(nn.Sequential(nn.Linear(3, 2)), HALO())
    with pytest.raises(TypeError, match="already a BayesianNet"):
        sparsify(net, HALO())
    # its .module can be sparsified again (a new model over the same network)
    again = sparsify(net.module, HALO(per="unit"), layers=(nn.Conv2d, nn.Linear))
    assert isinstance(again, BayesianNet)
    assert again.module is net.module


@pytest.mark.parametrize("bad", [None, "net", torch.zeros(3), lambda x: x])
def test_non_module_is_refused(bad):
    with pytest.raises(TypeError, match="expected an nn.Module"):
        sparsify(bad, HALO())


@pytest.mark.parametrize("bad", [None, "halo", {"name": "halo"}, HALO])
def test_non_prior_is_refused(bad):
    with pytest.raises(TypeError, match="expected a bayesprune Prior"):
        sparsify(nn.Linear(3, 2), bad)


@pytest.mark.parametrize(
    ("likelihood", "kind", "scale"),
    [
        ("categorical", Categorical, None),
        ("gaussian", Gaussian, 1.0),
        ({"name": "gaussian", "scale": 0.25}, Gaussian, 0.25),
        (Gaussian(0.5), Gaussian, 0.5),
    ],
)
def test_likelihood_argument(likelihood, kind, scale):
    net = sparsify(nn.Linear(3, 1), HALO(), likelihood=likelihood)
    assert type(net.likelihood) is kind
    if scale is not None:
        assert net.likelihood.scale == scale


def test_default_likelihood_is_categorical():
    assert type(sparsify(nn.Linear(3, 2), HALO()).likelihood) is Categorical


@pytest.mark.parametrize("bad", ["poisson", {"name": "student"}, {"scale": 1.0}])
def test_unknown_likelihood_raises(bad):
    with pytest.raises(ValueError, match="likelihood: unknown name"):
        sparsify(nn.Linear(3, 1), HALO(), likelihood=bad)


def test_glob_patterns_pick_only_layers_the_prior_supports():
    net = sparsify(ConvBN(), HALO(), layers="features.*")
    assert all(not isinstance(net.module.get_submodule(n), nn.BatchNorm2d) for n in net.layer_names)
    assert net.layer_names and all(
        isinstance(net.module.get_submodule(n), nn.Conv2d) for n in net.layer_names
    )
