"""``bayesprune report RUN_DIR`` on a run folder made by ``bayesprune fit`` (tiny, synthetic)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from bayesprune.cli.fitted import load_fitted, read_elbo
from bayesprune.diagnostics._arviz import az
from tests.helpers import TINY_SPEC_HEAD, run_main

SPEC = (
    TINY_SPEC_HEAD
    + """
[prior]
name = "gates"
gamma = 0.2
cost = "uniform"

[guide]
name = "map"

[fit]
epochs = 2
batch_size = 32
lr = 1e-2
role_lr = { gate = 0.5 }   # units die fast: removed during the fit
remove_dead = true

[collapse]
threshold = 0.5
"""
)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A run folder after ``fit`` and ``report --no-latency``."""
    root = tmp_path_factory.mktemp("report_cli")
    spec = root / "tiny.toml"
    spec.write_text(SPEC)
    run = root / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit = run_main(["fit", str(spec), "--out", str(run), "--no-progress"])
        rep = run_main(["report", str(run), "--num-samples", "8", "--no-latency"])
    finally:
        torch.set_num_threads(n)
    return run, fit, rep


def test_report_writes_html_and_idata(reported):
    run, (fcode, _, ferr), (code, out, err) = reported
    assert (fcode, code) == (0, 0), ferr + err
    html = run / "report" / "report.html"
    lines = out.strip().splitlines()
    assert lines[-1] == f"report: {html}" and html.is_file()
    assert lines[-2] == f"ArviZ InferenceData: {run / 'idata.nc'}"
    assert re.fullmatch(
        r"diagnostics \(8 draws from q on \d+ test examples\): accuracy posterior point "
        r"\d+\.\d\d%, posterior predictive \d+\.\d\d%; ECE \d+\.\d\d%; PSIS k-hat \S+",
        lines[-3],
    ), lines[-3]
    assert (run / "report" / "report.md").is_file()
    assert (run / "report" / "elbo.png").is_file()
    idata = az.from_netcdf(run / "idata.nc")
    assert idata.posterior.sizes["draw"] == 8
    assert idata.posterior.attrs["split"] == "test"
    assert "elbo" in idata.sample_stats


def test_report_uses_the_fit_trace_and_the_spec_collapse(reported):
    run, _, _ = reported
    page = (run / "report" / "report.html").read_text()
    history = json.loads((run / "history.json").read_text())
    assert "Units alive during training." in page  # drawn from history.json's units
    assert "Measured accuracy, extracted network" in page  # the forecast's check
    assert re.search(r"Forecast accuracy after pruning.*val split, 16 examples", page, re.S)
    assert sum(history[0]["removed"].values()) > 0  # the run lost units: replayed on load
    fitted = load_fitted(run)
    result = fitted.result()
    assert result.history == history
    steps, values = read_elbo(run / "elbo.csv")
    assert (result.elbo_steps, result.elbo) == (steps, values) and len(steps) >= 2
    # the report's widths come from the spec's [collapse] (threshold 0.5), as extract does
    from bayesprune.pruning import collapse

    keep = collapse(fitted.net, fitted.guide, threshold=0.5)
    text = page.replace('<td class="num">', "<td>")
    for layer, ks in keep.items():
        n0 = fitted.spec.build_network().get_submodule(layer).out_features
        assert f"<td>{layer}</td><td>{n0}</td><td>{ks.n_kept}</td>" in text


def test_missing_run_folder_is_one_line_and_exit_2(tmp_path):
    code, out, err = run_main(["report", str(tmp_path / "nope")])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("bayesprune report: error:")
    assert "spec.json" in err


def test_bad_num_samples_is_a_user_error(reported):
    run, _, _ = reported
    code, _, err = run_main(["report", str(run), "--num-samples", "0"])
    assert code == 2 and "--num-samples" in err
