"""``bayesprune fit`` + ``extract`` with block gates on a tiny ResNet-20 (synthetic data),
and the shipped ``models/blockgates-resnet20.toml`` spec."""

import json
import tomllib
from pathlib import Path

import pytest
import torch

from bayesprune.blocks import Shortcut
from bayesprune.cli.spec import Spec
from bayesprune.data import get_dataset
from bayesprune.export.pruned_network import load_pruned
from tests.helpers import run_main

MODELS = Path(__file__).resolve().parents[2] / "models"

SPEC = """\
[network]
name = "resnet20"
width = 0.25
in_channels = 1
input_size = 8

[data]
name = "synthetic"
n_train = 64
n_val = 16
n_test = 32
input_shape = [1, 8, 8]
n_classes = 10

[prior]
name = "block_gates"
gamma = 500.0
cost = "flops"

[guide]
name = "map"

[fit]
epochs = 2
batch_size = 32
lr = 1e-3
role_lr = { gate = 0.5 }

[collapse]
threshold = 0.5
"""


def test_fit_and_extract_remove_blocks(tmp_path):
    spec = tmp_path / "blocks.toml"
    spec.write_text(SPEC)
    run = tmp_path / "run"
    code, out, err = run_main(["fit", str(spec), "--out", str(run), "--no-progress"])
    assert code == 0, err
    history = json.loads((run / "history.json").read_text())
    assert set(history[-1]["units"]) == {f"layer{s}.{b}" for s in (1, 2, 3) for b in range(3)}
    code, out, err = run_main(["extract", str(run), "--no-latency"])
    assert code == 0, err
    assert "layer1.0 " in out and "/1" in out
    arch = json.loads((run / "extracted" / "model.json").read_text())
    arch = arch.get("architecture", arch)
    removed = arch["identity"]
    assert removed  # γ far above what a block is worth on 64 examples
    small = load_pruned(run / "extracted")
    for name in removed:
        assert isinstance(small.get_submodule(name), Shortcut)
    metrics = json.loads((run / "metrics.json").read_text())["extract"]
    assert metrics["after"]["params"] < metrics["before"]["params"]
    test = get_dataset(
        "synthetic", **{k: v for k, v in tomllib.loads(SPEC)["data"].items() if k != "name"}
    ).test
    with torch.inference_mode():
        acc = float((small(test.x).argmax(-1) == test.y).float().mean())
    assert acc == pytest.approx(metrics["accuracy_extracted"])


def test_shipped_spec_builds():
    spec = Spec.load(MODELS / "blockgates-resnet20.toml")
    net = spec.build_net(spec.build_network())
    assert len(net.gates) == 9 and net.module.conv1.in_channels == 1
    assert spec.fit["role_lr"] == {"gate": 1e-2}
    assert spec.build_guide(net).gate_probs["layer1/0/gate"].shape == (1,)
