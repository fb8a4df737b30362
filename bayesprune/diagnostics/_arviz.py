"""ArviZ, imported once with its import-time notice silenced.

ArviZ 0.2x emits a ``FutureWarning`` ("ArviZ is undergoing a major refactor") once a day
on import; under ``filterwarnings = error`` that notice would fail any test that happens
to import it first. Everything in bayesprune imports ArviZ from here:

>>> from bayesprune.diagnostics._arviz import az
>>> hasattr(az, "InferenceData")
True
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az

__all__ = ["az"]
