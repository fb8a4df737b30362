"""Sparsity-inducing priors, one family per file.

>>> from bayesprune.priors import HALO, from_config
>>> from_config({"name": "halo", "xi": 1e-4, "psi": 1e-4}).xi
0.0001
"""

from __future__ import annotations

from typing import Any

from bayesprune.errors import ConfigError
from bayesprune.priors.base import DEFAULT_LAYER_TYPES, Prior
from bayesprune.priors.block_gates import BlockGates
from bayesprune.priors.dense import Dense
from bayesprune.priors.gates import UnitGates
from bayesprune.priors.gaussian import Gaussian
from bayesprune.priors.halo import HALO
from bayesprune.priors.hypersparse import HyperSparse
from bayesprune.priors.jackpot import Jackpot

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "HALO",
    "HyperSparse",
    "Jackpot",
    "BlockGates",
    "Dense",
    "Gaussian",
    "Prior",
    "UnitGates",
    "from_config",
    "register",
]

_REGISTRY: dict[str, type[Prior]] = {
    "halo": HALO,
    "gaussian": Gaussian,
    "gates": UnitGates,
    "block_gates": BlockGates,
    "dense": Dense,
    "hypersparse": HyperSparse,
    "jackpot": Jackpot,
}


def register(name: str, cls: type[Prior]) -> None:
    """Make ``cls`` buildable by :func:`from_config` under ``name``."""
    _REGISTRY[name] = cls


def from_config(config: dict[str, Any]) -> Prior:
    """Build a prior from its :meth:`Prior.config` dict (``{"name": ..., **hyper-parameters}``).

    :raises ValueError: for an unknown name or hyper-parameter, naming it.
    """
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in _REGISTRY:
        raise ConfigError(f"prior: unknown name {name!r}; known priors: {sorted(_REGISTRY)}")
    try:
        return _REGISTRY[name](**cfg)
    except TypeError as e:
        raise ConfigError(f"prior {name!r}: bad hyper-parameters {sorted(cfg)}: {e}") from None
