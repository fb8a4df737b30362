"""extract: the central contract.

For every network and keep-set below, in eval mode:

1. the extracted network's output equals the collapsed (masked) model's output
   (:func:`bayesprune.pruning.masked_copy`) to float tolerance;
2. the extracted network is physically smaller, with the layer shapes the
   keep-sets (and the coupling rule) call for;
3. the user's network is untouched (same parameters, buffers and mode).
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn as nn
import torchvision

from bayesprune import sparsify
from bayesprune.nn import BayesianNet
from bayesprune.priors import HALO
from bayesprune.pruning import KeepSet, extract, masked_copy
from bayesprune.zoo import build
from tests.helpers import n_params, randomise_batchnorm

# --- helpers -------------------------------------------------------------------------------


def units(n: int, gen: torch.Generator, *, at_least: int = 1) -> torch.Tensor:
    """A random non-empty proper-or-full subset of range(n)."""
    k = int(torch.randint(at_least, n + 1, (1,), generator=gen))
    return torch.randperm(n, generator=gen)[:k]


def random_conv_keep(model: nn.Module, gen: torch.Generator) -> dict[str, KeepSet]:
    """A random structured keep-set on every Conv2d (keeping at least one channel)."""
    return {
        n: KeepSet(units=units(m.out_channels, gen), n_units=m.out_channels)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_contract(
    model: nn.Module, keep: dict[str, KeepSet], x: torch.Tensor, example: torch.Tensor | None = None
) -> tuple[nn.Module, nn.Module]:
    """Check the three promises above; return ``(masked, extracted)``, both in eval mode."""
    example = x[:1] if example is None else example
    before, training = state(model), model.training
    masked = masked_copy(model, keep, example_input=example).eval()
    small = extract(model, keep, example_input=example)
    assert small.training == training  # the copy keeps the user's mode
    small.eval()
    with torch.no_grad():
        ref, out = masked(x), small(x)
    assert ref.abs().max() > 1e-3, "degenerate case: the collapsed model outputs ~0"
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)

    # the user's network is untouched: values, shapes, buffers, mode
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"extract changed the original's {k}"
    assert model.training == training
    # a separate, plain network of the user's own class
    assert type(small) is type(model)
    assert not any(isinstance(m, BayesianNet) for m in small.modules())
    ours = {p.data_ptr() for p in model.parameters()}
    assert not ours & {p.data_ptr() for p in small.parameters()}
    # physically smaller whenever a unit was actually removed
    if any(k.units is not None and k.n_kept < k.n_units for k in keep.values()):
        assert n_params(small) < n_params(model)
    else:
        assert n_params(small) == n_params(model)
    return masked, small


# --- LeNets: structured, unstructured, both -----------------------------------------------

# name -> [(layer, previous layer whose units are its inputs, input features per unit)]
LENET_LAYERS = {
    "lenet300": [("fc1", None, 1), ("fc2", "fc1", 1), ("fc3", "fc2", 1)],
    "lenet5": [("conv1", None, 1), ("conv2", "conv1", 1), ("fc1", "conv2", 16), ("fc2", "fc1", 1)],
}


def lenet_keep(net: nn.Module, name: str, mode: str, gen: torch.Generator) -> dict[str, KeepSet]:
    layers = LENET_LAYERS[name]
    keep: dict[str, KeepSet] = {}
    for i, (layer, _, _) in enumerate(layers):
        w = net.get_submodule(layer).weight
        last = i == len(layers) - 1
        kw: dict = {}
        if mode in ("structured", "both") and not last:
            kw.update(units=units(w.shape[0], gen), n_units=w.shape[0])
        if mode in ("unstructured", "both"):
            kw["weight_mask"] = torch.rand(w.shape, generator=gen) < 0.4
        if mode == "both":  # point estimates to write in, as collapse gives them
            kw["values"] = {"weight": torch.randn(w.shape, generator=gen) * w.detach().std()}
        if kw:
            keep[layer] = KeepSet(**kw)
    return keep


def kept_index(keep: dict[str, KeepSet], layer: str | None, n: int, block: int) -> torch.Tensor:
    """Indices into a dimension of size ``n`` that survive, ``block`` features per unit."""
    if layer is None or layer not in keep or keep[layer].units is None:
        return torch.arange(n)
    u = keep[layer].units
    return (u[:, None] * block + torch.arange(block)).flatten()


@pytest.mark.parametrize("mode", ["structured", "unstructured", "both"])
@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_lenet_contract(name, mode):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}-{mode}".encode()))
    net = build(name).eval()
    keep = lenet_keep(net, name, mode, gen)
    x = torch.randn(5, 1, 28, 28, generator=gen)
    masked, small = assert_contract(net, keep, x, example=torch.zeros(1, 1, 28, 28))

    # each extracted layer is the masked layer with the dropped rows and columns cut out
    for layer, prev, block in LENET_LAYERS[name]:
        m, s = masked.get_submodule(layer), small.get_submodule(layer)
        rows = kept_index(keep, layer, m.weight.shape[0], 1)
        cols = kept_index(keep, prev, m.weight.shape[1], block)
        torch.testing.assert_close(s.weight, m.weight[rows][:, cols], rtol=0, atol=0)
        torch.testing.assert_close(s.bias, m.bias[rows], rtol=0, atol=0)
        if layer in keep and keep[layer].weight_mask is not None:
            dropped = ~keep[layer].weight_mask[rows][:, cols]
            assert (s.weight[dropped] == 0).all()
        if mode == "unstructured":
            assert s.weight.shape == net.get_submodule(layer).weight.shape


def test_lenet5_shapes_shrink_as_expected():
    net = build("lenet5")
    keep = {
        "conv1": KeepSet(units=torch.tensor([0, 5, 7]), n_units=20),
        "conv2": KeepSet(units=torch.arange(10), n_units=50),
        "fc1": KeepSet(units=torch.arange(0, 500, 5), n_units=500),
    }
    small = extract(net, keep, example_input=net.example_input())
    assert (small.conv1.out_channels, small.conv2.in_channels) == (3, 3)
    assert (small.conv2.out_channels, small.fc1.in_features) == (10, 10 * 4 * 4)
    assert (small.fc1.out_features, small.fc2.in_features, small.fc2.out_features) == (100, 100, 10)
    assert n_params(small) == 3 * 25 + 3 + 10 * 3 * 25 + 10 + 160 * 100 + 100 + 100 * 10 + 10


# --- conv nets with BatchNorm, grouped and depthwise convs, concatenation -----------------


class GroupedNet(nn.Module):
    """conv-BN, grouped conv (groups=2)-BN, depthwise conv-BN, pointwise conv-BN, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn3 = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.bn4 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.stem(x)))
        x = torch.relu(self.bn2(self.grouped(x)))
        x = torch.relu(self.bn3(self.dw(x)))
        x = torch.relu(self.bn4(self.pw(x)))
        return self.fc(nn.functional.max_pool2d(x, 2).flatten(1))


class CatNet(nn.Module):
    """Two conv branches concatenated along channels, then BN and a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 5, 3, padding=1)
        self.b = nn.Conv2d(6, 7, 1)
        self.bn = nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 4, 1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.cat([torch.relu(self.a(h)), torch.relu(self.b(h))], 1)
        h = torch.relu(self.bn(h))
        return self.fc(torch.relu(self.head(h)).flatten(1))


def ks(kept: list[int], n: int) -> KeepSet:
    return KeepSet(units=torch.tensor(kept), n_units=n)


# (id, network class, input shape, keep-sets, {layer: {attribute: expected value}})
SMALL_CASES = [
    (
        "bn+grouped+depthwise",
        GroupedNet,
        (3, 8, 8),
        {
            "stem": ks([0, 2, 3, 4, 6, 7], 8),  # the same positions {1} dropped in both groups
            "grouped": ks([1, 2, 3, 4, 5, 7], 8),  # one unit dropped in each group
            "dw": ks([1, 2, 4, 5], 8),  # coupled with "grouped": only 0 and 6 go
            "pw": ks([1, 4], 6),
        },
        {
            "stem": {"out_channels": 6},
            "bn1": {"num_features": 6},
            "grouped": {"in_channels": 6, "out_channels": 6, "groups": 2},
            "bn2": {"num_features": 6},
            "dw": {"in_channels": 6, "out_channels": 6, "groups": 6},
            "pw": {"in_channels": 6, "out_channels": 2},
            "fc": {"in_features": 2 * 16},
        },
    ),
    (
        "depthwise-drives-grouped",
        GroupedNet,
        (3, 8, 8),
        {"dw": ks([2, 5], 8)},  # 3 units dropped from each group of "grouped"
        {
            "grouped": {"in_channels": 8, "out_channels": 2, "groups": 2},
            "bn2": {"num_features": 2},
            "dw": {"in_channels": 2, "out_channels": 2, "groups": 2},
            "pw": {"in_channels": 2},
        },
    ),
    (
        "concat-one-branch",
        CatNet,
        (3, 8, 8),
        {"a": ks([0, 3], 5)},
        {"a": {"out_channels": 2}, "bn": {"num_features": 9}, "head": {"in_channels": 9}},
    ),
    (
        "concat-both-branches",
        CatNet,
        (3, 8, 8),
        {"b": ks([1, 6], 7), "a": ks([0, 3], 5), "stem": ks([2, 3, 4], 6), "head": ks([1], 4)},
        {
            "stem": {"out_channels": 3},
            "a": {"in_channels": 3, "out_channels": 2},
            "b": {"in_channels": 3, "out_channels": 2},
            "bn": {"num_features": 4},
            "head": {"in_channels": 4, "out_channels": 1},
            "fc": {"in_features": 64},
        },
    ),
]


@pytest.mark.parametrize(
    ("cls", "shape", "keep", "expected"),
    [c[1:] for c in SMALL_CASES],
    ids=[c[0] for c in SMALL_CASES],
)
def test_small_conv_contract(cls, shape, keep, expected):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    net = randomise_batchnorm(cls(), gen).eval()
    x = torch.randn(4, *shape, generator=gen)
    _, small = assert_contract(net, keep, x)
    for layer, attrs in expected.items():
        for attr, value in attrs.items():
            assert getattr(small.get_submodule(layer), attr) == value, (layer, attr)


def test_original_in_train_mode_is_untouched():
    """Tracing runs a forward pass: it must not update the user's BatchNorm statistics."""
    gen = torch.Generator().manual_seed(2)
    net = randomise_batchnorm(GroupedNet(), gen).train()
    before = state(net)
    small = extract(net, {"pw": ks([0], 6)}, example_input=torch.randn(2, 3, 8, 8))
    assert net.training and small.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_batchnorm_without_affine_parameters():
    """BN(affine=False) maps a zeroed channel to -mean/std; the collapsed model must not."""
    gen = torch.Generator().manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False), nn.ReLU(), nn.Conv2d(8, 4, 3)
    )
    randomise_batchnorm(net, gen).eval()
    _, small = assert_contract(net, {"0": ks([0, 2, 5], 8)}, torch.randn(3, 3, 8, 8, generator=gen))
    assert small[1].num_features == 3


# --- torchvision models under random keep-sets --------------------------------------------

RESNET_COUPLED = [  # convs whose outputs meet in a residual sum
    ["conv1", "layer1.0.conv2", "layer1.1.conv2"],
    *[[f"layer{i}.0.conv2", f"layer{i}.0.downsample.0", f"layer{i}.1.conv2"] for i in (2, 3, 4)],
]


def union_size(keep: dict[str, KeepSet], names: list[str]) -> int:
    return len(set().union(*(set(keep[n].units.tolist()) for n in names if n in keep)))


def check_resnet18(model: nn.Module, small: nn.Module, keep: dict[str, KeepSet]) -> None:
    """The coupling rule: a channel of a residual group goes only if every conv with a
    keep-set in the group drops it; uncoupled convs keep exactly their keep-set."""
    coupled = {n for group in RESNET_COUPLED for n in group}
    for group in RESNET_COUPLED:
        size = union_size(keep, group)
        for n in group:
            assert small.get_submodule(n).out_channels == size, n
    for n, k in keep.items():
        if n not in coupled:
            assert small.get_submodule(n).out_channels == k.n_kept, n
    assert small.bn1.num_features == small.conv1.out_channels
    assert small.fc.in_features == union_size(keep, RESNET_COUPLED[-1])


def check_mobilenet_v2(model: nn.Module, small: nn.Module, keep: dict[str, KeepSet]) -> None:
    """A depthwise conv's in and out channels are one: it and the conv feeding it keep
    the union of their kept channels, and it stays depthwise."""
    for name, m in model.named_modules():
        if not (isinstance(m, nn.Conv2d) and m.groups > 1):
            continue
        s = small.get_submodule(name)
        assert s.groups == s.in_channels == s.out_channels, name
        if name.endswith("conv.1.0"):  # expansion conv.0.0 -> depthwise conv.1.0
            feeder = name.replace("conv.1.0", "conv.0.0")
            assert s.out_channels == union_size(keep, [feeder, name]), name
    assert small.features[1].conv[0][0].out_channels == union_size(
        keep, ["features.0.0", "features.1.conv.0.0"]
    )


def check_kept_bounds(model: nn.Module, small: nn.Module, keep: dict[str, KeepSet]) -> None:
    for n, k in keep.items():
        out = small.get_submodule(n).out_channels
        assert k.n_kept <= out <= model.get_submodule(n).out_channels, n


def vgg11_bn() -> nn.Module:
    # the stock 25088-4096-4096 classifier makes each deep copy ~0.5 GB; a narrow one keeps
    # the interesting part (a conv feeding flatten(7x7) -> Linear) and the test fast
    m = torchvision.models.vgg11_bn(weights=None, num_classes=10)
    m.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10)
    )
    return m


TORCHVISION_CASES = [
    (
        "resnet18",
        lambda: torchvision.models.resnet18(weights=None, num_classes=10),
        32,
        check_resnet18,
    ),
    ("vgg11_bn", vgg11_bn, 32, check_kept_bounds),
    (
        "mobilenet_v2",
        lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10),
        64,
        check_mobilenet_v2,
    ),
]


@pytest.mark.parametrize(
    ("make", "size", "check"),
    [c[1:] for c in TORCHVISION_CASES],
    ids=[c[0] for c in TORCHVISION_CASES],
)
def test_torchvision_contract(make, size, check):
    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    model = randomise_batchnorm(make(), gen).eval()
    keep = random_conv_keep(model, gen)
    x = torch.randn(2, 3, size, size, generator=gen)
    _, small = assert_contract(model, keep, x)
    check_kept_bounds(model, small, keep)
    check(model, small, keep)


def test_resnet18_layers_without_keepsets_follow_their_coupled_layers():
    """Only convs *with* a keep-set vote: one keep-set in a residual group shrinks the
    whole group (here the stem and layer1's convs) -- in the collapsed model too."""
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    keep = {"layer1.0.conv2": ks(list(range(0, 64, 4)), 64)}
    x = torch.randn(1, 3, 32, 32)
    masked, small = assert_contract(model, keep, x)
    for n in RESNET_COUPLED[0]:
        assert small.get_submodule(n).out_channels == 16, n
    assert small.layer1[0].conv1.out_channels == 64  # not coupled
    dropped = [c for c in range(64) if c % 4]
    assert (masked.conv1.weight[dropped] == 0).all()  # the collapsed stem drops them too


def test_resnet18_a_kept_channel_anywhere_in_a_group_survives():
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    keep = {
        "layer2.0.conv2": ks([0, 1, 2], 128),
        "layer2.0.downsample.0": ks([2, 3], 128),
        "layer2.1.conv2": ks(list(range(128)), 128),  # keeps everything: the group is whole
        "layer3.0.conv2": ks([5], 256),
        "layer3.0.downsample.0": ks([7], 256),
        "layer3.1.conv2": ks([5, 9], 256),
    }
    small = extract(model, keep, example_input=torch.zeros(1, 3, 32, 32))
    assert small.layer2[0].conv2.out_channels == small.layer2[1].conv2.out_channels == 128
    for n in RESNET_COUPLED[2]:
        assert small.get_submodule(n).out_channels == 3, n  # {5, 7, 9}
    assert small.layer4[0].conv1.in_channels == 3


# --- BayesianNet input, and what extract refuses ------------------------------------------


def test_extract_from_a_bayesian_net_uses_its_example_input():
    module = build("lenet5")
    net = sparsify(module, HALO(per="unit"), layers=["conv1", "conv2", "fc1"])
    # sparsify records a zoo network's example_input(); a user's module may have none
    assert net.example_input is not None and net.example_input.shape == (1, 1, 28, 28)
    net.example_input = None
    keep = {"conv1": ks([1, 4], 20), "fc1": ks(list(range(50)), 500)}
    with pytest.raises(ValueError, match="example_input"):
        extract(net, keep)  # nothing recorded
    with pytest.raises(ValueError, match="example_input"):
        masked_copy(net, keep)
    net.example_input = torch.zeros(1, 1, 28, 28)
    small = extract(net, keep)
    masked = masked_copy(net, keep).eval()
    assert net.module is module and module.conv1.out_channels == 20
    assert (small.conv1.out_channels, small.fc1.out_features) == (2, 50)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), masked(x), rtol=1e-4, atol=1e-5)


def test_unstructured_keepsets_need_no_example_input():
    net = build("lenet300")
    mask = torch.zeros(300, 784, dtype=torch.bool)
    mask[:, :10] = True
    small = extract(net, {"fc1": KeepSet(weight_mask=mask)})
    assert int((small.fc1.weight != 0).sum()) == int((net.fc1.weight[:, :10] != 0).sum())


BAD_KEEPSETS = [
    ("missing layer", {"nope": ks([0], 1)}, ValueError, "'nope'"),
    (
        "mask shape",
        {"fc2": KeepSet(weight_mask=torch.ones(3, 3, dtype=torch.bool))},
        ValueError,
        "'fc2'.*weight_mask shape",
    ),
    (
        "value shape",
        {"fc2": KeepSet(values={"weight": torch.zeros(2, 2)})},
        ValueError,
        "'fc2'.*value for 'weight'",
    ),
    (
        "value name",
        {"fc2": KeepSet(values={"scale": torch.zeros(1)})},
        ValueError,
        "'fc2'.*'scale'",
    ),
    (
        "drops all",
        {"fc2": KeepSet(units=torch.tensor([], dtype=torch.long), n_units=100)},
        ValueError,
        "'fc2'.*drops all",
    ),
    ("n_units", {"fc2": ks([0], 99)}, ValueError, "'fc2' has 100 units"),
    (
        "unit range",
        {"fc2": KeepSet(units=torch.tensor([0, 100]))},
        ValueError,
        "'fc2' has 100 units.*keeps unit 100",
    ),
    ("not a KeepSet", {"fc2": {"units": [0]}}, TypeError, "keep\\['fc2'\\] must be a KeepSet"),
]


@pytest.mark.parametrize("fn", [extract, masked_copy])
@pytest.mark.parametrize(
    ("keep", "error", "match"), [c[1:] for c in BAD_KEEPSETS], ids=[c[0] for c in BAD_KEEPSETS]
)
def test_bad_keepsets_name_the_layer(fn, keep, error, match):
    net = build("lenet300")
    with pytest.raises(error, match=match):
        fn(net, keep, example_input=net.example_input())


@pytest.mark.parametrize("fn", [extract, masked_copy])
def test_structured_keepsets_need_an_example_input(fn):
    with pytest.raises(ValueError, match="example_input"):
        fn(build("lenet300"), {"fc1": ks([0, 1], 300)})


# --- where channel surgery cannot be exact: clear errors ----------------------------------


def test_unbalanced_grouped_conv_is_refused():
    """torch-pruning slices grouped (non-depthwise) convs wrongly unless every group loses
    the same input positions / the same number of units; extract refuses the rest."""
    net = GroupedNet().eval()
    x = torch.zeros(1, 3, 8, 8)
    with pytest.raises(ValueError, match="input channels .* 'grouped' \\(groups=2\\)"):
        extract(net, {"stem": ks([0, 2, 3, 4, 5, 6, 7], 8)}, example_input=x)
    with pytest.raises(ValueError, match="output units .* 'grouped' \\(groups=2\\)"):
        extract(net, {"grouped": ks([0, 1, 2, 3, 4], 8)}, example_input=x)
    with pytest.raises(ValueError, match="'grouped'"):  # via the coupled depthwise conv
        extract(net, {"dw": ks([0, 1, 2, 3, 4], 8)}, example_input=x)


@pytest.mark.parametrize(
    ("net", "x", "kind"),
    [
        (
            nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 2, 3)),
            torch.zeros(1, 3, 8, 8),
            "GroupNorm",
        ),
        (
            nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 2)),
            torch.zeros(1, 4),
            "LayerNorm",
        ),
    ],
    ids=["GroupNorm", "LayerNorm"],
)
def test_channel_mixing_norms_are_refused(net, x, kind):
    """Removing a channel changes a GroupNorm/LayerNorm's statistics: no exact surgery."""
    n = net[0].weight.shape[0]
    with pytest.raises(TypeError, match=f"coupled {kind}"):
        extract(net, {"0": ks([0, 2, 5], n)}, example_input=x)


def test_activation_not_mapping_zero_to_zero_is_caught():
    """Sigmoid(0) = 0.5: a dropped unit still feeds the next layer in the collapsed model,
    so the extracted network cannot match it; extract's self-check says so."""
    net = nn.Sequential(nn.Linear(4, 6), nn.Sigmoid(), nn.Linear(6, 2)).eval()
    keep = {"0": ks([0, 3], 6)}
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="differs from the collapsed .* f\\(0\\) != 0"):
        extract(net, keep, example_input=x[:1])
    small = extract(net, keep, example_input=x[:1], check=False)
    with torch.no_grad():
        assert not torch.allclose(small(x), masked_copy(net, keep, example_input=x[:1])(x))


def test_self_check_passes_on_the_zero_example_input_of_the_zoo():
    """The zoo's example inputs are zeros; the check must not fire spuriously on them."""
    net = build("lenet5")
    keep = {"conv1": ks([0], 20), "conv2": ks([3, 4], 50), "fc1": ks([7], 500)}
    small = extract(net, keep, example_input=net.example_input())
    assert math.prod(small.fc1.weight.shape) == 1 * 32


def test_extracted_network_has_no_pyro_inside():
    net = sparsify(build("lenet300"), HALO(per="unit"), layers=["fc1"])
    net.example_input = torch.zeros(1, 784)
    small = extract(net, {"fc1": ks([0, 1, 2], 300)})
    types = {type(m) for m in small.modules()}
    assert all(t.__module__.startswith(("torch.", "bayesprune.zoo")) for t in types)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 2)
        self.spare = nn.Linear(3, 3)  # never called
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(x + y)))


@pytest.mark.parametrize("layer", ["spare", "act"])
def test_units_of_a_layer_outside_the_traced_graph_are_refused(layer):
    example = (torch.zeros(1, 4), torch.ones(1, 4))
    with pytest.raises(ValueError, match=f"layer '{layer}'.*not a layer of the network's traced"):
        extract(TwoInputs(), {layer: KeepSet(units=torch.tensor([0]))}, example_input=example)


def test_a_tuple_example_input_is_passed_as_positional_arguments():
    net = TwoInputs().eval()
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    keep = {"a": ks([1, 4], 6)}
    small = extract(net, keep, example_input=(x[:1], y[:1])).eval()
    masked = masked_copy(net, keep, example_input=(x[:1], y[:1])).eval()
    assert small.a.out_features == small.b.in_features == 2
    with torch.no_grad():
        torch.testing.assert_close(small(x, y), masked(x, y))
