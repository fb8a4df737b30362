"""Empirical distribution functions of errors, and comparing two of them.

The EDF of a population's errors ``e_1..e_N`` with weights ``w_i`` is
``F(e) = Σ_i w_i 1[e_i <= e] / Σ_i w_i``: the fraction of subnetworks with error at most
``e``. A space whose EDF lies above another's everywhere *dominates* it: at every error
level, more of its subnetworks are that good.

Weights: uniform by default. :func:`complexity_weights` gives Radosavovic et al.'s
*complexity-normalised* EDF ("On Network Design Spaces for Visual Recognition", 2019,
section 3): complexity (here FLOPs) is binned and each model weighted so every non-empty
bin holds the same total weight, so two populations with different FLOPs distributions
are compared as if they had the same (uniform over bins) one. (They normalise by
complexity, not by error; there is no "error-normalised" weighting in that paper.)

>>> import numpy as np
>>> edf(np.array([0.1, 0.2, 0.2, 0.4]), np.array([0.05, 0.2, 0.5])).tolist()
[0.0, 0.75, 1.0]
"""

from __future__ import annotations

import numpy as np

from bayesprune.errors import ConfigError


def _weights(n: int, weights: np.ndarray | None) -> np.ndarray:
    if weights is None:
        return np.full(n, 1.0 / max(n, 1))
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(
            f"edf: weights must be {n} finite non-negative numbers with a positive sum"
        )
    return w / w.sum()


def edf(errors: np.ndarray, at: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``F(e)`` at every error level in ``at`` (see the module docstring).

    :param errors: one error per subnetwork (non-empty, finite).
    :param at: error levels.
    :param weights: optional non-negative weights per subnetwork (normalised here).
    """
    e = np.asarray(errors, dtype=np.float64).ravel()
    if e.size == 0 or not np.isfinite(e).all():
        raise ConfigError("edf: errors must be a non-empty array of finite numbers")
    w = _weights(e.size, weights)
    order = np.argsort(e, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(w[order])])
    idx = np.searchsorted(e[order], np.asarray(at, dtype=np.float64), side="right")
    return np.minimum(cum[idx], 1.0)


def complexity_weights(complexity: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Radosavovic et al.'s complexity normalisation: every non-empty bin of ``complexity``
    (edges ``bins``; values outside go to the end bins) gets the same total weight.

    >>> complexity_weights(np.array([1.0, 1.0, 1.0, 3.0]), np.array([0.0, 2.0, 4.0])).tolist()
    [0.16666666666666666, 0.16666666666666666, 0.16666666666666666, 0.5]
    """
    c = np.asarray(complexity, dtype=np.float64).ravel()
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or (np.diff(edges) <= 0).any():
        raise ConfigError("complexity_weights: bins must be at least 2 increasing edges")
    which = np.clip(np.searchsorted(edges, c, side="right") - 1, 0, edges.size - 2)
    per_bin = np.bincount(which, minlength=edges.size - 1)
    w = 1.0 / per_bin[which]
    return w / w.sum()


def dominance(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    weights_a: np.ndarray | None = None,
    weights_b: np.ndarray | None = None,
) -> dict[str, float | bool]:
    """How the EDF of population ``a`` compares with ``b``'s over all their error levels.

    :returns: ``dominates`` (``F_a >= F_b`` everywhere, i.e. ``a`` dominates ``b``),
        ``max_advantage`` (largest ``F_a - F_b``), ``max_deficit`` (largest ``F_b - F_a``,
        0 when ``a`` dominates) and ``area`` (``∫ (F_a - F_b) de`` over the pooled range:
        positive when ``a``'s errors are lower on average; it equals the difference of
        the weighted mean errors, ``mean_b - mean_a``).

    >>> d = dominance(np.array([0.1, 0.2]), np.array([0.2, 0.3]))
    >>> d["dominates"], d["max_deficit"], round(d["area"], 10)
    (True, 0.0, 0.1)
    """
    grid = np.unique(np.concatenate([np.ravel(errors_a), np.ravel(errors_b)]))
    fa, fb = edf(errors_a, grid, weights_a), edf(errors_b, grid, weights_b)
    diff = fa - fb
    area = float(np.sum(diff[:-1] * np.diff(grid)))
    return {
        "dominates": bool((diff >= -1e-12).all()),
        "max_advantage": max(float(diff.max()), 0.0),
        "max_deficit": max(-float(diff.min()), 0.0) + 0.0,
        "area": area,
    }
