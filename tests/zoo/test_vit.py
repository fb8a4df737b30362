"""The zoo's ViT-tiny: torchvision's VisionTransformer for 28x28 one-channel images."""

from __future__ import annotations

import json

import pytest
import torch

import bayesprune as bp
from bayesprune.errors import ConfigError
from bayesprune.priors import UnitGates
from bayesprune.zoo import ViTTiny, build, from_config


def test_build_rebuild_and_run():
    net = build("vit-tiny", width=0.5, num_layers=2, n_classes=7)
    assert isinstance(net, ViTTiny)
    assert net.config == {
        "name": "vit-tiny",
        "in_channels": 1,
        "n_classes": 7,
        "width": 0.5,
        "image_size": 28,
        "patch_size": 7,
        "num_layers": 2,
        "num_heads": 4,
    }
    assert net.hidden_dim == 32 and net.mlp_dim == 64 and net.conv_proj.in_channels == 1
    again = from_config(json.loads(json.dumps(net.config)))
    again.load_state_dict(net.state_dict())
    x = net.example_input(3)
    assert x.shape == (3, 1, 28, 28)
    net.eval(), again.eval()
    assert torch.equal(net(x), again(x)) and net(x).shape == (3, 7)


def test_every_size_is_an_argument():
    net = ViTTiny(
        in_channels=3,
        image_size=32,
        patch_size=8,
        num_heads=2,
        hidden_dim=24,
        mlp_dim=40,
        num_layers=1,
    )
    assert net(net.example_input(2)).shape == (2, 10)
    assert net.encoder.layers[0].self_attention.num_heads == 2
    assert net.encoder.layers[0].mlp[0].out_features == 40
    assert net.config["hidden_dim"] == 24 and net.config["mlp_dim"] == 40


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": 30}, "multiple of patch_size"),
        ({"hidden_dim": 30}, "multiple of num_heads"),
        ({"width": 0}, "width must be positive"),
    ],
)
def test_bad_sizes_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ViTTiny(**kwargs)


def test_unit_gates_put_one_gate_per_head_on_every_block():
    net = bp.sparsify(build("vit-tiny", num_layers=2), UnitGates())
    heads = [s for s in net.gates if s.meta.get("place") == "heads"]
    assert [s.layer for s in heads] == [
        "encoder.layers.encoder_layer_0.self_attention",
        "encoder.layers.encoder_layer_1.self_attention",
    ]
    assert all(s.shape == (4,) for s in heads)
