"""The model side: sites, layer selection, likelihoods and :class:`BayesianNet`."""

from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.likelihoods import Categorical, Gaussian, Likelihood, likelihood_from_config
from bayesprune.nn.selection import select_layers
from bayesprune.nn.sparsify import sparsify
from bayesprune.sites import Context, Site

__all__ = [
    "BayesianNet",
    "Categorical",
    "Context",
    "Gaussian",
    "Likelihood",
    "Site",
    "likelihood_from_config",
    "select_layers",
    "sparsify",
]
