"""``[budget]`` and ``--budget`` through the CLI: the spec section and its errors, the
flag that sets it, a budgeted ``fit`` + ``extract`` on tiny synthetic data (the fit steers
to the budget, extract cuts to it and records how), and a killed budgeted fit resumed
exactly."""

from __future__ import annotations

import json
import shutil

import pytest

from bayesprune.budget import Budget
from bayesprune.cli.spec import Spec
from bayesprune.errors import SpecError
from bayesprune.inference import load_checkpoint
from bayesprune.pruning.budget_control import BudgetControl
from tests.cli.test_method_specs import MAGNITUDE, refused
from tests.conftest import Killed, kill_at_step
from tests.helpers import TINY_SPEC_HEAD, run_main

# LeNet-300-100 at width 0.1 (784-30-10-10): gates on fc1 and fc2, 4 steps per epoch;
# the controller updates every 2 steps and cuts to the budget at step ceil(0.8 * 8) = 7 (the
# 0-based index of the fit's last step)
SPEC = (
    TINY_SPEC_HEAD
    + """
[prior]
name = "gates"
gamma = 0.01
cost = "flops"

[guide]
name = "map"

[fit]
epochs = 2
batch_size = 16
lr = 1e-2
role_lr = { gate = 0.5 }
remove_dead = true
checkpoint_every = 2

[budget]
flops = 0.3
settle = 0.8
every = 2
"""
)
#: the same network and prior with a [collapse] rule instead of a [budget]
NO_BUDGET = SPEC.split("[budget]")[0] + "[collapse]\nthreshold = 0.5\n"


def write(tmp_path, text: str, name: str = "spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def records(run) -> list[dict]:
    """The run's history without wall-clock times."""
    history = json.loads((run / "history.json").read_text())
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def fit(spec, run, *flags: str) -> tuple[int, str, str]:
    return run_main(["fit", str(spec), "--out", str(run), "--no-progress", *flags])


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """A budgeted spec, and its run folder after ``fit`` and ``extract --no-latency``."""
    root = tmp_path_factory.mktemp("budget")
    spec = root / "tiny.toml"
    spec.write_text(SPEC)
    run = root / "run"
    fitted = fit(spec, run)
    extracted = run_main(["extract", str(run), "--no-latency"])
    return spec, run, fitted, extracted


# --- the [budget] section -------------------------------------------------------------------


def test_a_budget_section_builds_the_controller_and_the_cut(spec_file):
    spec = Spec.load(spec_file)
    assert spec.budget == {"flops": 0.3, "settle": 0.8, "every": 2}
    control = spec.fit_kwargs()["budget"]
    assert isinstance(control, BudgetControl)
    assert (control.budget, control.settle, control.every) == (Budget(flops=0.3), 0.8, 2)
    assert control.ramp == 0.6  # settings not given keep BudgetControl's defaults
    assert spec.fit_kwargs()["budget"] is not control  # a new controller for every fit
    assert spec.collapse_kwargs() == {"budget": Budget(flops=0.3)}
    again = Spec.from_dict(json.loads(json.dumps(spec.to_dict())))  # as in spec.json
    assert again.budget == spec.budget


def test_units_may_be_a_table_of_layers(tmp_path):
    spec = Spec.load(
        write(tmp_path, SPEC.replace("flops = 0.3", "units = { fc1 = 0.5, fc2 = 0.25 }"))
    )
    assert spec.collapse_kwargs()["budget"].per_layer == {"fc1": 0.5, "fc2": 0.25}


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("\nevery = 2", "\npatience = 3", r"\[budget\] unknown key\(s\) \['patience'\]"),
        ("flops = 0.3", "flops = 0.3\nparams = 0.5", r"exactly one of .* got params and flops"),
        ("flops = 0.3", "flops = 0", r"\[budget\] flops must be a fraction .* got 0"),
        ("flops = 0.3", "flops = 1.5", r"\[budget\] flops must be a fraction"),
        ("flops = 0.3", 'flops = "0.3"', r"\[budget\] flops must be a fraction"),
        ("flops = 0.3", "", r"\[budget\] needs one of weights, units, params, flops"),
        ("flops = 0.3\nsettle = 0.8\nevery = 2", "", r"\[budget\] needs one of weights"),
        ("flops = 0.3", "units = {}", r"\[budget\] units per layer needs at least one layer"),
        ("flops = 0.3", "units = { fc1 = 2 }", r"\[budget\] units\['fc1'\] must be a fraction"),
        ("flops = 0.3", "flops = { fc1 = 0.5 }", r"\[budget\] only units takes per-layer"),
        ("settle = 0.8", "settle = 0.5", r"\[budget\] need warmup <= ramp <= settle"),
        ("\nevery = 2", "\nevery = 0", r"\[budget\] every must be an integer >= 1"),
        (
            'cost = "flops"',
            'cost = "uniform"',
            r"\[budget\] flops: .*'uniform' can be held to units only; \[prior\] cost = \"flops\"",
        ),
        ("[budget]", "[collapse]\nkeep = 0.5\n\n[budget]", r"\[collapse\] keep and \[budget\]"),
    ],
)
def test_a_bad_budget_section_names_file_section_and_key(tmp_path, old, new, match):
    assert old in SPEC
    refused(tmp_path, SPEC.replace(old, new, 1), r"spec\.toml: .*" + match)


def test_a_budget_is_refused_for_a_method_and_for_a_prior_without_a_strength(tmp_path):
    refused(tmp_path, MAGNITUDE + "\n[budget]\nweights = 0.1\n", r"\[method\] and \[budget\]")
    halo = NO_BUDGET.split("[prior]")[0] + '[prior]\nname = "halo"\n\n[budget]\nflops = 0.3\n'
    refused(tmp_path, halo, r"\[budget\] flops: the halo prior can be held to weights only")
    with pytest.raises(SpecError, match=r"spec\.toml: \[budget\] must be a table"):
        Spec.load(write(tmp_path, "budget = 0.1\n" + NO_BUDGET))


def test_a_budget_on_a_layer_without_units_is_refused_before_the_run_folder(tmp_path):
    path = write(tmp_path, SPEC.replace("flops = 0.3", "units = { fc3 = 0.5 }"))
    code, _, err = fit(path, tmp_path / "run")
    assert code == 2 and "[budget] units names layer(s) ['fc3']" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# --- --budget ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("flops=0", "flops must be a fraction"),
        ("flops", "expected METRIC=FRACTION"),
        ("size=0.1", "unknown measure 'size'"),
        ("flops=a lot", "flops must be a number"),
    ],
)
def test_a_bad_budget_flag_is_one_line_and_exit_2(tmp_path, value, match):
    code, _, err = fit(write(tmp_path, NO_BUDGET), tmp_path / "run", "--budget", value)
    assert code == 2 and err.startswith("bayesprune fit: error: Budget: ") and match in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_budget_flag_sets_the_measure_keeps_the_settings_and_replaces_collapse(tmp_path):
    run = tmp_path / "run"
    code, out, err = fit(
        write(tmp_path, NO_BUDGET.replace("epochs = 2", "epochs = 1")), run, "--budget", "units=0.5"
    )
    assert code == 0, err
    saved = json.loads((run / "spec.json").read_text())
    assert saved["budget"] == {"units": 0.5} and saved["collapse"] == {}
    assert "budget units 0.5: the posterior" in out

    path = write(tmp_path, SPEC.replace("epochs = 2", "epochs = 1"), "budget.toml")
    code, _, err = fit(path, tmp_path / "other", "--budget", "units = 0.5")
    assert code == 0, err
    saved = json.loads((tmp_path / "other" / "spec.json").read_text())
    assert saved["budget"] == {"units": 0.5, "settle": 0.8, "every": 2}

    path = write(tmp_path, MAGNITUDE, "magnitude.toml")
    code, _, err = fit(path, tmp_path / "method", "--budget", "flops=0.1")
    assert code == 2 and "[method] and [budget] cannot go together" in err


# --- a budgeted fit, end to end -------------------------------------------------------------


def test_the_fit_steers_to_the_budget_and_extract_cuts_to_it(budget_run):
    _, run, (code, out, err), (xcode, xout, xerr) = budget_run
    assert (code, xcode) == (0, 0), err + xerr
    history = json.loads((run / "history.json").read_text())
    assert all({"budget", "budget_trace"} <= set(h) for h in history)
    steered = history[-1]["budget"]
    assert steered["phase"] == "cut" and steered["cut_report"]["step"] == 7
    assert steered["size"] <= 0.3
    assert "budget flops 0.3: the posterior kept" in out and "at step 7" in out

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit"]["final"]["budget"] == steered
    ext = metrics["extract"]
    assert ext["collapse"] == {"budget": {"flops": 0.3}}
    report = ext["budget"]
    assert report.keys() == {"metric", "target", "posterior", "final", "cut", "measured"}
    assert (report["metric"], report["target"], report["measured"]) == ("flops", 0.3, True)
    assert report["final"] <= report["posterior"] and report["final"] <= 0.3
    assert ext["after"]["macs"] / ext["before"]["macs"] == pytest.approx(report["final"])
    assert "budget flops 0.3: the posterior kept" in xout and "counted on the extracted" in xout


def test_extract_may_cut_to_another_budget_or_keep_instead(budget_run, tmp_path):
    _, run, _, _ = budget_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    code, _, err = run_main(["extract", str(copy), "--budget", "units=0.2", "--no-latency"])
    assert code == 0, err
    ext = json.loads((copy / "metrics.json").read_text())["extract"]
    assert ext["collapse"] == {"budget": {"units": 0.2}} and ext["budget"]["final"] <= 0.2
    code, _, err = run_main(["extract", str(copy), "--keep", "0.5", "--no-latency"])
    assert code == 0, err
    ext = json.loads((copy / "metrics.json").read_text())["extract"]
    assert ext["collapse"] == {"keep": 0.5, "threshold": None} and "budget" not in ext
    code, _, err = run_main(["extract", str(copy), "--keep", "0.5", "--budget", "flops=0.2"])
    assert code == 2 and "--budget decides the cut by itself" in err


def test_a_killed_budgeted_fit_resumes_exactly(budget_run, tmp_path, monkeypatch):
    spec, straight, _, _ = budget_run
    run = tmp_path / "run"
    kill_at_step(monkeypatch, 7)  # before the cut (the last step); last checkpoint: step 6
    with pytest.raises(Killed):
        fit(spec, run)
    monkeypatch.undo()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == 6

    code, _, err = fit(spec, run, "--resume", "--budget", "flops=0.5")
    assert code == 2 and "a resumed fit keeps its budget" in err and "{'flops': 0.3}" in err
    code, out, err = fit(spec, run, "--resume", "--budget", "flops=0.3")  # the same: fine
    assert code == 0, err
    assert records(run) == records(straight)
    a = load_checkpoint(run / "checkpoints" / "last.pt")
    b = load_checkpoint(straight / "checkpoints" / "last.pt")
    assert a["stash"] == b["stash"]
    for part in ("net", "guide"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert a[part][k].equal(b[part][k]), (part, k)
