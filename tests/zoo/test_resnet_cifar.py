"""CIFAR-style ResNets: shapes, parameter counts, names, configs, traceability."""

import json

import pytest
import torch
import torch.fx
import torch_pruning as tp
from torch import nn

from bayesprune.blocks import Shortcut, block_spec
from bayesprune.zoo import ResNetCIFAR, build, from_config
from bayesprune.zoo.resnet_cifar import BasicBlock
from tests.helpers import n_params


def test_resnet20_has_the_papers_size():
    net = build("resnet20")
    assert n_params(net) == 272_474  # He et al.: 0.27M (option B adds 2 small 1x1 convs)
    assert n_params(build("resnet20", in_channels=1)) == 272_474 - 2 * 16 * 9


@pytest.mark.parametrize(("depth", "blocks"), [(20, 3), (32, 5), (44, 7), (56, 9)])
def test_depth_gives_blocks_per_stage_and_output_shape(depth, blocks):
    net = build("resnet-cifar", depth=depth, width=0.25, in_channels=1, input_size=8)
    assert [len(s) for s in (net.layer1, net.layer2, net.layer3)] == [blocks] * 3
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convs + the classifier
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_width_scales_the_stage_channels():
    net = build("resnet20", width=0.5, n_classes=7)
    assert net.conv1.out_channels == 8
    assert [net.get_submodule(f"layer{i}.0.conv2").out_channels for i in (1, 2, 3)] == [8, 16, 32]
    assert (net.fc.in_features, net.fc.out_features) == (32, 7)


def test_module_names_and_shortcuts():
    net = build("resnet20", width=0.25)
    names = dict(net.named_modules())
    for n in ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn2", "layer3.2.conv2", "fc"]:
        assert n in names, n
    assert net.layer1[0].downsample is None and net.layer2[1].downsample is None
    for stage in ("layer2", "layer3"):  # option B: 1x1 conv + BN where the shape changes
        conv, bn = net.get_submodule(f"{stage}.0.downsample")
        assert (
            conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)
        )
    assert BasicBlock.branch_end == "bn2"
    assert block_spec(net.layer2[0]).branch_end == "bn2"


@pytest.mark.parametrize("name", ["layer1.1", "layer2.0"])
def test_as_shortcut_is_the_block_with_its_branch_at_zero(name):
    net = build("resnet20", width=0.25).eval()
    block = net.get_submodule(name)
    x = torch.randn(2, block.conv1.in_channels, 8, 8)
    short = block.as_shortcut().eval()
    assert isinstance(short, Shortcut)
    with torch.no_grad():
        block.bn2.weight.zero_()
        block.bn2.bias.zero_()
        torch.testing.assert_close(short(x), block(x))
    assert {n for n, _ in short.named_parameters()} == {
        n for n, _ in block.named_parameters() if n.startswith("downsample.")
    }


def test_config_round_trip_is_json():
    for net in (
        build("resnet20", width=0.5, in_channels=1, input_size=28),
        build("resnet-cifar", depth=32, width=0.25),
    ):
        cfg = json.loads(json.dumps(net.config))
        again = from_config(cfg)
        assert type(again) is ResNetCIFAR and again.config == net.config
        assert {k: v.shape for k, v in again.state_dict().items()} == {
            k: v.shape for k, v in net.state_dict().items()
        }
    assert build("resnet20").config["name"] == "resnet20"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 21}, "depth must be 6n"),
        ({"depth": 2}, "depth must be 6n"),
        ({"width": 0}, "width must be"),
        ({"in_channels": 0}, "in_channels"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetCIFAR(**kwargs)


def test_fixed_depth_names_refuse_another_depth():
    with pytest.raises(ValueError, match="resnet20: depth is 20"):
        build("resnet20", depth=32)


def test_example_input_follows_dtype_and_size():
    net = build("resnet20", width=0.25, in_channels=1, input_size=28).double()
    x = net.example_input(3)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float64


def test_fx_and_torch_pruning_trace_it():
    net = build("resnet20", width=0.25, input_size=8).eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(torch.fx.symbolic_trace(net)(x), net(x))
    dg = tp.DependencyGraph().build_dependency(net, example_inputs=net.example_input())
    group = dg.get_pruning_group(net.conv1, tp.prune_conv_out_channels, idxs=[0])
    coupled = {dg.module2node[i.dep.target.module].name for i in group.items}
    # the stem's channels are tied to every residual sum of stage 1
    assert any("layer1.2.bn2" in n for n in coupled)
    group.prune()
    assert net(x).shape == (2, 10) and net.layer1[2].bn2.num_features == 3
