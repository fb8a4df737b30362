"""``bayesprune.atomic``: the one way files are replaced -- whole or not at all, flushed to
disk with their folder -- and the writers that go through it."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import bayesprune.atomic as atomic
from bayesprune.atomic import atomic_output, atomic_write
from bayesprune.export import save_network
from bayesprune.inference import save_checkpoint


class Boom(Exception):
    pass


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def synced(monkeypatch):
    """Record what is fsynced: ``("file", name)`` and ``("dir", path)``, in order."""
    calls = []
    real_file, real_dir = atomic._fsync_file, atomic._fsync_dir

    def file(path):
        calls.append(("file", path.name))
        real_file(path)

    def folder(path):
        calls.append(("dir", path))
        real_dir(path)

    monkeypatch.setattr(atomic, "_fsync_file", file)
    monkeypatch.setattr(atomic, "_fsync_dir", folder)
    return calls


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_a_failing_writer_leaves_the_old_file_and_no_temporary_file(tmp_path, error):
    path = atomic_write(tmp_path / "f.bin", b"old")

    def half(f):
        f.write(b"half of the new")
        raise error

    with pytest.raises(error):
        atomic_write(path, half)
    assert path.read_bytes() == b"old" and names(tmp_path) == ["f.bin"]


def test_a_failing_block_leaves_no_file_where_there_was_none(tmp_path):
    with pytest.raises(Boom), atomic_output(tmp_path / "f.txt") as tmp:
        tmp.write_text("partial")
        raise Boom
    assert names(tmp_path) == []


def test_a_block_that_writes_nothing_is_an_error_and_keeps_the_old_file(tmp_path):
    path = atomic_write(tmp_path / "f.bin", b"old")
    with pytest.raises(FileNotFoundError), atomic_output(path):
        pass
    assert path.read_bytes() == b"old" and names(tmp_path) == ["f.bin"]


def test_the_file_is_flushed_before_the_rename_and_the_folder_after(tmp_path, synced):
    path = tmp_path / "f.bin"
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(list(synced))
        real_replace(src, dst)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(atomic.os, "replace", replace)
        atomic_write(path, bytearray(b"abc"))
    ((kind, tmp_name),) = seen[0]
    assert kind == "file" and tmp_name.startswith(".f.bin.") and tmp_name.endswith(".tmp")
    assert synced[-1] == ("dir", tmp_path)
    assert path.read_bytes() == b"abc"


def test_checkpoints_and_saved_networks_go_through_it(tmp_path, synced):
    save_checkpoint({"format": "demo", "w": torch.ones(2)}, tmp_path / "ck")
    assert [c for c in synced if c[0] == "dir"] == [("dir", tmp_path / "ck")]
    synced.clear()
    save_network(nn.Linear(2, 1), tmp_path / "net", architecture={})
    weights, meta = (name for kind, name in synced if kind == "file")
    assert weights.startswith(".model.safetensors.") and meta.startswith(".model.json.")
    assert synced[-1] == ("dir", tmp_path / "net")
    assert names(tmp_path / "ck") == ["last.pt"]
