"""``bayesprune fit`` with augmentation (the loader path) and under ``torchrun``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

from bayesprune.cli.spec import Spec, SpecError
from tests.helpers import TINY_SPEC_HEAD, run_main

REPO = Path(__file__).parents[2]
SPEC = (
    TINY_SPEC_HEAD
    + """
[prior]
name = "gates"
[fit]
epochs = 2
batch_size = 16
lr = 0.01
"""
)


def test_augment_trains_from_a_loader(spec_file, tmp_path):
    spec = Spec.load(spec_file)
    spec.data["augment"] = ["crop", "flip"]
    spec.validate()
    loader = spec.training_data(spec.build_data())
    assert isinstance(loader, DataLoader) and loader.batch_size == 16
    assert spec.training_data(spec.build_data(), world=2).batch_size == 8  # global batch
    code, out, err = run_main(
        ["fit", str(spec_file), "--out", str(tmp_path / "run"), "--augment", "crop,flip",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert saved["data"]["augment"] == ["crop", "flip"]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 2 and "val_accuracy" in history[-1]


def test_augment_of_flat_inputs_or_unknown_names_is_refused(spec_file, tmp_path):
    flat = tmp_path / "flat.toml"
    flat.write_text(SPEC.replace("input_shape = [1, 28, 28]", "input_shape = [784]"))
    code, _, err = run_main(["fit", str(flat), "--out", str(tmp_path / "a"), "--augment", "crop"])
    assert code == 2 and "need image inputs (N, C, H, W)" in err
    assert not (tmp_path / "a").exists()
    code, _, err = run_main(
        ["fit", str(spec_file), "--out", str(tmp_path / "b"), "--augment", "rot"]
    )
    assert code == 2 and "[data] augment must be a list of ['crop', 'flip']" in err
    spec = Spec.load(spec_file)
    spec.data["workers"] = -1
    with pytest.raises(SpecError, match=r"\[data\] workers must be an integer >= 0"):
        spec.validate()


def test_torchrun_fits_a_spec_with_two_processes(spec_file, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "bayesprune", "fit", str(spec_file), "--out", str(run), "--no-progress",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("fit done: 2 epochs") == 1  # process 0 alone reports
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    code, out, err = run_main(["extract", str(run), "--no-latency"])
    assert code == 0, err
