"""Figures (PNG), a self-contained ``report.html`` and a ``report.md`` for a fitted run.

:func:`report` reads the fitted net, its :class:`~bayesprune.FitResult` and the
``InferenceData`` of :func:`bayesprune.diagnose`; :mod:`~bayesprune.report.plots`
holds one function per figure.
"""

from bayesprune.report.report import original_network, report

__all__ = ["original_network", "report"]
