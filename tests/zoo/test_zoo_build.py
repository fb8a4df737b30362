import json

import pytest
import torch
from torch import nn

import bayesprune.zoo as zoo
from bayesprune.zoo import LeNet5Caffe, LeNet300100, build, from_config, register


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry, so registrations do not leak between tests."""
    monkeypatch.setattr(zoo, "REGISTRY", dict(zoo.REGISTRY))
    return zoo.REGISTRY


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("lenet300", LeNet300100),
        ("lenet300-100", LeNet300100),
        ("lenet5", LeNet5Caffe),
        ("lenet5-caffe", LeNet5Caffe),
    ],
)
def test_build_by_name(name, cls):
    net = build(name, width=0.25)
    assert type(net) is cls
    assert net.config["name"] == name and net.config["width"] == 0.25
    assert type(from_config(net.config)) is cls


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown network 'vgg'") as info:
        build("vgg")
    msg = str(info.value)
    assert "lenet300" in msg and "lenet5-caffe" in msg and "tv:" in msg


def test_torchvision_model_without_weights():
    net = build("tv:resnet18", num_classes=7)
    assert net.fc.out_features == 7
    assert net.config == {"name": "tv:resnet18", "num_classes": 7}
    rebuilt = from_config(json.loads(json.dumps(net.config)))
    rebuilt.load_state_dict(net.state_dict())


def test_torchvision_never_downloads_weights():
    with pytest.raises(ValueError, match="never downloaded"):
        build("tv:resnet18", weights="DEFAULT")


def test_unknown_torchvision_model():
    with pytest.raises(ValueError, match="unknown torchvision model 'nope'"):
        build("tv:nope")


def test_register_class_and_function(registry):
    class Tiny(nn.Module):
        def __init__(self, k: int = 2):
            super().__init__()
            self.fc = nn.Linear(3, k)

        def forward(self, x):
            return self.fc(x)

    register("tiny", Tiny)
    net = build("tiny", k=4)
    assert net.config == {"name": "tiny", "k": 4}
    assert from_config(net.config).fc.out_features == 4

    register("tiny-fn", lambda: nn.Linear(2, 2))
    assert isinstance(build("tiny-fn"), nn.Linear)


def test_registered_subclass_keeps_its_name(registry):
    class Wide(LeNet300100):
        pass

    register("wide", Wide)
    net = build("wide", width=2.0)
    assert net.config["name"] == "wide"
    assert type(from_config(net.config)) is Wide


def test_register_refuses_taken_and_reserved_names(registry):
    with pytest.raises(ValueError, match="already registered"):
        register("lenet5", LeNet300100)
    register("lenet5", LeNet300100, overwrite=True)
    assert type(build("lenet5")) is LeNet300100
    with pytest.raises(ValueError, match="reserved"):
        register("tv:mine", LeNet300100)
    with pytest.raises(TypeError, match="callable"):
        register("bad", 3)


def test_from_config_needs_a_name():
    with pytest.raises(ValueError, match="no 'name'"):
        from_config({"width": 1.0})


def test_from_config_does_not_mutate_its_argument():
    config = {"name": "lenet300", "width": 0.5}
    from_config(config)
    assert config == {"name": "lenet300", "width": 0.5}


def test_built_nets_are_in_train_mode_and_float32():
    net = build("lenet5")
    assert net.training
    assert all(p.dtype == torch.float32 for p in net.parameters())
