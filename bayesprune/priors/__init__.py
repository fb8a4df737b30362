"""Sparsity-inducing priors, one family per file.

>>> from bayesprune.priors import HALO, from_config
>>> from_config({"name": "halo", "xi": 1e-4, "psi": 1e-4}).xi
0.0001
"""

from __future__ import annotations

from bayesprune.priors.base import DEFAULT_LAYER_TYPES, Prior
from bayesprune.priors.block_gates import BlockGates
from bayesprune.priors.dense import Dense
from bayesprune.priors.gates import UnitGates
from bayesprune.priors.gaussian import Gaussian
from bayesprune.priors.halo import HALO
from bayesprune.priors.hypersparse import HyperSparse
from bayesprune.priors.jackpot import Jackpot
from bayesprune.priors.registry import PRIORS, from_config, register

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
    "PRIORS",
    "from_config",
    "register",
]
