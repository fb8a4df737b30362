import math

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bayesprune.metrics import count_flops

# (module, input shape, dense MACs per example), each worked out by hand
HAND_CASES = [
    ("linear", nn.Linear(10, 5), (3, 10), 10 * 5),
    ("linear_rows", nn.Linear(10, 5), (2, 7, 10), 7 * 10 * 5),  # 7 rows per example
    ("conv1d", nn.Conv1d(2, 4, 3), (2, 2, 10), 4 * 2 * 3 * 8),
    ("conv2d_pad", nn.Conv2d(3, 8, 3, padding=1), (2, 3, 8, 8), 8 * 3 * 9 * 64),
    ("conv2d_stride", nn.Conv2d(3, 8, 3, stride=2), (1, 3, 9, 9), 8 * 3 * 9 * 16),
    ("conv2d_dilation", nn.Conv2d(2, 2, 3, dilation=2), (1, 2, 7, 7), 2 * 2 * 9 * 9),
    ("conv2d_groups", nn.Conv2d(4, 8, 3, groups=2), (1, 4, 5, 5), 8 * (4 // 2) * 9 * 9),
    ("depthwise", nn.Conv2d(6, 6, 3, padding=1, groups=6), (4, 6, 5, 5), 6 * 1 * 9 * 25),
    ("conv3d", nn.Conv3d(2, 3, (1, 2, 2)), (1, 2, 3, 4, 4), 3 * 2 * 4 * (3 * 3 * 3)),
    # transposed: every input element goes through out/groups * k weights
    ("conv_t2d", nn.ConvTranspose2d(4, 6, 2, stride=2), (2, 4, 3, 3), (4 * 9) * 6 * 4),
    ("conv_t_groups", nn.ConvTranspose1d(4, 6, 3, groups=2), (1, 4, 5), (4 * 5) * 3 * 3),
    ("batchnorm2d", nn.BatchNorm2d(3), (2, 3, 4, 4), 3 * 16),
    ("batchnorm1d", nn.BatchNorm1d(7), (5, 7), 7),
    ("relu", nn.ReLU(), (2, 3), 0),
]


@pytest.mark.parametrize(
    ("module", "shape", "macs"), [c[1:] for c in HAND_CASES], ids=[c[0] for c in HAND_CASES]
)
def test_hand_computed_macs(module: nn.Module, shape: tuple, macs: int) -> None:
    r = count_flops(module, torch.randn(shape))
    assert r["macs"] == macs
    assert r["flops"] == 2 * macs
    assert r["sparse_macs"] == macs  # default inits have no exact zero weights
    assert r["batch_size"] == shape[0]
    assert sum(row["macs"] for row in r["layers"]) == macs


def test_sequential_totals_and_kinds() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),  # 4*9 weights x 36 positions
        nn.BatchNorm2d(4),  # 4*36 elements
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 9, 10),
    )
    r = count_flops(net, torch.randn(8, 1, 8, 8))
    assert r["macs_by_kind"] == {"conv": 36 * 36, "batchnorm": 4 * 36, "linear": 360}
    assert r["macs"] == 36 * 36 + 4 * 36 + 360
    assert [row["name"] for row in r["layers"]] == ["0", "1", "5"]
    assert r["uncounted"] == ["Flatten", "MaxPool2d", "ReLU"]


def test_sparse_macs_linear_known_mask() -> None:
    lin = nn.Linear(8, 4)
    with torch.no_grad():
        lin.weight[:, 1::2] = 0.0  # half the weights
        lin.weight[0, 0] = 0.0  # and one more: 15 of 32 remain
    r = count_flops(lin, torch.randn(3, 5, 8))  # 5 rows per example
    assert r["macs"] == 5 * 32
    assert r["sparse_macs"] == 5 * 15


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(stride=2), dict(dilation=2), dict(groups=2), dict(groups=4, stride=2, padding=1)],
)
def test_sparse_macs_conv_matches_brute_force(kwargs: dict) -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, bias=False, **kwargs)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) < 0.3)
    x = torch.randn(2, 4, 11, 11)
    r = count_flops(conv, x)
    # Brute force: convolve an all-ones input (padding included) with the indicator of
    # nonzero weights; each output element then equals its number of nonzero products.
    pad = conv.padding[0]
    ones = F.pad(torch.ones(1, 4, 11, 11), (pad,) * 4, value=1.0)
    indicator = (conv.weight != 0).float()
    hits = F.conv2d(ones, indicator, stride=conv.stride, dilation=conv.dilation, groups=conv.groups)
    assert r["sparse_macs"] == int(hits.sum())
    positions = hits.shape[-1] * hits.shape[-2]
    assert r["macs"] == conv.weight.numel() * positions
    assert 0 < r["sparse_macs"] < r["macs"]


def test_module_called_twice_counts_twice() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    r = count_flops(Twice(), torch.randn(2, 6))
    assert r["macs"] == 2 * 36
    assert r["layers"][0]["calls"] == 2


def test_per_example_independent_of_batch() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    one = count_flops(net, torch.randn(1, 3, 6, 6))
    many = count_flops(net, torch.randn(7, 3, 6, 6))
    assert one["macs"] == many["macs"] and one["sparse_macs"] == many["sparse_macs"]
    explicit = count_flops(net, torch.randn(7, 3, 6, 6), batch_size=1)  # whole-batch counts
    assert explicit["macs"] == 7 * one["macs"]


def test_hooks_removed_and_state_restored() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    net.train()
    net[2].eval()  # a mixed pattern of flags must come back as it was
    stats = net[1].running_mean.clone(), int(net[1].num_batches_tracked)
    count_flops(net, torch.randn(5, 4))
    assert all(not m._forward_hooks for m in net.modules())
    assert [m.training for m in net.modules()] == [True, True, True, False]
    assert torch.equal(net[1].running_mean, stats[0])  # ran in eval mode: no stats update
    assert int(net[1].num_batches_tracked) == stats[1]


def test_hooks_removed_when_forward_raises() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 2))  # shapes do not chain
    net.train()
    with pytest.raises(RuntimeError):
        count_flops(net, torch.randn(2, 4))
    assert all(not m._forward_hooks for m in net.modules())
    assert all(m.training for m in net.modules())


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        count_flops(nn.Linear(2, 2), torch.randn(1, 2), batch_size=0)
    with pytest.raises(ValueError, match="0-d"):
        count_flops(nn.Identity(), torch.tensor(1.0))
    with pytest.raises(TypeError, match="nn.Module"):
        count_flops(lambda x: x, torch.randn(1, 2))  # type: ignore[arg-type]


def test_tuple_input() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.a(x) + self.b(y)

    assert count_flops(Two(), (torch.randn(2, 3), torch.randn(2, 4)))["macs"] == 6 + 8


# --- cross-check with torch-pruning's counter ------------------------------------------
# torch_pruning.utils.count_ops_and_params counts, per layer: conv/linear MACs plus one op
# per output element for a bias (a Linear bias once per call, so we use batch 1); BatchNorm
# as 2 * numel ops (= our "flops" for a BatchNorm row). ReLU and pooling it counts too; we
# do not, so totals are compared over conv/linear/BN layers only.


def _tp_expected(module: nn.Module, row: dict) -> int:
    if row["kind"] == "batchnorm":
        return row["flops"]
    if module.bias is None:
        return row["macs"]
    if row["kind"] == "linear":
        return row["macs"] + module.out_features  # batch 1, one row
    positions = row["macs"] // module.weight.numel()
    return row["macs"] + module.out_channels * positions


def _lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )  # fmt: skip


def _lenet300() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


@pytest.mark.parametrize(
    ("build", "shape", "macs"),
    [
        (_lenet300, (1, 1, 28, 28), 784 * 300 + 300 * 100 + 100 * 10),
        (_lenet5, (1, 1, 28, 28), 20 * 25 * 24 * 24 + 50 * 20 * 25 * 8 * 8 + 800 * 500 + 500 * 10),
        (lambda: torchvision.models.resnet18(weights=None), (1, 3, 64, 64), None),
    ],
    ids=["lenet300", "lenet5", "resnet18"],
)
def test_agrees_with_torch_pruning(build, shape: tuple, macs: int | None) -> None:
    torch.manual_seed(0)
    net = build().eval()
    x = torch.randn(shape)
    r = count_flops(net, x)
    if macs is not None:
        assert r["macs"] == macs
    _, _, tp_layers, _ = tp.utils.count_ops_and_params(net, x, layer_wise=True)
    modules = dict(net.named_modules())
    assert r["layers"]
    for row in r["layers"]:
        assert _tp_expected(modules[row["name"]], row) == tp_layers[modules[row["name"]]], row[
            "name"
        ]
    # every conv/linear/BN module torch-pruning saw doing work is one of our rows
    counted = {row["name"] for row in r["layers"]}
    for name, m in modules.items():
        if isinstance(m, nn.Conv2d | nn.Linear | nn.BatchNorm2d) and tp_layers[m]:
            assert name in counted


def test_resnet18_reference_macs() -> None:
    # torchvision documents resnet18 at 1.81 GFLOPS, which are multiply-accumulates at 224x224
    net = torchvision.models.resnet18(weights=None)
    r = count_flops(net, torch.randn(1, 3, 224, 224))
    conv_linear = r["macs_by_kind"]["conv"] + r["macs_by_kind"]["linear"]
    assert math.isclose(conv_linear / 1e9, 1.81, abs_tol=0.01)
    assert r["macs_by_kind"]["batchnorm"] > 0


# --- cross-check with torch.utils.flop_counter ------------------------------------------
# FlopCounterMode counts 2 FLOPs per MAC of matrix products and convolutions, no BatchNorm.


@pytest.mark.parametrize(
    ("build", "shape"),
    [
        *[((lambda m=c[1]: m), c[2]) for c in HAND_CASES],
        (_lenet5, (2, 1, 28, 28)),
        (lambda: torchvision.models.resnet18(weights=None), (1, 3, 64, 64)),
    ],
    ids=[*(c[0] for c in HAND_CASES), "lenet5", "resnet18"],
)
def test_agrees_with_flop_counter_mode(build, shape: tuple) -> None:
    net = build().eval()
    x = torch.randn(shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    r = count_flops(net, x, batch_size=1)  # whole-batch counts
    assert counter.get_total_flops() == 2 * (r["macs"] - r["macs_by_kind"].get("batchnorm", 0))
    assert r["functional_macs"] == 0


def test_functional_products_are_counted_apart() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 4)
            self.w = nn.Parameter(torch.randn(4, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.fc(x)
            return h @ self.w + F.linear(h, self.w.T)

    r = count_flops(Functional(), torch.randn(5, 6))
    assert r["macs"] == 6 * 4 and r["layers"][0]["macs"] == 6 * 4  # the Linear module only
    assert r["functional_macs"] == 2 * 4 * 3  # two products of a 4-vector with a 4x3 matrix
