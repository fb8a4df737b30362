"""Lottery jackpots (Zhang et al., "Lottery Jackpots Exist in Pre-trained Models") as a prior.

A mask is searched over **frozen pre-trained weights**; no weight is trained. Each chosen
layer has one site (role ``"weight"``, replacing ``layer.weight``) whose value is the masked
weight ``w0 ⊙ z``, under the prior ``z_i ~ Bernoulli(k_l / n_l)``
(:class:`~bayesprune.priors.jackpot_mask.MaskedWeight`; its log mass is the same constant
for every mask with exactly ``k_l`` ones when no pre-trained weight is exactly 0). Layer ``l`` keeps ``k_l`` weights: as many as it
has among the ``round((1 - sparsity) · N)`` largest ``|w0|`` over all chosen layers (the
paper's per-layer rates from a global magnitude threshold), computed at :func:`sparsify`
from the same tensors the search then runs over.

The default guide, :class:`~bayesprune.guides.jackpot.JackpotGuide`, holds a real score per
weight (``init="magnitude"``: ``|w0|``, so the search starts from magnitude pruning;
``init="random"``: the layer's ``|w0|`` randomly permuted) and the current mask, the top-
``k_l`` of the scores, with a straight-through gradient to the scores. The prior's fit
callback (:class:`~bayesprune.priors.jackpot_search.JackpotSearch`) updates the mask after
every step -- with ``restrict=True`` the paper's *short restriction*: a decaying number of
swaps, accepted only if the step's mini-batch loss does not rise.

**Pre-trained weights.** ``pretrained=True`` (default) declares that the module's weights at
:func:`sparsify` are the pre-trained ones; a state dict, an ``nn.Module`` of the same
architecture, or the path of a saved state dict (``.safetensors``, or a ``torch.save`` file
read with ``weights_only=True``) is loaded into the module (strictly) at :func:`sparsify`,
*before* the per-layer rates are computed, so rates, masks and the search all see the same
weights. ``pretrained=False`` or ``None`` -- no pre-trained weights -- is a ``ValueError``:
a jackpot over untrained weights is not what the paper searches. Whether a module's weights
are trained cannot be told from the weights in general, so ``True`` is taken at its word.

At :func:`sparsify` every parameter of the module is frozen (``requires_grad_(False)``), so
:func:`~bayesprune.fit` trains nothing but the scores; the module's weights stay bitwise the
pre-trained ones (BatchNorm *buffers* still update in train mode). The prior holds a
reference to each chosen layer's weight (not a copy). One prior object serves one network.

Good::

    module = build("lenet300"); train(module, data, epochs=5)      # pre-trained
    net = sparsify(module, Jackpot(sparsity=0.9), layers=nn.Linear)
    result = fit(net, data, epochs=3)                             # JackpotGuide, scores only
    small = extract(net, collapse(net, result.guide))             # the mask, w0 where kept

Bad::

    Jackpot(sparsity=0.9, pretrained=False)   # ValueError: pretrained ...
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor
from torch.distributions import constraints

from bayesprune.errors import CheckpointError, ConfigError
from bayesprune.priors.base import Prior
from bayesprune.priors.jackpot_mask import MaskedWeight, mask_key
from bayesprune.priors.jackpot_search import JackpotSearch
from bayesprune.priors.jackpot_swaps import layer_keep_counts
from bayesprune.priors.registry import register
from bayesprune.sites import Context, Site, join

INITS = ("magnitude", "random")


def _load_state(source: Any) -> Mapping[str, Tensor]:
    """A state dict from a mapping, a module or a file path."""
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, Mapping):
        return source
    path = Path(source)
    if not path.is_file():
        raise CheckpointError(f"Jackpot: pretrained file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"Jackpot: pretrained file {str(path)!r} does not hold a state dict")
    return state


class Jackpot(Prior):
    """Frozen pre-trained weights under a Bernoulli weight mask (see the module docstring).

    :param sparsity: the fraction of the chosen layers' weights removed, in ``(0, 1)``.
    :param init: the scores' start: ``"magnitude"`` (``|w0|``) or ``"random"``.
    :param restrict: the short restriction (decaying swap budget, loss-checked swaps); without
        it the mask is the top-``k`` of the scores after every step.
    :param budget_epochs: ``N`` of the swap budget ``(1 - e/N)^4`` in epoch ``e``; from epoch
        ``N`` on the mask no longer changes (only with ``restrict``).
    :param pretrained: ``True`` (the module's weights), a state dict, a module or a file path;
        see the module docstring.

    >>> import torch.nn as nn
    >>> from bayesprune import sparsify
    >>> net = sparsify(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)),
    ...                Jackpot(sparsity=0.5))
    >>> sum(s.meta["keep"] for s in net.sites)  # round(0.5 * (12 + 6)) kept over both layers
    9
    >>> any(p.requires_grad for p in net.module.parameters())
    False
    """

    name = "jackpot"
    default_guide = "jackpot"
    #: collapse's scores are the 0/1 mask: the default threshold keeps the ones
    default_threshold = 0.5
    writes_back = False  # the module's weights are the frozen pre-trained ones

    def __init__(
        self,
        sparsity: float = 0.9,
        init: str = "magnitude",
        restrict: bool = True,
        *,
        budget_epochs: int = 10,
        pretrained: bool | str | os.PathLike | Mapping[str, Tensor] | nn.Module | None = True,
    ) -> None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
            raise ConfigError(f"Jackpot: sparsity must be a number in (0, 1), got {sparsity!r}")
        if not 0 < sparsity < 1:
            raise ConfigError(f"Jackpot: sparsity must be in (0, 1), got {sparsity!r}")
        if init not in INITS:
            raise ConfigError(f"Jackpot: init must be one of {INITS}, got {init!r}")
        if not isinstance(restrict, bool):
            raise ConfigError(f"Jackpot: restrict must be True or False, got {restrict!r}")
        if (
            isinstance(budget_epochs, bool)
            or not isinstance(budget_epochs, int)
            or budget_epochs < 1
        ):
            raise ConfigError(
                f"Jackpot: budget_epochs must be an integer >= 1, got {budget_epochs!r}"
            )
        if pretrained is None or pretrained is False:
            raise ConfigError(
                f"Jackpot: pretrained={pretrained!r}: a lottery jackpot searches a mask over "
                "pre-trained weights; train the network first (e.g. bayesprune.methods.train) "
                "and pass pretrained=True, or pass the weights (a state dict, a module or a file)"
            )
        if not isinstance(pretrained, (bool, str, os.PathLike, Mapping, nn.Module)):
            raise ConfigError(
                "Jackpot: pretrained must be True, a state dict, an nn.Module or a file path, "
                f"got {type(pretrained).__name__}"
            )
        self.sparsity = float(sparsity)
        self.init = init
        self.restrict = restrict
        self.budget_epochs = budget_epochs
        self.pretrained = pretrained
        self._keep: dict[str, int] = {}
        self._frozen: dict[str, Tensor] = {}

    # --- sites -------------------------------------------------------------------------
    def bind(self, module: nn.Module, layer_names: list[str], example_input: Tensor | None) -> None:
        """Load the pre-trained weights (if given apart), compute the per-layer kept counts
        from them, freeze every parameter of ``module``."""
        if self.pretrained is not True:
            state = _load_state(self.pretrained)
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise CheckpointError(
                    f"Jackpot: pretrained does not fit the network: {e}"
                ) from None
        weights = {n: module.get_submodule(n).weight for n in layer_names}
        self._keep = layer_keep_counts(weights, self.sparsity) if weights else {}
        for p in module.parameters():
            p.requires_grad_(False)

    def layer_sites(self, name: str, layer: nn.Module) -> list[Site]:
        """One site replacing ``layer.weight``; ``meta["keep"]`` is the layer's kept count
        (a layer outside :meth:`bind`'s selection keeps ``round((1 - sparsity) · n)``)."""
        self.check_layer(name, layer)
        w = layer.weight
        keep = self._keep.get(name, round((1.0 - self.sparsity) * w.numel()))
        self._frozen[name] = w
        site = join(name, "weight")
        return [
            Site(site, name, "weight", tuple(w.shape), constraints.real, site, (("keep", keep),))
        ]

    def frozen_weight(self, layer: str) -> Tensor:
        """The pre-trained weight of ``layer`` (the module's own parameter, not a copy)."""
        if layer not in self._frozen:
            raise ConfigError(f"Jackpot: layer {layer!r} is not one of {sorted(self._frozen)}")
        return self._frozen[layer]

    def initial_value(self, site: Site, layer: nn.Module) -> Tensor:
        return layer.weight.detach().clone()

    def distribution(self, site: Site, values: dict[str, Tensor], ctx: Context) -> Distribution:
        w0 = self._frozen[site.layer].to(device=ctx.device, dtype=ctx.dtype)
        return MaskedWeight(w0, site.meta["keep"] / site.numel)

    # --- collapse ----------------------------------------------------------------------
    def scores(self, sites: list[Site], point: dict[str, Tensor], **options: Any) -> Tensor:
        """The current mask as 0/1 (from the guide's point; without it, ``ŵ != 0``)."""
        site = sites[0]
        mask = point.get(mask_key(site.name))
        if mask is None:
            mask = point[site.name] != 0
        return mask.to(torch.float32)

    def kept_fraction(self, net: Any, point: dict[str, Tensor]) -> float:
        alive = total = 0
        for sites in net.layer_sites.values():
            sc = self.scores(sites, point)
            alive += int(sc.sum())
            total += sc.numel()
        return alive / max(total, 1)

    def fit_callbacks(self) -> list[Any]:
        return [JackpotSearch(self)]

    def config(self) -> dict[str, Any]:
        """The hyper-parameters; ``pretrained`` is ``True`` unless it was a file path (the
        weights of a state dict or module are in the network after :func:`sparsify`)."""
        pre = str(self.pretrained) if isinstance(self.pretrained, (str, os.PathLike)) else True
        return {
            "name": self.name,
            "sparsity": self.sparsity,
            "init": self.init,
            "restrict": self.restrict,
            "budget_epochs": self.budget_epochs,
            "pretrained": pre,
        }


register("jackpot", Jackpot)
