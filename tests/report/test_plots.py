"""One function per figure: titles, labels with units, the data drawn, valid PNG bytes."""

from __future__ import annotations

import io

import matplotlib.image as mpimg
import numpy as np
import pytest

from bayesprune.report import plots


def _check_readable(fig):
    title = fig._suptitle.get_text() if fig._suptitle is not None else ""
    for ax in fig.axes:
        title = title or ax.get_title()
        shared = ax.get_shared_x_axes().get_siblings(ax)  # e.g. a panel below labels it
        assert any(a.get_xlabel() for a in shared) or ax.get_xticklabels(), "no x label"
        assert ax.get_ylabel(), "no y label"
        assert ax.has_data(), "empty axes"
    assert title
    png = plots.to_png(fig)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(io.BytesIO(png))
    assert img.shape[0] > 200 and img.shape[1] > 300


FIGURES = {
    "elbo": lambda: plots.elbo_trace([10, 20, 30], [5.0, 3.0, 2.5], label="-ELBO / n"),
    "units": lambda: plots.units_alive(
        [1, 2], {"conv1": [18, 12], "fc": [90, 40]}, {"conv1": 20, "fc": 100}
    ),
    "inclusion": lambda: plots.inclusion_histograms(
        {"conv1": np.array([0.1, 0.9, 1.0]), "fc": np.random.rand(4, 5)},
        {"conv1": "units", "fc": "weights"},
    ),
    "shrinkage": lambda: plots.shrinkage_profile(
        {"fc1": np.array([0.1, 2.0, 3.0])}, {"fc1": np.array([0.01, 1.0, 2.0])}
    ),
    "accuracy": lambda: plots.accuracy_vs_kept([0.1, 0.5, 1.0], [0.5, 0.8, 0.9], chosen=0.4),
    "reliability": lambda: plots.reliability_diagram(
        [0.0, 0.5], [0.5, 1.0], [0.4, 0.8], [0.3, 0.9], [10, 20], ece=0.05
    ),
    "widths": lambda: plots.layer_widths(["conv1", "fc"], [20, 500], [8, 120]),
    "cost": lambda: plots.cost_before_after(
        [("parameters", "count", 1000, 300), ("FLOPs", "per example", 5e6, 1e6)]
    ),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_is_readable(name):
    _check_readable(FIGURES[name]())


def test_units_alive_draws_percent_of_original_from_epoch_0():
    fig = plots.units_alive([1, 2], {"conv1": [15, 10]}, {"conv1": 20})
    (line,) = fig.axes[0].get_lines()
    assert list(line.get_xdata()) == [0, 1, 2]
    assert list(line.get_ydata()) == [100.0, 75.0, 50.0]
    assert "conv1: 10 of 20" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_reliability_diagram_leaves_empty_bins_out():
    fig = plots.reliability_diagram(
        [0.0, 1 / 3, 2 / 3],
        [1 / 3, 2 / 3, 1.0],
        [0.0, 0.5, 0.9],
        [0.0, 0.4, 1.0],
        [0, 4, 6],
        ece=0.1,
    )
    top = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in top.patches)
    assert heights == [-10.0, 10.0, 40.0, 100.0]  # accuracy and gap bars of the 2 full bins
    assert "ECE = 10.00%" in top.get_title()


def test_accuracy_vs_kept_marks_chosen_and_default():
    fig = plots.accuracy_vs_kept([0.2, 1.0], [0.6, 0.9], chosen=0.3, default=(0.3, 0.7))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "chosen collapse: 30.0% kept" in labels and "default collapse: 30.0% kept" in labels


def test_layer_names_of_sequential_read_as_layers():
    fig = plots.layer_widths(["0", "2"], [4, 3], [2, 1])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["layer 0", "layer 2"]
