"""A budgeted fit's report: the multiplier/size figure drawn from ``budget_trace``, the
budget's key numbers, and nothing of either for a fit without a budget."""

from __future__ import annotations

import json
import re
from html import unescape
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from bayesprune import Budget, fit, sparsify
from bayesprune.data import synthetic_classification
from bayesprune.guides import MAP
from bayesprune.priors import UnitGates
from bayesprune.report import plots, report
from bayesprune.report.collect import NotUsed, budget_history
from tests.report.conftest import DATA, _mlp
from tests.report.test_plots import _check_readable

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fit(budget: Budget | None, epochs: int = 2):
    """A tiny gated MLP fitted with ``budget``: 40 steps an epoch, the controller updates
    every 10 and cuts at 85 % of the fit."""
    data = synthetic_classification(640, 64, 64, **DATA)
    net = sparsify(_mlp(), UnitGates(cost="flops"), example_input=data.train.x[:1])
    kw = {} if budget is None else {"budget": budget}
    result = fit(net, data, MAP(net), epochs=epochs, batch_size=16, progress=False, **kw)
    return net, result


def _report(net, result, out, monkeypatch):
    """``report(...)`` without diagnostics; returns the HTML path and, per line of the
    budget figure it drew, ``{label: (x, y)}`` (empty when it drew none)."""
    drawn: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    make = plots.budget_trace

    def spy(*args, **kwargs):
        fig = make(*args, **kwargs)
        for ax in fig.axes:
            for line in ax.get_lines():
                xy = (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
                drawn[f"{line.get_label()}@{fig.axes.index(ax)}"] = xy
        return fig

    monkeypatch.setattr(plots, "budget_trace", spy)
    html = report(net, result, None, out=out, measure_latency=False)
    return html, drawn


def _text(html):
    """The page's text: tags dropped, entities decoded, white space collapsed."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html.read_text())))


@pytest.fixture(scope="module")
def budgeted():
    torch.set_num_threads(1)
    return _fit(Budget(flops=0.5))


def test_budget_figure_draws_the_trace(budgeted, tmp_path, monkeypatch):
    net, result = budgeted
    html, drawn = _report(net, result, tmp_path, monkeypatch)
    png = tmp_path / "budget.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert 'id="fig-budget"' in html.read_text()
    assert "![Budget: strength multiplier and size over the fit](budget.png)" in (
        (tmp_path / "report.md").read_text()
    )

    end = result.history[-1]["budget"]
    cut = end["cut_report"]
    assert end["phase"] == "cut"
    rows = [r for h in result.history for r in h["budget_trace"]]  # every epoch's updates
    steps, m, size, target = (np.array([r[i] for r in rows], float) for i in range(4))
    assert len(rows) >= 5 and np.all(np.diff(steps) > 0) and steps[-1] < cut["step"]
    np.testing.assert_array_equal(drawn["multiplier: posterior@0"][0], steps)
    np.testing.assert_allclose(drawn["multiplier: posterior@0"][1], m)
    np.testing.assert_allclose(drawn["size: posterior@1"][1], 100 * size)
    np.testing.assert_allclose(drawn["target: posterior@1"][1], 100 * target)
    np.testing.assert_allclose(drawn["budget: posterior@1"][1], [50.0, 50.0])
    np.testing.assert_allclose(drawn["configured strength@0"][1], [1.0, 1.0])
    for panel in (0, 1):
        np.testing.assert_array_equal(drawn[f"cut@{panel}"][0], [cut["step"]] * 2)
    held_x, held_size = drawn["size after the cut: posterior@1"]
    np.testing.assert_array_equal(held_x, [cut["step"], result.elbo_steps[-1]])
    np.testing.assert_allclose(held_size, 100 * end["size"])
    np.testing.assert_allclose(drawn["multiplier after the cut: posterior@0"][1], end["multiplier"])
    assert end["size"] <= 0.5


def test_budget_key_numbers(budgeted, tmp_path, monkeypatch):
    net, result = budgeted
    html, _ = _report(net, result, tmp_path, monkeypatch)
    end = result.history[-1]["budget"]
    cut = end["cut_report"]
    page, md = _text(html), (tmp_path / "report.md").read_text()
    for text in (page, md):
        assert re.search(r"Budget\W+flops 50\.00%", text)
        assert f"{100 * cut['posterior']:.2f}%" in text
        rule = f"step {cut['step']}: the size the posterior's own rule kept; the cut removed"
        assert f"{rule} {cut['cut']} more elements, to {100 * cut['final']:.2f}%" in text
        assert re.search(
            rf"Budget: final size\W+{100 * end['size']:.2f}%\W+end of the fit; held", text
        )


def test_the_history_as_the_cli_saves_it_gives_the_same_figure(budgeted):
    _, result = budgeted
    saved = SimpleNamespace(
        history=json.loads(json.dumps(result.history)), elbo_steps=result.elbo_steps
    )
    a, b = budget_history(result), budget_history(saved)
    assert a["steps"] == b["steps"] and a["cut"] == b["cut"] and a["final"] == b["final"]
    for k in ("multiplier", "size", "schedule"):
        np.testing.assert_array_equal(a[k], b[k])


def test_per_layer_budget_draws_one_line_per_layer(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    net, result = _fit(Budget(units={"0": 0.5, "2": 0.25}), epochs=1)
    _, drawn = _report(net, result, tmp_path, monkeypatch)
    rows = [r for h in result.history for r in h["budget_trace"]]
    for j, layer in enumerate(["0", "2"]):  # the trace's lists run over sorted layer names
        np.testing.assert_allclose(
            drawn[f"multiplier: layer {layer}@0"][1], [r[1][j] for r in rows]
        )
        np.testing.assert_allclose(
            drawn[f"size: layer {layer}@1"][1], [100 * r[2][j] for r in rows]
        )
    np.testing.assert_allclose(drawn["budget: layer 0@1"][1], [50.0, 50.0])
    np.testing.assert_allclose(drawn["budget: layer 2@1"][1], [25.0, 25.0])
    md = (tmp_path / "report.md").read_text()
    assert "units: layer 0 50.00%, layer 2 25.00%" in md


def test_budget_trace_figure_is_readable():
    fig = plots.budget_trace(
        [0, 10, 20],
        [[0.1, 0.2], [0.3, 0.5], [0.9, 2.0]],
        [[0.9, 0.9], [0.7, 0.6], [0.5, 0.3]],
        [[0.6, 0.4], [0.5, 0.25], [0.5, 0.25]],
        budget=[0.5, 0.25],
        metric="units",
        layers=["fc1", "fc2"],
        cut_step=25,
        after_cut=([1.0, 1.0], [0.5, 0.25]),
        end=30,
    )
    _check_readable(fig)
    assert fig.axes[0].get_yscale() == "log"
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == [
        "fc1 (budget 50%)",
        "fc2 (budget 25%)",
        "cut to the budget (step 25)",
        "after the cut: held to the end",
    ]


def test_no_budget_no_figure_and_no_budget_numbers(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    net, result = _fit(None, epochs=1)
    with pytest.raises(NotUsed):
        budget_history(result)
    html, drawn = _report(net, result, tmp_path, monkeypatch)
    assert not drawn and not (tmp_path / "budget.png").exists()
    page, md = html.read_text(), (tmp_path / "report.md").read_text()
    assert "fig-budget" not in page
    assert "budget" not in md.lower() and "budget" not in _text(html).lower()
