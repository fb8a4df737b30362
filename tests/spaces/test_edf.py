"""EDFs, complexity weights and dominance on numbers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from bayesprune.spaces import complexity_weights, dominance, edf


def test_edf_counts_errors_at_or_below_each_level():
    errors = np.array([0.3, 0.1, 0.2, 0.2, 0.5])
    at = np.array([0.0, 0.1, 0.15, 0.2, 0.49, 0.5, 1.0])
    assert edf(errors, at).tolist() == pytest.approx([0, 0.2, 0.2, 0.6, 0.8, 1.0, 1.0])


def test_weighted_edf():
    errors = np.array([0.1, 0.2, 0.3])
    w = np.array([2.0, 1.0, 1.0])
    assert edf(errors, np.array([0.1, 0.25, 0.3]), w).tolist() == pytest.approx([0.5, 0.75, 1.0])


@pytest.mark.parametrize("bad", [np.array([]), np.array([0.1, np.nan])])
def test_edf_refuses_empty_or_nan_errors(bad):
    with pytest.raises(ValueError, match="errors"):
        edf(bad, np.array([0.1]))


def test_edf_refuses_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        edf(np.array([0.1, 0.2]), np.array([0.1]), np.array([1.0, -1.0]))


def test_complexity_weights_give_every_bin_equal_mass():
    flops = np.array([1.0, 1.5, 1.2, 5.0, 9.0, 9.5])
    w = complexity_weights(flops, np.array([0.0, 2.0, 6.0, 10.0]))
    assert w.sum() == pytest.approx(1.0)
    assert [w[:3].sum(), w[3], w[4:].sum()] == pytest.approx([1 / 3] * 3)
    # a population crowded at low FLOPs: the normalised EDF no longer favours it
    errors = np.array([0.3, 0.3, 0.3, 0.1, 0.2, 0.2])
    assert edf(errors, np.array([0.2]), w)[0] == pytest.approx(2 / 3)
    assert edf(errors, np.array([0.2]))[0] == pytest.approx(0.5)


def test_dominance():
    better, worse = np.array([0.10, 0.12, 0.15]), np.array([0.11, 0.14, 0.20])
    d = dominance(better, worse)
    assert d["dominates"] and d["max_deficit"] == 0.0
    assert d["area"] == pytest.approx(worse.mean() - better.mean())
    r = dominance(worse, better)
    assert not r["dominates"] and r["max_deficit"] == pytest.approx(1 / 3)
    crossing = dominance(np.array([0.05, 0.30]), np.array([0.10, 0.20]))
    assert not crossing["dominates"]
    assert crossing["max_advantage"] == pytest.approx(0.5)
    assert crossing["max_deficit"] == pytest.approx(0.5)
