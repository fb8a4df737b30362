"""bayesprune: prune neural networks by Bayesian inference.

The pipeline: ``sparsify`` an ordinary network with a sparsity prior, ``fit``
its posterior by SVI, ``collapse`` the posterior into per-layer keep-sets,
``extract`` a physically smaller deterministic network.

>>> import bayesprune as bp
>>> sorted(bp.__all__)[:4]
['BayesianNet', 'FitResult', 'KeepSet', 'collapse']
"""

from bayesprune.inference import FitResult, fit
from bayesprune.nn import BayesianNet, sparsify
from bayesprune.pruning import KeepSet, collapse, extract

__version__ = "0.1.0"

__all__ = [
    "BayesianNet",
    "FitResult",
    "KeepSet",
    "collapse",
    "extract",
    "fit",
    "sparsify",
]
