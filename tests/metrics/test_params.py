import pytest
import torch
from torch import nn

from bayesprune.metrics import count_parameters, format_table, layer_table


class Tied(nn.Module):
    """An encoder/decoder pair sharing one weight tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 3, bias=False)
        self.dec = nn.Linear(3, 4, bias=False)
        self.dec.weight = nn.Parameter(self.enc.weight.t())  # not tied: a different tensor
        self.tied = nn.Linear(4, 3, bias=False)
        self.tied.weight = self.enc.weight  # tied: the same Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x)) + self.tied(x).sum()


class RootParam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(5))
        self.fc = nn.Linear(5, 2)


CASES = [
    # (module, total params, rows as (name, type, params))
    (nn.Linear(10, 5), 55, [("", "Linear", 55)]),
    (nn.Linear(10, 5, bias=False), 50, [("", "Linear", 50)]),
    (nn.Conv2d(3, 8, 3), 8 * 3 * 9 + 8, [("", "Conv2d", 224)]),
    (nn.Conv2d(4, 8, 3, groups=4, bias=False), 8 * 1 * 9, [("", "Conv2d", 72)]),
    (nn.BatchNorm2d(6), 12, [("", "BatchNorm2d", 12)]),
    (nn.BatchNorm2d(6, affine=False), 0, []),
    (nn.ReLU(), 0, []),
    (
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3)),
        20 + 27,
        [("0", "Conv2d", 20), ("3", "Linear", 27)],
    ),
    (RootParam(), 5 + 12, [("", "RootParam", 5), ("fc", "Linear", 12)]),
    # the tied tensor counts once, at its first owner; dec's transposed copy is its own
    (Tied(), 12 + 12, [("enc", "Linear", 12), ("dec", "Linear", 12)]),
]


@pytest.mark.parametrize(("module", "total", "rows"), CASES)
def test_counts_table(module: nn.Module, total: int, rows: list) -> None:
    c = count_parameters(module)
    assert c["params"] == total
    assert [(r["name"], r["type"], r["params"]) for r in c["layers"]] == rows
    assert sum(r["params"] for r in c["layers"]) == total
    assert c["nonzeros"] == sum(int((p != 0).sum()) for p in module.parameters())


def test_nonzeros_and_density_with_known_mask() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        net[0].weight[:, ::2] = 0.0  # 12 of 24 weights
        net[0].bias[0] = 0.0
        net[2].weight.zero_()
    c = count_parameters(net)
    assert c["params"] == 24 + 4 + 8
    assert c["nonzeros"] == 12 + 3
    assert c["density"] == pytest.approx(15 / 36)
    first, second = c["layers"]
    assert (first["nonzeros"], first["density"]) == (15, pytest.approx(15 / 28))
    assert (second["nonzeros"], second["density"]) == (0, 0.0)
    assert first["shapes"] == {"weight": [4, 6], "bias": [4]}


def test_empty_module_density_is_one() -> None:
    c = count_parameters(nn.Identity())
    assert (c["params"], c["nonzeros"], c["density"], c["layers"]) == (0, 0, 1.0, [])


def test_rejects_non_module() -> None:
    with pytest.raises(TypeError, match="nn.Module"):
        count_parameters(torch.zeros(3))  # type: ignore[arg-type]


def test_layer_table_merges_macs() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, bias=False),
        nn.BatchNorm2d(2, affine=False),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    rows = layer_table(net, torch.zeros(5, 1, 4, 4))
    by_name = {r["name"]: r for r in rows}
    assert list(by_name) == ["0", "3", "1"]  # parameter-free BN (which does count) comes last
    assert by_name["0"]["macs"] == 18 * 4 and by_name["0"]["params"] == 18
    assert by_name["1"]["params"] == 0 and by_name["1"]["macs"] == 8
    assert by_name["3"]["macs"] == 24 and by_name["3"]["calls"] == 1
    assert "macs" not in layer_table(net)[0]


def test_format_table() -> None:
    rows = [
        {"name": "conv", "params": 1234, "density": 0.5},
        {"name": "fc", "params": 5, "density": 1.0},
    ]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["name", "params", "density"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["conv", "1234", "0.5"]
    assert lines[3].split() == ["fc", "5", "1"]
    assert len(lines[2]) == len(lines[3])  # numbers right-aligned in fixed widths
    assert format_table(rows, columns=["params"]).splitlines()[2].strip() == "1234"
    assert format_table([]) == ""
