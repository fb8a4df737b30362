"""``load_network(path, like=module)``: an extracted copy of one's own architecture reloaded
into a fresh dense instance of it, without pickle and without a ``build`` function."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayesprune.errors import CheckpointError, ConfigError
from bayesprune.export import load_network, save_network
from bayesprune.pruning import KeepSet, extract
from tests.conftest import INPUTS, ConvNet
from tests.helpers import mlp, randomise_batchnorm

#: the units each test network keeps: two of the MLP's 16 hidden units, two of the three
#: conv channels (the BatchNorm after it and the flattened Linear follow)
KEEP = {
    "mlp": {"0": KeepSet(units=torch.tensor([2, 7, 11]), n_units=16)},
    "conv": {"conv": KeepSet(units=torch.tensor([0, 2]), n_units=3)},
}


@pytest.fixture(params=["mlp", "conv"])
def saved(request, nets, tmp_path):
    """``(kind, the extracted network, its folder)``, saved with its input shape."""
    kind = request.param
    dense = nets[kind]()
    randomise_batchnorm(dense)
    x = torch.zeros(1, *INPUTS[kind])
    small = extract(dense, KEEP[kind], example_input=x).eval()
    save_network(small, tmp_path / "small", architecture={"input_shape": list(INPUTS[kind])})
    return kind, small, tmp_path / "small"


def test_the_reloaded_network_equals_the_extracted_one(saved, nets, inputs):
    kind, small, folder = saved
    back = load_network(folder, like=nets[kind]()).eval()
    x = inputs(kind, 5)
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)
    assert {k: v.shape for k, v in back.state_dict().items()} == {
        k: v.shape for k, v in small.state_dict().items()
    }


def test_the_layers_report_their_kept_sizes(saved, nets):
    kind, small, folder = saved
    back = load_network(folder, like=nets[kind]())
    for name, m in small.named_modules():
        for attr in ("in_features", "out_features", "in_channels", "out_channels", "num_features"):
            if hasattr(m, attr):
                assert getattr(back.get_submodule(name), attr) == getattr(m, attr), (name, attr)


def test_like_itself_is_left_as_it_was(saved, nets):
    kind, _, folder = saved
    like = nets[kind]()
    before = {k: v.clone() for k, v in like.state_dict().items()}
    back = load_network(folder, like=like)
    assert back is not like and like.training and back.training
    assert all(torch.equal(before[k], v) for k, v in like.state_dict().items())


def test_a_like_with_another_module_tree_is_refused(saved, nets):
    kind, _, folder = saved
    other = nets["conv" if kind == "mlp" else "mlp"]()
    with pytest.raises(CheckpointError, match=r"model\.json was not saved from this architecture"):
        load_network(folder, like=other)


def test_a_like_with_another_layer_type_is_refused(tmp_path, nets):
    small = extract(nets["mlp"](), KEEP["mlp"], example_input=torch.zeros(1, 8))
    save_network(small, tmp_path, architecture={})
    like = nets["mlp"]()
    like[2] = nn.Conv1d(16, 3, 1)  # same tensor names, another layer
    with pytest.raises(CheckpointError, match="layer '2' was saved as a Linear, like has a Conv1d"):
        load_network(tmp_path, like=like)


def test_a_like_with_another_stride_is_refused(tmp_path):
    small = extract(ConvNet(), KEEP["conv"], example_input=torch.zeros(1, 1, 6, 6))
    save_network(small, tmp_path, architecture={})
    like = ConvNet()
    like.conv = nn.Conv2d(1, 3, 3, stride=2)
    with pytest.raises(CheckpointError, match=r"layer 'conv' \(Conv2d\).*stride=\[1, 1\]"):
        load_network(tmp_path, like=like)


def test_a_like_with_other_outputs_is_refused(saved, nets):
    """A dense network built for 5 classes, the file holds 4 (ConvNet) or 3 (MLP): every
    tensor takes the saved shape, but the outputs do not match like's."""
    kind, _, folder = saved
    like = ConvNet(out=5) if kind == "conv" else mlp(8, 16, 5)
    with pytest.raises(CheckpointError, match=r"outputs have shapes \[?\(1, [34]\).*\(1, 5\)"):
        load_network(folder, like=like)


def test_the_output_check_takes_an_example_input(tmp_path, nets):
    small = extract(nets["mlp"](), KEEP["mlp"], example_input=torch.zeros(1, 8))
    save_network(small, tmp_path, architecture={})  # no input_shape: no check by default
    assert load_network(tmp_path, like=nets["mlp"]())[0].out_features == 3
    with pytest.raises(CheckpointError, match="fails on an example of shape"):
        load_network(tmp_path, like=nets["mlp"](), example_input=torch.zeros(1, 5))


def test_tied_weights_are_tied_again(tmp_path):
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    save_network(Tied(), tmp_path, architecture={})
    back = load_network(tmp_path, like=Tied())
    assert back.b.weight is back.a.weight


@pytest.mark.parametrize("how", ["neither", "both"])
def test_build_or_like_one_of_the_two(saved, nets, how):
    kind, _, folder = saved
    kw = {} if how == "neither" else {"build": lambda a: nets[kind](), "like": nets[kind]()}
    with pytest.raises(ConfigError, match="one of the two"):
        load_network(folder, **kw)


def test_non_persistent_buffers_stay_as_like_has_them(tmp_path):
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("mask", torch.ones(4), persistent=False)

        def forward(self, x):
            return self.fc(x) * self.mask

    saved = Masked()
    save_network(saved, tmp_path, architecture={"input_shape": [4]})
    back = load_network(tmp_path, like=Masked())
    assert torch.equal(back.mask, torch.ones(4)) and torch.equal(back.fc.weight, saved.fc.weight)


def test_the_training_mode_of_each_layer_is_kept(saved, nets):
    kind, _, folder = saved
    like = nets[kind]()
    like[0].eval() if kind == "mlp" else like.bn.eval()  # e.g. a frozen layer
    back = load_network(folder, like=like)
    assert [m.training for m in back.modules()] == [m.training for m in like.modules()]
    assert like.training and not all(m.training for m in like.modules())


def test_like_must_be_a_module(saved):
    _, _, folder = saved
    with pytest.raises(TypeError, match="like must be an nn.Module, got dict"):
        load_network(folder, like={"0.weight": torch.zeros(1)})
