"""save_pruned / load_pruned: extracted networks round-trip through safetensors + JSON."""

import json
import pickle
import struct
import zlib

import pytest
import torch

from bayesprune.export.pruned_network import architecture, build_pruned, load_pruned, save_pruned
from bayesprune.pruning import KeepSet, extract
from bayesprune.zoo import build
from tests.helpers import save_extracted

# (network name, build kwargs, structured layers, all layers)
NETS = [
    ("lenet300", {}, ["fc1", "fc2"], ["fc1", "fc2", "fc3"]),
    ("lenet5", {"width": 0.5}, ["conv1", "conv2", "fc1"], ["conv1", "conv2", "fc1", "fc2"]),
]


def pruned(name, kwargs, structured, layers, seed=0):
    """A zoo network and structured and unstructured keep-sets for it."""
    g = torch.Generator().manual_seed(seed)
    net = build(name, **kwargs).eval()
    keep = {}
    for n in layers:
        w = net.get_submodule(n).weight
        kw = {"weight_mask": torch.rand(w.shape, generator=g) < 0.3}
        if n in structured:
            k = int(torch.randint(1, w.shape[0], (1,), generator=g))
            kw.update(units=torch.randperm(w.shape[0], generator=g)[:k], n_units=w.shape[0])
        keep[n] = KeepSet(**kw)
    return net, keep


@pytest.fixture(params=NETS, ids=[n[0] for n in NETS])
def saved(request, tmp_path):
    name, kwargs, structured, layers = request.param
    net, keep = pruned(name, kwargs, structured, layers)
    small, paths = save_extracted(
        net, keep, tmp_path / "extracted", extra={"metrics": {"accuracy": 0.5}}
    )
    return net, keep, small, tmp_path / "extracted", paths


def test_round_trip_gives_the_same_outputs(saved):
    _, _, small, folder, _ = saved
    back = load_pruned(folder)
    assert not back.training
    x = torch.randn(6, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back(x), small(x), rtol=0, atol=0)
    assert back.state_dict().keys() == small.state_dict().keys()
    for k, v in small.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_round_trip_keeps_shapes_and_zeros(saved):
    net, keep, small, folder, _ = saved
    back = load_pruned(folder)
    for n in keep:
        b, s = back.get_submodule(n), small.get_submodule(n)
        assert b.weight.shape == s.weight.shape
        assert torch.equal(b.weight == 0, s.weight == 0)  # unstructured zeros survive
    assert sum(p.numel() for p in back.parameters()) < sum(p.numel() for p in net.parameters())


def test_the_files_are_safetensors_and_json(saved):
    _, keep, _, folder, paths = saved
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.safetensors"]
    assert paths == (folder / "model.safetensors", folder / "model.json")
    doc = json.loads((folder / "model.json").read_text())
    arch = doc["architecture"]
    assert arch["input_shape"] == [1, 28, 28]
    assert set(arch["units"]) == {n for n, k in keep.items() if k.units is not None}
    for n, u in arch["units"].items():
        assert u == {"kept": keep[n].units.tolist(), "n_units": keep[n].n_units}
    assert doc["extra"] == {"metrics": {"accuracy": 0.5}}
    # safetensors: an 8-byte little-endian header length, a JSON header, raw tensor bytes
    blob = (folder / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    assert set(header) - {"__metadata__"} == set(doc["tensors"])
    assert b"\x80\x04" not in blob[: 8 + n]  # no pickle protocol marker in the header


def test_loading_unpickles_nothing(saved, monkeypatch):
    _, _, small, folder, _ = saved

    def refuse(*args, **kwargs):
        raise AssertionError("load_pruned must not unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    back = load_pruned(folder)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back(x), small(x))


def test_the_json_file_path_works_too(saved):
    _, _, small, folder, _ = saved
    back = load_pruned(folder / "model.json")
    assert torch.equal(back.state_dict()["fc2.weight"], small.state_dict()["fc2.weight"])


def test_build_pruned_matches_the_extracted_shapes(saved):
    net, keep, small, _, _ = saved
    fresh = build_pruned(architecture(net.config, keep, (1, 28, 28)))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in small.state_dict().items()
    }


def test_unstructured_only_keeps_the_original_shapes(tmp_path):
    net = build("lenet300", width=0.25)
    mask = torch.zeros_like(net.fc1.weight, dtype=torch.bool)
    mask[::2] = True
    keep = {"fc1": KeepSet(weight_mask=mask)}
    small = extract(net, keep)
    save_pruned(small, tmp_path, network_config=net.config, keep=keep, input_shape=(784,))
    back = load_pruned(tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["architecture"]["units"] == {}
    assert back.fc1.weight.shape == net.fc1.weight.shape
    assert torch.equal(back.fc1.weight, small.fc1.weight)


# --- corrupt or mismatched files ------------------------------------------------------------


def _flip_byte(path, offset_from_end=5):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_json(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _corrupt_weights(folder):
    _flip_byte(folder / "model.safetensors")


def _truncate_weights(folder):
    p = folder / "model.safetensors"
    p.write_bytes(p.read_bytes()[:100])


def _truncate_json(folder):
    p = folder / "model.json"
    p.write_text(p.read_text()[:50])


def _wrong_units(folder):
    def edit(doc):
        units = next(iter(doc["architecture"]["units"].values()))
        units["kept"] = list(range(units["n_units"]))  # the saved net kept fewer

    _edit_json(folder / "model.json", edit)


def _unknown_layer(folder):
    _edit_json(
        folder / "model.json",
        lambda d: d["architecture"]["units"].update({"nope": {"kept": [0], "n_units": 2}}),
    )


def _unknown_network(folder):
    _edit_json(folder / "model.json", lambda d: d["architecture"]["network"].update(name="nope"))


def _no_network(folder):
    _edit_json(folder / "model.json", lambda d: d["architecture"].pop("network"))


CORRUPTIONS = [
    (_corrupt_weights, "model.safetensors.*sha256"),
    (_truncate_weights, "model.safetensors.*truncated"),
    (_truncate_json, "model.json.*not valid JSON"),
    (_wrong_units, "saved as .* but the built module has"),
    (_unknown_layer, "model.json.* cannot be rebuilt.*'nope'"),
    (_unknown_network, "model.json.*unknown network 'nope'"),
    (_no_network, "model.json.* cannot be rebuilt: missing key 'network'"),
]


@pytest.mark.parametrize(
    ("corrupt", "match"), CORRUPTIONS, ids=[c[0].__name__ for c in CORRUPTIONS]
)
def test_corrupt_files_raise_value_error_naming_the_problem(saved, corrupt, match):
    _, _, _, folder, _ = saved
    corrupt(folder)
    with pytest.raises(ValueError, match=match):
        load_pruned(folder)


def test_missing_folder_or_file(tmp_path, saved):
    with pytest.raises(FileNotFoundError):
        load_pruned(tmp_path / "nowhere")
    _, _, _, folder, _ = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError):
        load_pruned(folder)


def test_saving_twice_replaces_both_files(saved):
    net, keep, small, folder, _ = saved
    kwargs = {k: v for k, v in net.config.items() if k != "name"}
    net2, keep2 = pruned(net.config["name"], kwargs, [], list(keep), seed=zlib.crc32(b"2"))
    assert net2.config == net.config
    small2, _ = save_extracted(net2, keep2, folder)
    back = load_pruned(folder)
    assert {k: v.shape for k, v in back.state_dict().items()} == {
        k: v.shape for k, v in small2.state_dict().items()
    }
