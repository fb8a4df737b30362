"""``[pretrain]``, ``[network] pretrained`` and ``[method]`` specs through the CLI: a
lottery-jackpot run whose extracted weights are bitwise the pre-trained ones, magnitude and
L1-structured runs that ``bayesprune extract`` turns into the pruned network, and the
errors (one line, exit 2) for specs and commands that do not fit together."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn as nn

from bayesprune.cli.method_run import METHOD_FORMAT
from bayesprune.cli.pretrained import load_weights
from bayesprune.cli.spec import Spec
from bayesprune.errors import SpecError
from bayesprune.export import load
from bayesprune.inference import load_checkpoint
from bayesprune.methods import magnitude_keep
from bayesprune.zoo import build
from tests.helpers import TINY_SPEC_HEAD, run_main

JACKPOT = (
    TINY_SPEC_HEAD
    + """
[pretrain]
epochs = 2
lr = 1e-2

[prior]
name = "jackpot"
sparsity = 0.8
budget_epochs = 2
layers = ["Linear"]

[fit]
epochs = 2
batch_size = 32
lr = 5e-2
"""
)

MAGNITUDE = (
    TINY_SPEC_HEAD
    + """
[method]
name = "magnitude"
keep = 0.1
finetune_epochs = 2

[fit]
epochs = 2
batch_size = 32
lr = 1e-2
"""
)

L1 = (
    TINY_SPEC_HEAD
    + """
[method]
name = "l1_structured"
keep = 0.5
steps = 2
finetune_epochs = 1

[fit]
epochs = 2
batch_size = 32
lr = 1e-2
"""
)


def refused(tmp_path, text: str, match: str) -> None:
    """``Spec.load`` of ``text`` raises a SpecError matching ``match``."""
    path = tmp_path / "spec.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=match):
        Spec.load(path)


def fit_and_extract(tmp_path, text: str, name: str = "spec"):
    spec = tmp_path / f"{name}.toml"
    spec.write_text(text)
    run = tmp_path / name
    code, out, err = run_main(["fit", str(spec), "--out", str(run), "--no-progress"])
    assert code == 0, err
    xcode, xout, xerr = run_main(["extract", str(run), "--no-latency"])
    assert xcode == 0, xerr
    return run, out, xout


def linears(module: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}


@pytest.fixture(scope="module")
def jackpot_run(tmp_path_factory):
    return fit_and_extract(tmp_path_factory.mktemp("jackpot"), JACKPOT, "jackpot")


# --- lottery jackpots: [pretrain] and [network] pretrained ------------------------------


def test_jackpot_spec_extracts_the_pretrained_weights_bitwise(jackpot_run):
    run, out, xout = jackpot_run
    assert "pretrain done: 2 dense epochs" in out and "fit done: 2 epochs" in out
    assert "extracted network:" in xout
    initial = build("lenet300", width=0.1)
    load_weights(initial, run / "pretrained", "test")  # what [pretrain] trained
    spec_start = Spec.load(run.parent / "jackpot.toml").build_network()
    assert not torch.equal(initial.fc1.weight, spec_start.fc1.weight)  # really trained
    small = load(run / "extracted")
    kept = 0
    for name, layer in linears(small).items():
        w, w0 = layer.weight, linears(initial)[name].weight
        assert w.shape == w0.shape
        alive = w != 0
        assert torch.equal(w[alive], w0[alive]), name  # every kept weight is w0, bitwise
        assert torch.equal(layer.bias, linears(initial)[name].bias), name  # frozen
        kept += int(alive.sum())
    total = sum(m.weight.numel() for m in linears(initial).values())
    assert kept == round(0.2 * total)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["pretrain"]["epochs"] == 2 and metrics["pretrain"]["source"] == "[pretrain]"
    assert "val_accuracy" in metrics["pretrain"]["final"]


def test_network_pretrained_loads_a_saved_network_or_state_dict(jackpot_run, tmp_path):
    run, _, _ = jackpot_run
    state = tmp_path / "weights.pt"
    initial = build("lenet300", width=0.1)
    load_weights(initial, run / "pretrained", "test")
    torch.save(initial.state_dict(), state)
    from_pt = JACKPOT.replace("[pretrain]\nepochs = 2\nlr = 1e-2\n", "").replace(
        "width = 0.1", f"width = 0.1\npretrained = {json.dumps(str(state))}"
    )
    from_folder = from_pt.replace(json.dumps(str(state)), json.dumps(str(run / "pretrained")))
    for source, text in (("pt", from_pt), ("folder", from_folder)):
        second, _, _ = fit_and_extract(tmp_path, text, source)
        again = build("lenet300", width=0.1)
        load_weights(again, second / "pretrained", "test")  # copied into the run folder
        for k, v in initial.state_dict().items():
            assert torch.equal(again.state_dict()[k], v), (source, k)
        small = load(second / "extracted")
        for name, layer in linears(small).items():
            alive = layer.weight != 0
            assert torch.equal(layer.weight[alive], linears(initial)[name].weight[alive])


def test_a_missing_pretrained_file_is_one_line_naming_the_key(tmp_path):
    text = JACKPOT.replace("[pretrain]\nepochs = 2\nlr = 1e-2\n", "").replace(
        "width = 0.1", 'width = 0.1\npretrained = "no/such/weights"'
    )
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    code, _, err = run_main(["fit", str(spec), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "[network] pretrained" in err and "no/such/weights" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("[pretrain]\nepochs = 2\nlr = 1e-2\n", "", r"\[pretrain\].*\[network\] pretrained"),
        ("lr = 1e-2\n\n[prior]", "lr = 1e-2\nwarmup = 3\n\n[prior]", r"\[pretrain\].*'warmup'"),
        ("[pretrain]\nepochs = 2", "[pretrain]\nepochs = 0", r"\[pretrain\] epochs"),
        ("[pretrain]\nepochs = 2\n", "[pretrain]\n", r"\[pretrain\] needs epochs"),
        ("lr = 1e-2\n\n[prior]", 'lr = "fast"\n\n[prior]', r"\[pretrain\] lr"),
        ("width = 0.1", 'width = 0.1\npretrained = "w.pt"', r"pretrained and \[pretrain\]"),
        ("width = 0.1", "width = 0.1\npretrained = 3", r"\[network\] pretrained must be"),
    ],
)
def test_bad_pretrain_settings_name_the_key(tmp_path, old, new, match):
    assert old in JACKPOT
    refused(tmp_path, JACKPOT.replace(old, new, 1), match)


# --- [method]: magnitude and L1-structured baselines --------------------------------------


@pytest.fixture(scope="module")
def magnitude_run(tmp_path_factory):
    return fit_and_extract(tmp_path_factory.mktemp("magnitude"), MAGNITUDE, "magnitude")


def test_magnitude_run_prunes_the_dense_net_and_fine_tunes_the_rest(magnitude_run):
    run, out, xout = magnitude_run
    assert "fit done (magnitude): 2 dense + 2 fine-tune epochs" in out
    assert "test accuracy: pruned network" in xout
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["format"] == METHOD_FORMAT and ck["method"] == "magnitude"
    dense = build("lenet300", width=0.1)
    load_weights(dense, run / "dense", "test")
    expected = magnitude_keep(dense, keep=0.1)  # the mask is the dense net's top-|w|
    small = load(run / "extracted")
    for name, layer in linears(small).items():
        alive = layer.weight != 0
        assert torch.equal(alive, expected[name].weight_mask), name
        assert not torch.equal(layer.weight[alive], linears(dense)[name].weight[alive])  # tuned
    history = json.loads((run / "history.json").read_text())
    assert [h["stage"] for h in history] == ["dense"] * 2 + ["finetune"] * 2
    metrics = json.loads((run / "metrics.json").read_text())
    ext = metrics["extract"]
    assert ext["kept_fraction"] == pytest.approx(0.1, abs=1e-3)
    assert ext["accuracy_extracted"] == pytest.approx(ext["accuracy_posterior_point"])
    assert ext["collapse"] == {"method": {"name": "magnitude", "keep": 0.1, "finetune_epochs": 2}}
    assert metrics["fit"]["val_accuracy_pruned"] == pytest.approx(history[-1]["val_accuracy"])


def test_l1_run_removes_units_and_matches_the_masked_network(tmp_path):
    run, out, xout = fit_and_extract(tmp_path, L1, "l1")
    assert "fit done (l1_structured): 2 dense + 2 fine-tune epochs" in out
    assert "units per layer: fc1 30 -> 15, fc2 10 -> 5" in xout
    history = json.loads((run / "history.json").read_text())
    assert [(h["stage"], h["round"]) for h in history[2:]] == [("finetune", 1), ("finetune", 2)]
    arch = json.loads((run / "extracted" / "model.json").read_text())["architecture"]
    assert {n: len(u["kept"]) for n, u in arch["units"].items()} == {"fc1": 15, "fc2": 5}
    masked = build("lenet300", width=0.1)  # the pruned, fine-tuned net as fitted, dense shapes
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    masked.load_state_dict({k.removeprefix("module."): v for k, v in ck["net"].items()})
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(load(run / "extracted")(x), masked.eval()(x))


def test_a_structured_conv_method_spec_fits_lenet5(tmp_path):
    text = L1.replace('name = "lenet300"\nwidth = 0.1              # 784-30-10-10', "")
    text = text.replace("[network]\n", '[network]\nname = "lenet5"\nwidth = 0.2\n')
    text = text.replace("steps = 2\n", "")
    run, _, xout = fit_and_extract(tmp_path, text, "l1conv")
    assert "units per layer: conv1 4 -> 2, conv2 10 -> 5, fc1 100 -> 50" in xout


def test_report_on_a_method_run_is_a_one_line_error(magnitude_run):
    run, _, _ = magnitude_run
    code, out, err = run_main(["report", str(run), "--no-latency"])
    assert code == 2 and "[method] run (magnitude)" in err and "no posterior" in err
    assert len(err.strip().splitlines()) == 1


def test_extract_keep_override_and_resume_are_refused_on_a_method_run(magnitude_run, tmp_path):
    run, _, _ = magnitude_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    code, _, err = run_main(["extract", str(copy), "--keep", "0.5", "--no-latency"])
    assert code == 2 and "--keep/--threshold" in err and "[method] keep" in err
    spec = tmp_path / "magnitude.toml"
    spec.write_text(MAGNITUDE)
    code, _, err = run_main(["fit", str(spec), "--out", str(copy), "--resume", "--no-progress"])
    assert code == 2 and "finished [method] run" in err


@pytest.mark.parametrize(
    ("add", "match"),
    [
        ('[prior]\nname = "halo"\n', r"\[method\] and \[prior\] cannot go together"),
        ("[collapse]\nkeep = 0.5\n", r"\[method\] and \[collapse\]"),
        ('[guide]\nname = "map"\n', r"\[method\] and \[guide\]"),
        ("[pretrain]\nepochs = 1\n", r"\[method\] and \[pretrain\]"),
    ],
)
def test_method_with_a_prior_section_is_refused(tmp_path, add, match):
    refused(tmp_path, MAGNITUDE + add, match)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ('name = "magnitude"', 'name = "random"', r"\[method\] name must be one of"),
        ("keep = 0.1\n", "", r"\[method\] magnitude needs keep"),
        ("keep = 0.1", "keep = 1.5", r"\[method\] keep must be a fraction"),
        ("keep = 0.1", "keep = 0.1\nsteps = 2", r"unknown key\(s\) \['steps'\] for magnitude"),
        ("keep = 0.1", 'keep = 0.1\nscope = "unit"', r"\[method\] scope"),
        ("finetune_epochs = 2", "finetune_epochs = -1", r"\[method\] finetune_epochs"),
        ("finetune_epochs = 2", "finetune_epochs = 2\nfinetune_lr = 0", r"finetune_lr"),
        ("keep = 0.1", "keep = 0.1\nlayers = 3", r"method.layers must be"),
        ("lr = 1e-2", "lr = 1e-2\nremove_dead = true", r"\[fit\] remove_dead is not used"),
    ],
)
def test_bad_method_settings_name_the_key(tmp_path, old, new, match):
    assert old in MAGNITUDE
    refused(tmp_path, MAGNITUDE.replace(old, new, 1), match)


def test_l1_settings_are_checked_too(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(L1.replace("steps = 2", "steps = 0"))
    with pytest.raises(SpecError, match=r"\[method\] steps must be an integer >= 1"):
        Spec.load(path)
    path.write_text(L1.replace("steps = 2", 'steps = 2\nlayers = ["nothing"]'))
    with pytest.raises(SpecError, match=r"\[method\].*nothing"):
        Spec.load(path).build_net()


def test_a_method_spec_round_trips_through_spec_json(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(L1)
    spec = Spec.load(path)
    assert spec.prior == {"name": "dense"} and spec.build_net().layer_names == ("fc1", "fc2")
    again = Spec.from_dict(spec.to_dict())
    assert again.to_dict() == spec.to_dict() and "prior" not in spec.to_dict()


def test_a_resumed_jackpot_run_reloads_its_pretrained_weights(jackpot_run, tmp_path):
    run, _, _ = jackpot_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    spec = tmp_path / "jackpot.toml"
    spec.write_text(JACKPOT)
    argv = ["fit", str(spec), "--out", str(copy), "--resume", "--epochs", "3", "--no-progress"]
    code, out, err = run_main(argv)
    assert code == 0, err
    assert "pretrain done" not in out and "fit done: 3 epochs" in out  # not trained again
    code, _, err = run_main(["extract", str(copy), "--no-latency"])
    assert code == 0, err
    initial = build("lenet300", width=0.1)
    load_weights(initial, run / "pretrained", "test")
    for name, layer in linears(load(copy / "extracted")).items():
        alive = layer.weight != 0
        assert torch.equal(layer.weight[alive], linears(initial)[name].weight[alive]), name
