"""He & Xiao's finding: do the best subnetworks share a FLOPs-to-parameters ratio?

"Network Pruning Spaces" (2023) conjectures that, within a FLOPs regime, the winning
subnetworks sit near one optimal FLOPs/params ratio, and refines a space by restricting
that ratio. :func:`ratio_finding` checks it on a measured population: the spread of
``log(FLOPs/params)`` among the best ``top`` fraction (interquartile range) against the
whole population's, and a permutation p-value: how often ``k`` subnetworks picked at
random are as concentrated as the best ``k`` (small p: the best concentrate beyond
chance). It also gives the Spearman rank correlation of error with the ratio, and the
range of the winners' ratios (the ``ratio=`` to refine the space with).

>>> import numpy as np
>>> from bayesprune.spaces.population import Population
>>> r = np.linspace(1.0, 4.0, 40)
>>> pop = Population("toy", ("fc",), np.ones((40, 1), int), np.abs(r - 2.5), np.abs(r - 2.5),
...                  r * 10, np.full(40, 10.0), 100.0, 10.0)
>>> f = ratio_finding(pop, top=0.2, permutations=500)
>>> f["concentration"] < 0.3, f["p_value"] < 0.01
(True, True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bayesprune.errors import ConfigError
from bayesprune.spaces.population import Population


def _iqr(x: np.ndarray) -> float:
    q1, q3 = np.percentile(x, [25, 75], axis=-1)
    return q3 - q1


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a, kind="stable"), kind="stable").astype(float)
    rb = np.argsort(np.argsort(b, kind="stable"), kind="stable").astype(float)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def ratio_finding(
    population: Population, *, top: float = 0.1, permutations: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Concentration of the best subnetworks' FLOPs/params ratio (module docstring).

    :param population: a measured population (at least 4 subnetworks).
    :param top: fraction of best (lowest error) subnetworks called the winners.
    :param permutations: random subsets drawn for the p-value.
    :param seed: seed of those draws.
    :returns: ``n_best``, ``ratio_best_median``, ``ratio_best_range`` ``[min, max]``,
        ``ratio_all_median``, ``iqr_log_ratio_best``, ``iqr_log_ratio_all``,
        ``concentration`` (best IQR / all IQR; < 1: the winners are more alike),
        ``p_value`` and ``spearman_error_ratio``.
    """
    if len(population) < 4:
        raise ConfigError(
            f"ratio_finding: population needs at least 4 subnetworks, got {len(population)}"
        )
    log_r = np.log(population.ratio)
    best = population.best(top)
    if best.size < 2:  # an IQR needs two winners
        best = np.argsort(population.errors, kind="stable")[:2]
    k = best.size
    iqr_best, iqr_all = float(_iqr(log_r[best])), float(_iqr(log_r))
    rng = np.random.default_rng(seed)
    picks = np.argsort(rng.random((permutations, log_r.size)), axis=1)[:, :k]
    random_iqr = _iqr(log_r[picks])
    p = (1 + int((random_iqr <= iqr_best + 1e-15).sum())) / (permutations + 1)
    ratio = population.ratio
    return {
        "n_best": int(k),
        "ratio_best_median": float(np.median(ratio[best])),
        "ratio_best_range": [float(ratio[best].min()), float(ratio[best].max())],
        "ratio_all_median": float(np.median(ratio)),
        "iqr_log_ratio_best": iqr_best,
        "iqr_log_ratio_all": iqr_all,
        "concentration": iqr_best / iqr_all if iqr_all > 0 else float("nan"),
        "p_value": float(p),
        "spearman_error_ratio": _spearman(population.errors, ratio),
    }
