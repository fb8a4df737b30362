"""Diagnostics of a fitted posterior as an ArviZ ``InferenceData``.

:func:`diagnose` draws from the fitted guide, runs the network on held-out data and
returns an ``arviz.InferenceData`` whose variables and dimensions are named after the
user's own modules (see :mod:`bayesprune.diagnostics.inference_data`). The pieces are
usable alone: :mod:`~bayesprune.diagnostics.calibration` (ECE, reliability bins),
:mod:`~bayesprune.diagnostics.psis` (Pareto k̂), :mod:`~bayesprune.diagnostics.pruning_sweep`
(accuracy against sparsity).

>>> from bayesprune.diagnostics import diagnose
>>> diagnose.__name__
'diagnose'
"""

from bayesprune.diagnostics.inference_data import diagnose

__all__ = ["diagnose"]
