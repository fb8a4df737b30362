"""Priors by name: what :func:`from_config` (and the TOML specs) can build.

Each prior module registers its class when it is imported (``register("halo", HALO)`` at its
end), so the registry imports no prior and any prior may build another from a config (a
gate prior's ``weight_prior``) without an import cycle.

>>> from bayesprune.priors import HALO
>>> PRIORS["halo"] is HALO
True
>>> from_config({"name": "halo", "xi": 1e-4, "psi": 1e-4}).xi
0.0001
"""

from __future__ import annotations

from typing import Any

from bayesprune.errors import ConfigError
from bayesprune.priors.base import Prior

#: registered prior classes by name
PRIORS: dict[str, type[Prior]] = {}


def register(name: str, cls: type[Prior]) -> None:
    """Make ``cls`` buildable by :func:`from_config` under ``name``."""
    PRIORS[name] = cls


def from_config(config: dict[str, Any]) -> Prior:
    """Build a prior from its :meth:`Prior.config` dict (``{"name": ..., **hyper-parameters}``).

    :raises ConfigError: for an unknown name or hyper-parameter, naming it.
    """
    cfg = dict(config)
    name = cfg.pop("name", None)
    if name not in PRIORS:
        raise ConfigError(f"prior: unknown name {name!r}; known priors: {sorted(PRIORS)}")
    try:
        return PRIORS[name](**cfg)
    except TypeError as e:
        raise ConfigError(f"prior {name!r}: bad hyper-parameters {sorted(cfg)}: {e}") from None
