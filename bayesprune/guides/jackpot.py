"""The lottery-jackpot guide: a point mass on the masked pre-trained weight.

For each site of a :class:`~bayesprune.priors.Jackpot` prior the guide holds a real score per
weight (``scores``, an ``nn.ParameterDict``; parameter role ``"score"``) and the current mask
(a bool buffer under ``masks``, so checkpoints carry it), initially the top-``k`` of the
scores. The site's value is

    w = w0 ⊙ (m + (s - sg(s)))

-- in value exactly ``w0 ⊙ m`` (``s - sg(s)`` is exactly 0), with ``∂w_i/∂s_i = w0_i``: the
straight-through estimator of the paper, so a score gets the gradient the masked weight gets
times the frozen weight, ``∂L/∂s_i = w0_i · ∂L/∂w_i`` (for pruned and kept weights alike).
``q`` is a point mass (Delta), ``log q = 0``; the fused loss and Pyro's ``Trace_ELBO`` then
compute the same loss and score gradients for the same mask.

``w0`` is the module's own parameter (read through the prior, never copied or changed). The
mask is changed only by the prior's fit callback
(:class:`~bayesprune.priors.jackpot_search.JackpotSearch`) or by :meth:`refresh_masks_` (the
unrestricted top-``k``; under plain Pyro ``SVI`` call it yourself between steps).
:meth:`point` also gives each mask under ``mask_key(site)`` -- what ``collapse`` keeps.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import Jackpot
>>> guide = JackpotGuide(sparsify(nn.Linear(4, 3), Jackpot(sparsity=0.5), layers=nn.Linear))
>>> sorted(guide.state_dict()), int(guide.masks.weight.sum())
(['masks.weight', 'scores.weight'], 6)
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import torch
import torch.nn as nn
from pyro.distributions import Distribution
from torch import Tensor

from bayesprune.errors import UnsupportedError
from bayesprune.guides.base import Guide, key
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.priors.jackpot import Jackpot
from bayesprune.priors.jackpot_mask import mask_key
from bayesprune.priors.jackpot_swaps import top_k_mask
from bayesprune.sites import Site


def initial_scores(w0: Tensor, init: str) -> Tensor:
    """``|w0|`` (``"magnitude"``), or the same values randomly permuted within the layer
    (``"random"``: the same scale, a ranking unrelated to the weights; global RNG)."""
    mag = w0.detach().abs().clone()
    if init == "magnitude":
        return mag
    flat = mag.flatten()
    return flat[torch.randperm(flat.numel(), device=flat.device)].reshape(mag.shape)


class JackpotGuide(Guide):
    """Scores and masks over a :class:`~bayesprune.priors.Jackpot` net (see the module docstring).

    :param net: the model, from ``sparsify(module, Jackpot(...))``.
    :raises TypeError: when the net's prior is not a :class:`~bayesprune.priors.Jackpot`.
    """

    name = "jackpot"

    def __init__(self, net: BayesianNet) -> None:
        super().__init__(net)
        if not isinstance(net.prior, Jackpot):
            raise UnsupportedError(
                f"JackpotGuide: the net's prior must be Jackpot, got {type(net.prior).__name__}"
            )
        self.scores = nn.ParameterDict()
        self.masks = nn.Module()
        self._frozen: dict[str, Tensor] = {}  # plain dict: not the guide's parameters
        for s in self.sites:
            w0 = net.prior.frozen_weight(s.layer)
            self._frozen[key(s.name)] = w0
            sc = initial_scores(w0, net.prior.init)
            self.scores[key(s.name)] = nn.Parameter(sc)
            self.masks.register_buffer(key(s.name), top_k_mask(sc, s.meta["keep"]))

    def mask(self, site: Site) -> Tensor:
        """The current bool mask of ``site``."""
        return self.masks._buffers[key(site.name)]

    def jackpot_layers(self) -> list[tuple[Site, nn.Parameter, Tensor]]:
        """``[(site, scores, mask)]`` in site order (what the search callback updates)."""
        return [(s, self.scores[key(s.name)], self.mask(s)) for s in self.sites]

    @torch.no_grad()
    def refresh_masks_(self) -> None:
        """Set every mask to the top-``k`` of its scores (no restriction)."""
        for s, sc, m in self.jackpot_layers():
            m.copy_(top_k_mask(sc, s.meta["keep"]))

    def value(self, site: Site) -> Tensor:
        """``w0 ⊙ (m + (s - sg(s)))``: ``w0 ⊙ m`` with the straight-through score gradient."""
        s = self.scores[key(site.name)]
        w0 = self._frozen[key(site.name)].detach()
        m = self.mask(site).to(s.dtype)
        return w0 * (m + (s - s.detach()))

    def parameters_by_role(self) -> dict[str, list[nn.Parameter]]:
        """Every score under role ``"score"`` (``fit(role_lr={"score": ...})``)."""
        return {"score": list(self.scores.values())}

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def _distribution(self, site: Site) -> Distribution:
        return dist.Delta(self.value(site), event_dim=site.event_dim)

    def _rsample(self, site: Site) -> tuple[Tensor, None]:
        return self.value(site), None

    def _point(self, site: Site) -> Tensor:
        return self._frozen[key(site.name)].detach() * self.mask(site).to(
            self.scores[key(site.name)].dtype
        )

    @torch.no_grad()
    def point(self) -> dict[str, Tensor]:
        """``w0 ⊙ m`` per site, and each mask (0/1 floats) under ``mask_key(site)``."""
        out = super().point()
        for s in self.sites:
            out[mask_key(s.name)] = self.mask(s).to(self.scores[key(s.name)].dtype)
        return out
