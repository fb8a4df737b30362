"""bayesprune: prune neural networks by Bayesian inference.

The pipeline: ``sparsify`` an ordinary network with a sparsity prior, ``fit``
its posterior by SVI, ``diagnose`` the posterior (ArviZ ``InferenceData``) and
``report`` it, ``collapse`` the posterior into per-layer keep-sets (optionally
``predict_pruning`` what that costs), ``extract`` a physically smaller
deterministic network, ``load`` a saved one back.

>>> import bayesprune as bp
>>> sorted(bp.__all__)[:4]
['BayesianNet', 'Budget', 'FitResult', 'KeepSet']
"""

from bayesprune import methods, spaces
from bayesprune.budget import Budget
from bayesprune.diagnostics import diagnose
from bayesprune.export import load
from bayesprune.inference import FitResult, fit
from bayesprune.nn import BayesianNet, sparsify
from bayesprune.pruning import KeepSet, PruningForecast, collapse, extract, predict_pruning
from bayesprune.report import report

__version__ = "0.1.0"

__all__ = [
    "BayesianNet",
    "Budget",
    "FitResult",
    "KeepSet",
    "PruningForecast",
    "collapse",
    "diagnose",
    "extract",
    "fit",
    "load",
    "methods",
    "predict_pruning",
    "report",
    "spaces",
    "sparsify",
]
