"""Fuzzing the readers of saved files: a checkpoint (``load_checkpoint``) and a saved network
(``load_network``, ``load``, ``load_network(like=)``) fed random bytes, or a valid file cut
short or with bits flipped, give a valid result or a :class:`CheckpointError` naming the
file -- never another exception."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from bayesprune.errors import CheckpointError
from bayesprune.export import load, load_network, save_network
from bayesprune.export.pruned_network import save_pruned
from bayesprune.inference import load_checkpoint, save_checkpoint
from bayesprune.pruning import KeepSet, extract
from bayesprune.zoo import build
from tests.helpers import mlp

FUZZ = settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@st.composite
def damaged(draw: st.DrawFn, blob: bytes) -> bytes:
    """``blob`` cut short, with 1 to 4 bits flipped, or replaced by random bytes."""
    how = draw(st.sampled_from(["cut", "flip", "random"]))
    if how == "cut":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if how == "flip":
        out = bytearray(blob)
        for _ in range(draw(st.integers(1, 4))):
            i, bit = draw(st.integers(0, len(blob) - 1)), draw(st.integers(0, 7))
            out[i] ^= 1 << bit
        return bytes(out)
    return draw(st.binary(max_size=2 * len(blob)))


def read_or_checkpoint_error(read, path):
    """``read(path)``, or ``None`` for a CheckpointError that names the file's folder."""
    try:
        return read(path)
    except CheckpointError as e:
        assert str(path.parent if path.suffix else path) in str(e), e
        return None


# --- checkpoints ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ck")
    state = {"format": "demo", "epoch": 3, "net": {"w": torch.randn(3, 2)}, "rng": [1, 2.5]}
    path = save_checkpoint(state, folder)
    return path, path.read_bytes()


def test_the_checkpoint_round_trips(checkpoint):
    path, _ = checkpoint
    assert load_checkpoint(path)["epoch"] == 3


@FUZZ
@given(data=st.data())
def test_damaged_checkpoints(checkpoint, tmp_path_factory, data):
    path, blob = checkpoint
    target = path.with_name("damaged.pt")
    target.write_bytes(data.draw(damaged(blob)))
    state = read_or_checkpoint_error(load_checkpoint, target)
    assert state is None or (isinstance(state, dict) and "format" in state)


# --- networks saved with a builder of one's own ----------------------------------------------
@pytest.fixture(scope="module")
def network(tmp_path_factory):
    folder = tmp_path_factory.mktemp("net") / "saved"
    weights, meta = save_network(mlp(3, 4, 2), folder, architecture={"widths": [3, 4, 2]})
    return folder, weights.read_bytes(), meta.read_bytes()


def damage_one(folder, which, blob, data, to):
    shutil.rmtree(to, ignore_errors=True)
    shutil.copytree(folder, to)
    (to / which).write_bytes(data.draw(damaged(blob)))
    return to


@FUZZ
@given(data=st.data(), which=st.sampled_from(["model.safetensors", "model.json"]))
def test_damaged_networks(network, data, which):
    folder, weights, meta = network
    target = damage_one(
        folder,
        which,
        weights if which == "model.safetensors" else meta,
        data,
        folder.with_name("d"),
    )
    back = read_or_checkpoint_error(lambda p: load_network(p, lambda arch: mlp(3, 4, 2)), target)
    assert back is None or isinstance(back, nn.Sequential)
    back = read_or_checkpoint_error(lambda p: load_network(p, like=mlp(3, 4, 2)), target)
    assert back is None or isinstance(back, nn.Sequential)


# --- pruned zoo networks (load: rebuilt from the recorded architecture) -------------------------
@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    net = build("lenet300", width=0.05).eval()  # 784-15-5-10
    keep = {"fc1": KeepSet(units=torch.tensor([0, 3, 4, 9]), n_units=15)}
    small = extract(net, keep, example_input=torch.zeros(1, 784))
    folder = tmp_path_factory.mktemp("pruned") / "saved"
    save_pruned(small, folder, network_config=net.config, keep=keep, input_shape=(784,))
    return folder, (folder / "model.json").read_bytes()


def test_the_pruned_network_round_trips(pruned):
    folder, _ = pruned
    assert load(folder).fc1.out_features == 4


@FUZZ
@given(data=st.data())
def test_damaged_pruned_network_descriptions(pruned, data):
    folder, meta = pruned
    target = damage_one(folder, "model.json", meta, data, folder.with_name("d"))
    back = read_or_checkpoint_error(load, target)
    assert back is None or isinstance(back, nn.Module)
