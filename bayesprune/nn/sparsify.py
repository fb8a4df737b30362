"""``sparsify``: put a sparsity prior on an ordinary ``nn.Module``."""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch import Tensor

from bayesprune.errors import UnsupportedError
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.likelihoods import Likelihood, likelihood_from_config
from bayesprune.nn.selection import LayerSelector, select_layers
from bayesprune.priors.base import Prior


def sparsify(
    module: nn.Module,
    prior: Prior,
    layers: LayerSelector = None,
    *,
    likelihood: Likelihood | str | dict[str, Any] = "categorical",
    example_input: Tensor | None = None,
) -> BayesianNet:
    """Wrap ``module`` into a Pyro model with ``prior`` on the chosen layers.

    The module is not copied: its tree and names survive inside ``.module``, and its
    parameters not replaced by sample sites (biases, BatchNorm, ...) are trained in place.

    :param module: an ordinary network.
    :param prior: e.g. :class:`bayesprune.priors.HALO`.
    :param layers: which modules get the prior: ``None`` (the prior's default types),
        a type, a name or glob pattern, a list of those, or ``f(name, module) -> bool``.
    :param likelihood: ``"categorical"`` (default), ``"gaussian"`` or a Likelihood.
    :param example_input: one input batch, for priors that look at the whole network
        (e.g. FLOPs-aware gate prices); default ``module.example_input()`` if it has one.
    :raises TypeError: when ``module`` is not an ``nn.Module`` or a chosen layer is
        of a type the prior cannot handle (the message names the layer).

    >>> import torch.nn as nn
    >>> from bayesprune.priors import HALO
    >>> net = sparsify(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), HALO(), layers="0")
    >>> net.layer_names
    ('0',)
    """
    if isinstance(module, BayesianNet):
        raise UnsupportedError("sparsify: this network is already a BayesianNet; pass its .module")
    if not isinstance(module, nn.Module):
        raise UnsupportedError(f"sparsify: expected an nn.Module, got {type(module).__name__}")
    if not isinstance(prior, Prior):
        raise UnsupportedError(f"sparsify: expected a bayesprune Prior, got {type(prior).__name__}")
    names = select_layers(
        module, layers, default=prior.default_layer_types, supported=prior.supported_layer_types
    )
    if layers is None:
        names = prior.default_selection(module, names)
    for n in names:
        prior.check_layer(n, module.get_submodule(n))
    if example_input is None and callable(getattr(module, "example_input", None)):
        example_input = module.example_input()
    prior.bind(module, names, example_input)
    lik = likelihood if isinstance(likelihood, Likelihood) else likelihood_from_config(likelihood)
    net = BayesianNet(module, prior, names, lik)
    if example_input is not None:
        net.example_input = example_input
    return net
