"""Checkpoint files: atomic writes, pickle-free loads, clear errors naming the file."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

from bayesprune.inference import CheckpointError, load_checkpoint, save_checkpoint
from tests.helpers import assert_same

ckpt_module = importlib.import_module("bayesprune.inference.checkpoint")

STATE = {
    "format": "test",
    "epoch": 3,
    "w": torch.arange(6.0).reshape(2, 3),
    "nested": {"a": [1, 2.5, "x"], "b": torch.ones(2, dtype=torch.int64)},
    "rng": torch.get_rng_state(),
}


def test_round_trip(tmp_path):
    path = save_checkpoint(STATE, tmp_path)
    assert path == tmp_path / "last.pt"
    assert_same(load_checkpoint(path), STATE)
    assert_same(load_checkpoint(tmp_path), STATE)  # a folder means its last.pt
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # no temporary files left


def test_custom_name_and_new_folder(tmp_path):
    path = save_checkpoint(STATE, tmp_path / "a" / "b", name="epoch3.pt")
    assert path == tmp_path / "a" / "b" / "epoch3.pt"
    assert load_checkpoint(path)["epoch"] == 3


def test_overwrite_replaces_the_file(tmp_path):
    save_checkpoint(STATE, tmp_path)
    save_checkpoint({**STATE, "epoch": 4}, tmp_path)
    assert load_checkpoint(tmp_path)["epoch"] == 4
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    path = save_checkpoint(STATE, tmp_path)
    before = path.read_bytes()

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # killed while saving

    monkeypatch.setattr(ckpt_module.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({**STATE, "epoch": 99}, tmp_path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 3


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at .*nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointError, match=f"no checkpoint at {tmp_path / 'last.pt'}"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_raises_naming_it_and_is_kept(tmp_path, damage):
    path = save_checkpoint(STATE, tmp_path)
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "garbage": os.urandom(300), "empty": b""}[
        damage
    ]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt"):
        load_checkpoint(path)
    assert path.read_bytes() == damaged  # not deleted, not rewritten


@pytest.mark.parametrize(
    "obj",
    [[1, 2, 3], torch.ones(2), {"epoch": 1, "w": torch.ones(1)}],
    ids=["list", "tensor", "no-format"],
)
def test_not_a_bayesprune_checkpoint(tmp_path, obj):
    path = tmp_path / "last.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="is not a bayesprune checkpoint"):
        load_checkpoint(path)


class Payload:
    """An arbitrary class: unpickling it would run code from the file."""

    def __reduce__(self):
        return (os.getcwd, ())


def test_never_unpickles_code(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": "x", "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="is corrupt or not a bayesprune checkpoint"):
        load_checkpoint(path)


def test_map_location(tmp_path):
    save_checkpoint(STATE, tmp_path)
    assert load_checkpoint(tmp_path, map_location="cpu")["w"].device == torch.device("cpu")


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)
