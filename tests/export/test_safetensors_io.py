import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bayesprune.export import describe_layers, load_network, safetensors_io, save_network


class SmallConvNet(nn.Module):
    def __init__(self, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def build(arch: dict[str, Any]) -> nn.Module:
    return SmallConvNet(arch["width"], arch["classes"])


@pytest.fixture
def net() -> nn.Module:
    torch.manual_seed(0)
    net = SmallConvNet()
    with torch.no_grad():  # non-trivial buffers, so that they must round-trip too
        net.bn.running_mean.normal_()
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.num_batches_tracked.fill_(7)
        net.conv.weight[0].zero_()
    return net.eval()


def _snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_round_trip(net: nn.Module, tmp_path: Path) -> None:
    arch = {"width": 4, "classes": 3, "name": "small"}
    weights, meta = save_network(net, tmp_path / "out", architecture=arch, extra={"acc": 0.9})
    assert (weights, meta) == (
        tmp_path / "out" / "model.safetensors",
        tmp_path / "out" / "model.json",
    )
    back = load_network(tmp_path / "out", build).eval()
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    for (k, a), (k2, b) in zip(net.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b) and a.dtype == b.dtype

    doc = json.loads(meta.read_text())
    assert doc["architecture"] == arch
    assert doc["extra"] == {"acc": 0.9}
    assert doc["tensors"]["conv.weight"] == {"dtype": "float32", "shape": [4, 1, 3, 3]}
    assert doc["tensors"]["bn.num_batches_tracked"] == {"dtype": "int64", "shape": []}
    assert doc["layers"] == describe_layers(net)
    assert doc["tied"] == []


@pytest.mark.parametrize("name", ["net.safetensors", "net.json"])
def test_file_prefix_paths(net: nn.Module, tmp_path: Path, name: str) -> None:
    weights, meta = save_network(net, tmp_path / name, architecture={"width": 4, "classes": 3})
    assert (weights.name, meta.name) == ("net.safetensors", "net.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.json", "net.safetensors"]
    for path in (weights, meta):
        assert isinstance(load_network(path, build), SmallConvNet)


def test_describe_layers() -> None:
    rows = describe_layers(SmallConvNet())
    conv, bn, fc = rows
    assert conv == {
        "name": "conv", "type": "Conv2d", "in_channels": 1, "out_channels": 4,
        "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1],
        "output_padding": [0, 0], "groups": 1, "padding_mode": "zeros", "bias": True,
    }  # fmt: skip
    assert bn["num_features"] == 4 and bn["affine"] is True
    assert fc == {
        "name": "fc",
        "type": "Linear",
        "in_features": 64,
        "out_features": 3,
        "bias": True,
    }


def test_tied_weights(tmp_path: Path) -> None:
    def make(arch: dict[str, Any]) -> nn.Module:
        m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
        m[1].weight = m[0].weight
        return m

    net = make({})
    save_network(net, tmp_path, architecture={})
    doc = json.loads((tmp_path / "model.json").read_text())
    assert doc["tied"] == [["0.weight", "1.weight"]]
    back = load_network(tmp_path, make)
    assert torch.equal(back[1].weight, net[0].weight)
    assert back[1].weight is back[0].weight  # the builder's tie survives loading


def test_shape_mismatch_names_key(net: nn.Module, tmp_path: Path) -> None:
    save_network(net, tmp_path, architecture={"width": 4, "classes": 3})
    with pytest.raises(ValueError, match=r"'fc\.weight'.*\[3, 64\].*\[5, 64\]"):
        load_network(tmp_path, lambda arch: SmallConvNet(4, 5))


def test_dtype_mismatch_names_key(net: nn.Module, tmp_path: Path) -> None:
    save_network(net, tmp_path, architecture={"width": 4, "classes": 3})
    with pytest.raises(ValueError, match=r"'conv\.weight'.*float32.*float64"):
        load_network(tmp_path, lambda arch: build(arch).double())


def test_missing_and_unexpected_keys(net: nn.Module, tmp_path: Path) -> None:
    save_network(net, tmp_path, architecture={"width": 4, "classes": 3})

    class Extra(SmallConvNet):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(3, 3)

    with pytest.raises(ValueError, match=r"'head\.bias'"):
        load_network(tmp_path, lambda arch: Extra())
    with pytest.raises(ValueError, match=r"'fc\.bias'"):
        load_network(tmp_path, lambda arch: nn.Sequential())
    with pytest.raises(TypeError, match="nn.Module"):
        load_network(tmp_path, lambda arch: "not a module")


def test_corrupt_weights_name_the_file(net: nn.Module, tmp_path: Path) -> None:
    weights, meta = save_network(net, tmp_path, architecture={"width": 4, "classes": 3})
    blob = bytearray(weights.read_bytes())
    blob[-5] ^= 0xFF  # flip a byte of tensor data
    weights.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"model\.safetensors.*sha256"):
        load_network(tmp_path, build)
    weights.write_bytes(bytes(blob[: len(blob) // 2]))  # truncated
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
        load_network(tmp_path, build)


def test_unparseable_weights_without_checksum(net: nn.Module, tmp_path: Path) -> None:
    # a hand-edited JSON without size/checksum still gets a clear error from the parser
    weights, meta = save_network(net, tmp_path, architecture={"width": 4, "classes": 3})
    doc = json.loads(meta.read_text())
    del doc["sha256"], doc["num_bytes"]
    meta.write_text(json.dumps(doc))
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match=r"model\.safetensors.*not a readable safetensors"):
        load_network(tmp_path, build)


@pytest.mark.parametrize(
    "text",
    [b'{"format": "bayesprune.network", "format_ver', b"\xff\xfe", b"[]", b'{"format": "other"}'],
    ids=["truncated", "binary", "list", "foreign"],
)
def test_corrupt_json_names_the_file(net: nn.Module, tmp_path: Path, text: bytes) -> None:
    save_network(net, tmp_path, architecture={"width": 4, "classes": 3})
    (tmp_path / "model.json").write_bytes(text)
    with pytest.raises(ValueError, match=r"model\.json"):
        load_network(tmp_path, build)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_network(tmp_path / "nowhere", build)
    with pytest.raises(FileNotFoundError):
        load_network(tmp_path, build)  # a directory without the files


def test_load_only_reads(net: nn.Module, tmp_path: Path) -> None:
    save_network(net, tmp_path, architecture={"width": 4, "classes": 3})
    before = _snapshot(tmp_path)
    load_network(tmp_path, build)
    load_network(tmp_path / "model.json", build)
    assert _snapshot(tmp_path) == before


def test_atomic_write_leaves_no_temp_files(net: nn.Module, tmp_path: Path) -> None:
    save_network(net, tmp_path, architecture={"width": 4, "classes": 3})
    save_network(net, tmp_path, architecture={"width": 4, "classes": 3})  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


def test_failed_write_keeps_old_files(
    net: nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_network(net, tmp_path, architecture={"width": 4, "classes": 3})
    before = _snapshot(tmp_path)

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_io.os, "replace", broken_replace)
    with torch.no_grad():
        net.fc.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_network(net, tmp_path, architecture={"width": 4, "classes": 3})
    monkeypatch.undo()
    assert _snapshot(tmp_path) == before  # old pair intact, no temp file left behind
    load_network(tmp_path, build)


def test_unserialisable_metadata_writes_nothing(net: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="JSON"):
        save_network(net, tmp_path, architecture={"w": torch.ones(1)})
    with pytest.raises(ValueError, match="JSON"):
        save_network(net, tmp_path, architecture={}, extra={"loss": float("nan")})
    with pytest.raises(TypeError, match="architecture"):
        save_network(net, tmp_path, architecture=[1, 2])  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_non_contiguous_and_dtypes(tmp_path: Path) -> None:
    def make(arch: dict[str, Any]) -> nn.Module:
        m = nn.Linear(4, 3).to(getattr(torch, arch["dtype"]))
        return m

    for dtype in ("float16", "bfloat16", "float64"):
        net = make({"dtype": dtype})
        with torch.no_grad():  # a transposed (non-contiguous) parameter
            net.weight = nn.Parameter(torch.randn(4, 3, dtype=net.weight.dtype).t())
        save_network(net, tmp_path / dtype, architecture={"dtype": dtype})
        back = load_network(tmp_path / dtype, make, device="cpu")
        assert back.weight.dtype == getattr(torch, dtype)
        assert torch.equal(back.weight, net.weight)


def test_permissions_follow_umask(net: nn.Module, tmp_path: Path) -> None:
    weights, meta = save_network(net, tmp_path, architecture={"width": 4, "classes": 3})
    umask = os.umask(0)
    os.umask(umask)
    for p in (weights, meta):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask
