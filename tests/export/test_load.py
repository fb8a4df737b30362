"""``bayesprune.export.load``: one entry point, no builder; and ``save_pruned`` for networks
that lost units while they trained (keep-sets recorded in the original indexing)."""

import json
import pickle
import re

import pytest
import torch

from bayesprune import collapse, extract, sparsify
from bayesprune.export import load, save_network
from bayesprune.export.pruned_network import original_structure, save_pruned
from bayesprune.guides import MAP
from bayesprune.priors import UnitGates
from bayesprune.pruning import KeepSet
from bayesprune.pruning.live import remove_units, removed_units, to_current, to_original
from bayesprune.zoo import build
from tests.helpers import save_extracted


@pytest.fixture
def saved(tmp_path):
    net = build("lenet5", width=0.25).eval()
    g = torch.Generator().manual_seed(1)
    keep = {
        "conv2": KeepSet(units=torch.randperm(12, generator=g)[:5], n_units=12),
        "fc1": KeepSet(units=torch.randperm(125, generator=g)[:40], n_units=125),
    }
    folder = tmp_path / "extracted"
    small, _ = save_extracted(net, keep, folder)
    return small, folder


@pytest.mark.parametrize("which", ["folder", "model.json", "model.safetensors"])
def test_load_gives_the_saved_network(saved, which):
    small, folder = saved
    back = load(folder if which == "folder" else folder / which)
    assert not back.training
    assert back.conv2.out_channels == 5 and back.fc1.out_features == 40
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)


def test_load_puts_the_network_on_the_device(saved):
    _, folder = saved
    back = load(folder, device="meta")
    assert {p.device.type for p in back.parameters()} == {"meta"}


def test_load_unpickles_nothing(saved, monkeypatch):
    small, folder = saved

    def refuse(*args, **kwargs):
        raise AssertionError("load must not unpickle")

    for mod, name in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(mod, name, refuse)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load(folder)(x), small(x))


@pytest.mark.parametrize("missing", ["model.json", "model.safetensors"])
def test_a_missing_file_is_named(saved, missing):
    _, folder = saved
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{folder / missing}: no such file")):
        load(folder)


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"{tmp_path / 'nowhere'}: no such folder")
    ):
        load(tmp_path / "nowhere")


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("name", "damage", "match"),
    [
        ("model.json", _truncate, r"model\.json: not valid JSON"),
        ("model.safetensors", _truncate, r"model\.safetensors: .* bytes .* truncated"),
        ("model.safetensors", _flip_last_byte, r"model\.safetensors: sha256 does not match"),
    ],
)
def test_a_corrupt_file_is_named(saved, name, damage, match):
    _, folder = saved
    damage(folder / name)
    with pytest.raises(ValueError, match=match):
        load(folder)


def test_a_custom_architecture_points_to_load_network(tmp_path):
    save_network(torch.nn.Linear(3, 2), tmp_path, architecture={"in": 3, "out": 2})
    with pytest.raises(ValueError, match=r"model\.json: .*no zoo network.*load_network"):
        load(tmp_path)


# --- networks that lost units while they trained --------------------------------------------


@pytest.fixture
def shrunk():
    """LeNet-300-100 at width 0.1 (784-30-10-10) after two live removals, its guide,
    and the collapse keep-sets (current indexing) that cut it further."""
    net = sparsify(build("lenet300", width=0.1), UnitGates())
    guide = MAP(net)
    remove_units(net, guide, {"fc1": list(range(3, 30, 2)), "fc2": [0, 2, 3, 4, 7, 9]})
    remove_units(net, guide, {"fc1": [0, 1, 2, 4, 6, 7, 8, 10, 12]})  # current indexing
    with torch.no_grad():
        guide.gate_probs["fc1/gate"].copy_(torch.tensor([1, 0, 1, 1, 0, 1, 1, 0, 1.0]))
        guide.gate_probs["fc2/gate"].fill_(1.0)
    keep = collapse(net, guide, threshold=0.5)
    return net, guide, keep


def test_to_original_inverts_to_current(shrunk):
    net, _, _ = shrunk
    orig = removed_units(net)
    assert orig["fc1"].tolist() == [3, 5, 7, 11, 15, 17, 19, 23, 27]
    back = to_original(net, {"fc1": [0, 3, 8], "fc2": [5]})
    assert {n: t.tolist() for n, t in back.items()} == {"fc1": [3, 11, 27], "fc2": [9]}
    assert {n: t.tolist() for n, t in to_current(net, back).items()} == {
        "fc1": [0, 3, 8],
        "fc2": [5],
    }


def test_to_original_refuses_indices_the_net_does_not_have(shrunk):
    net, _, _ = shrunk
    with pytest.raises(ValueError, match=r"'fc1'.*out of range \[0, 9\)"):
        to_original(net, {"fc1": [9]})
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        to_original(net, {"nope": [0]})


def test_original_structure_composes_removals_and_collapse(shrunk):
    net, _, keep = shrunk
    assert keep["fc1"].n_units == 9 and keep["fc1"].units.tolist() == [0, 2, 3, 5, 6, 8]
    orig = original_structure(net, keep)
    assert orig["fc1"].n_units == 30 and orig["fc1"].units.tolist() == [3, 7, 11, 17, 19, 27]
    assert orig["fc2"].n_units == 10 and orig["fc2"].units.tolist() == [0, 2, 3, 4, 7, 9]
    # a layer that lost units during the fit is recorded even without a keep-set
    assert original_structure(net, {})["fc2"].units.tolist() == [0, 2, 3, 4, 7, 9]
    with pytest.raises(ValueError, match=r"keep\['fc1'\] is for a layer of 30 units.*has 9"):
        original_structure(net, {"fc1": KeepSet(units=torch.tensor([3]), n_units=30)})


def test_save_pruned_with_net_loads_back(shrunk, tmp_path):
    net, _, keep = shrunk
    small = extract(net, keep).eval()
    save_pruned(small, tmp_path, net=net, keep=keep, input_shape=(784,))
    doc = json.loads((tmp_path / "model.json").read_text())
    assert doc["architecture"]["network"] == net.module.config
    assert doc["architecture"]["units"]["fc1"] == {"kept": [3, 7, 11, 17, 19, 27], "n_units": 30}
    back = load(tmp_path)
    x = torch.randn(5, 784)
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)


def test_save_pruned_refuses_what_would_not_load_back(shrunk, tmp_path):
    """The old bug: current-indexed keep-sets of a shrunk net, without ``net=``."""
    net, _, keep = shrunk
    small = extract(net, keep).eval()
    folder = tmp_path / "out"
    with pytest.raises(ValueError, match=r"out: the architecture .* does not rebuild.* net="):
        save_pruned(small, folder, network_config=net.module.config, keep=keep, input_shape=(784,))
    assert not folder.exists()  # nothing written


def test_save_pruned_needs_a_network_config(tmp_path):
    with pytest.raises(TypeError, match="network_config="):
        save_pruned(torch.nn.Linear(2, 2), tmp_path, keep={}, input_shape=(2,))
