"""The ``bayesprune`` command line, end to end on a tiny synthetic problem (in-process).

One module-scoped run (``fit`` then ``extract``) is shared; tests that change a run
folder work on their own copy of it.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from bayesprune.cli.main import main
from bayesprune.data import get_dataset
from bayesprune.export.pruned_network import load_pruned
from bayesprune.inference import load_checkpoint
from tests.helpers import TINY_SPEC_HEAD, run_main

SPEC = (
    TINY_SPEC_HEAD
    + """
[prior]
name = "halo"
per = "unit"             # structured: extract removes units
layers = ["fc1", "fc2"]

[fit]
epochs = 2
batch_size = 32
lr = 1e-2

[collapse]
keep = 0.5
"""
)

DATA = {
    "n_train": 64,
    "n_val": 16,
    "n_test": 32,
    "input_shape": [1, 28, 28],
    "n_classes": 10,
}


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A spec, and a run folder after ``fit`` and ``extract --no-latency``."""
    root = tmp_path_factory.mktemp("cli")
    spec = root / "tiny.toml"
    spec.write_text(SPEC)
    run = root / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: see _one_thread
    try:
        fit = run_main(["fit", str(spec), "--out", str(run), "--no-progress"])
        extract = run_main(["extract", str(run), "--no-latency"])
    finally:
        torch.set_num_threads(n)
    return spec, run, fit, extract


@pytest.fixture
def run_copy(done, tmp_path):
    spec, run, _, _ = done
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return spec, copy


def test_fit_and_extract_succeed(done):
    _, run, (code, out, err), (xcode, xout, xerr) = done
    assert (code, xcode) == (0, 0), err + xerr
    assert "fit done: 2 epochs" in out and f"run folder: {run}" in out
    assert "test accuracy: posterior point" in xout
    assert "kept: " in xout and "fc1 " in xout and "fc2 " in xout
    assert f"extracted network: {run / 'extracted' / 'model.safetensors'}" in xout


def test_run_folder_layout(done):
    _, run, _, _ = done
    for rel in [
        "spec.json",
        "checkpoints/last.pt",
        "history.json",
        "elbo.csv",
        "metrics.json",
        "extracted/model.safetensors",
        "extracted/model.json",
    ]:
        assert (run / rel).is_file(), rel
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_run_files_contents(done):
    _, run, _, _ = done
    spec = json.loads((run / "spec.json").read_text())
    assert spec["network"] == {"name": "lenet300", "width": 0.1}
    assert spec["fit"]["epochs"] == 2 and spec["collapse"] == {"keep": 0.5}

    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert all({"loss", "seconds", "val_accuracy", "val_nll", "kept"} <= set(r) for r in history)

    rows = list(csv.reader((run / "elbo.csv").read_text().splitlines()))
    assert rows[0] == ["step", "neg_elbo_per_example"]
    steps = [int(r[0]) for r in rows[1:]]
    assert steps == sorted(steps) and steps[-1] == 2 * 2  # 64 examples / 32 per batch, 2 epochs

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit"]["epochs"] == 2
    assert metrics["fit"]["final"] == history[-1]
    ext = metrics["extract"]
    assert ext["test_split"] == "test"
    assert ext["collapse"] == {"keep": 0.5}
    assert ext["after"]["params"] < ext["before"]["params"]
    assert ext["after"]["latency"] == []  # --no-latency

    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["epoch"] == 2 and ck["step_in_epoch"] == 0


def test_extracted_network_loads_and_gives_the_recorded_accuracy(done):
    _, run, _, _ = done
    metrics = json.loads((run / "metrics.json").read_text())["extract"]
    small = load_pruned(run / "extracted")
    assert (small.fc1.out_features, small.fc2.in_features) == (
        metrics["layers"]["fc1"]["kept"],
    ) * 2
    assert (small.fc2.out_features, small.fc3.in_features) == (
        metrics["layers"]["fc2"]["kept"],
    ) * 2
    assert small.fc1.out_features < 30 or small.fc2.out_features < 10  # physically smaller
    test = get_dataset("synthetic", **DATA).test
    with torch.inference_mode():
        acc = float((small(test.x).argmax(-1) == test.y).float().mean())
    assert acc == pytest.approx(metrics["accuracy_extracted"], abs=1e-12)
    saved = json.loads((run / "extracted" / "model.json").read_text())
    assert saved["extra"]["metrics"]["accuracy_extracted"] == metrics["accuracy_extracted"]


def test_fit_into_a_fitted_folder_without_resume_fails_and_overwrites_nothing(run_copy):
    spec, run = run_copy
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, out, err = run_main(["fit", str(spec), "--out", str(run), "--no-progress"])
    assert code == 2
    assert "--resume" in err and "last.pt" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_resume_with_more_epochs_continues(run_copy):
    spec, run = run_copy
    before = json.loads((run / "history.json").read_text())
    code, out, err = run_main(
        ["fit", str(spec), "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]
    )
    assert code == 0, err
    after = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in after] == [1, 2, 3]
    assert after[:2] == before
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3
    assert json.loads((run / "metrics.json").read_text())["fit"]["epochs"] == 3


def test_resume_with_another_seed_fails_unless_overridden(run_copy):
    spec, run = run_copy
    argv = ["fit", str(spec), "--out", str(run), "--resume", "--epochs", "3", "--seed", "7"]
    code, _, err = run_main([*argv, "--no-progress"])
    assert code == 2 and "seed" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main([*argv, "--resume-override", "seed", "--no-progress"])
    assert code == 0, err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 3


def test_resume_without_a_checkpoint_fails(done, tmp_path):
    spec, _, _, _ = done
    code, _, err = run_main(["fit", str(spec), "--out", str(tmp_path / "new"), "--resume"])
    assert code == 2
    assert "no checkpoint" in err and str(tmp_path / "new") in err


@pytest.mark.parametrize("command", ["extract", "resume"])
def test_corrupt_checkpoint_exits_2_naming_the_file(run_copy, command):
    spec, run = run_copy
    ckpt = run / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])  # truncated
    if command == "extract":
        argv = ["extract", str(run), "--no-latency"]
    else:
        argv = ["fit", str(spec), "--out", str(run), "--resume", "--epochs", "3", "--no-progress"]
    code, _, err = run_main(argv)
    assert code == 2
    assert str(ckpt) in err and "corrupt" in err


def test_extract_with_a_keep_override(run_copy):
    _, run = run_copy
    code, out, err = run_main(["extract", str(run), "--keep", "1.0", "--no-latency"])
    assert code == 0, err
    ext = json.loads((run / "metrics.json").read_text())["extract"]
    assert ext["collapse"]["keep"] == 1.0 and ext["kept_fraction"] == 1.0
    assert load_pruned(run / "extracted").fc1.out_features == 30


def test_extract_of_a_folder_that_is_not_a_run(tmp_path):
    code, _, err = run_main(["extract", str(tmp_path), "--no-latency"])
    assert code == 2
    assert str(tmp_path / "spec.json") in err


def test_bad_spec_exits_2_naming_the_file(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(SPEC.replace("keep = 0.5", "keep = 2"))
    code, _, err = run_main(["fit", str(spec), "--out", str(tmp_path / "run")])
    assert code == 2
    assert str(spec) in err and "[collapse] keep" in err
    assert not (tmp_path / "run").exists()


def test_help_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: bayesprune" in out and "fit" in out and "extract" in out


@pytest.mark.parametrize("command", ["fit", "extract"])
def test_subcommand_help_exits_0(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"usage: bayesprune {command}" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_console_script_points_at_main():
    import tomllib

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts["bayesprune"] == "bayesprune.cli.main:main"


def test_the_spec_seed_fixes_the_initial_weights(tmp_path):
    """Same spec, same seed: the same starting network whatever the global RNG did."""
    import tomllib

    from bayesprune.cli.spec import Spec

    spec = Spec.from_dict(tomllib.loads(SPEC))
    first = spec.build_network().state_dict()
    torch.randn(1000)
    second = spec.build_network().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    spec.fit["seed"] = 1
    other = spec.build_network().state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)
    state = torch.get_rng_state()
    spec.build_network()
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
