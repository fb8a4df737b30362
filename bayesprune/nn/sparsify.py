"""``sparsify``: put a sparsity prior on an ordinary ``nn.Module``."""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn
from torch import Tensor

from bayesprune.errors import UnsupportedError
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.likelihoods import Likelihood, likelihood_from_config
from bayesprune.nn.removable import Reason, removal_problems
from bayesprune.nn.selection import LayerSelector, select_layers
from bayesprune.priors.base import Prior

log = logging.getLogger(__name__)


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
        of a type the prior cannot handle (the message names the layer), or -- for a prior
        that removes units, with an example input -- a layer chosen explicitly whose units
        cannot be removed exactly (the message names the layer and why).

    A prior that removes whole units (:class:`~bayesprune.priors.UnitGates`,
    ``HALO(per="unit")``: :attr:`~bayesprune.priors.base.Prior.removes_units`) is put only
    on layers whose units :func:`~bayesprune.extract` can cut out with the network's output
    unchanged (:func:`~bayesprune.nn.removable.removal_problems`: coupled to a LayerNorm or
    a class token, an auxiliary head, an op torch-pruning cannot trace, ...). With
    ``layers=None`` the others are left out and logged (logger ``bayesprune.nn.sparsify``,
    level INFO, one line per reason); a layer chosen explicitly that fails raises. This
    needs an example input: without one, every chosen layer gets the prior and ``extract``
    finds out. To cut units of a layer anyway, build the keep-sets yourself and call
    ``extract(..., check=False)``.

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
    if prior.removes_units and example_input is not None:
        names = _removable(module, prior, names, example_input, chosen=layers is not None)
    prior.bind(module, names, example_input)
    lik = likelihood if isinstance(likelihood, Likelihood) else likelihood_from_config(likelihood)
    net = BayesianNet(module, prior, names, lik)
    if example_input is not None:
        net.example_input = example_input
    return net


def _removable(
    module: nn.Module, prior: Prior, names: list[str], example_input: Any, *, chosen: bool
) -> list[str]:
    """``names`` without the layers whose units cannot be removed exactly: logged when the
    prior chose them (``chosen=False``), refused when the user did."""
    problems = removal_problems(module, names, example_input)
    if not problems:
        return names
    who = type(prior).__name__
    if chosen:
        lines = "; ".join(f"layer {n!r}: {r}" for n, r in problems.items())
        raise UnsupportedError(
            f"sparsify: {who} removes units, and the units of {len(problems)} chosen layer(s) "
            f"cannot be removed exactly: {lines}. Leave them out of layers= (or build the "
            "keep-sets yourself and call extract(..., check=False))"
        )
    by_kind: dict[str, list[str]] = {}
    for n, r in problems.items():
        by_kind.setdefault(r.kind if isinstance(r, Reason) else str(r), []).append(n)
    for kind, skipped in by_kind.items():
        log.info("sparsify: %s left out %d layer(s): %s: %s", who, len(skipped), kind, skipped)
    kept = [n for n in names if n not in problems]
    if not kept:
        raise UnsupportedError(
            f"sparsify: {who} removes units, and no layer of {type(module).__name__} it "
            "would be put on can have its units removed exactly: "
            + "; ".join(f"{n!r}: {r}" for n, r in problems.items())
        )
    return kept
