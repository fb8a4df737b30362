"""Guide families: :class:`MAP` (Delta) and :class:`MeanField`.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> net = sparsify(nn.Linear(3, 2), HALO(), layers=nn.Linear)
>>> type(default_guide(net)).__name__
'MAP'
"""

from __future__ import annotations

from typing import Any

from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide
from bayesprune.guides.jackpot import JackpotGuide
from bayesprune.guides.map import MAP
from bayesprune.guides.mean_field import MeanField
from bayesprune.nn.bayesian_net import BayesianNet

__all__ = [
    "MAP",
    "Guide",
    "JackpotGuide",
    "MeanField",
    "default_guide",
    "guide_from_config",
    "register",
]

_REGISTRY: dict[str, type[Guide]] = {
    "map": MAP,
    "mean_field": MeanField,
    "meanfield": MeanField,
    "jackpot": JackpotGuide,
}


def register(name: str, cls: type[Guide]) -> None:
    """Make ``cls`` buildable by :func:`guide_from_config` under ``name``."""
    _REGISTRY[name] = cls


def guide_from_config(net: BayesianNet, config: dict[str, Any] | str) -> Guide:
    """Build a guide for ``net`` from ``"map"`` or ``{"name": "mean_field", "init_scale": 1e-3}``.

    :raises ValueError: for an unknown guide name or option, naming it.
    """
    cfg = {"name": config} if isinstance(config, str) else dict(config)
    name = str(cfg.pop("name", "")).replace("-", "_")
    if name not in _REGISTRY:
        raise ConfigError(f"guide: unknown name {name!r}; known guides: {sorted(_REGISTRY)}")
    try:
        return _REGISTRY[name](net, **cfg)
    except TypeError as e:
        raise ConfigError(f"guide {name!r}: bad options {sorted(cfg)}: {e}") from None


def default_guide(net: BayesianNet) -> Guide:
    """The guide family the net's prior asks for (``prior.default_guide``)."""
    return guide_from_config(net, net.prior.default_guide)
