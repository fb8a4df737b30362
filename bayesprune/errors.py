"""The errors bayesprune raises on purpose: bad input named by its culprit.

Every error here is a :class:`BayesPruneError` *and* the built-in class a caller
would have caught before (``ValueError``, ``TypeError``, ``FloatingPointError``),
so ``except ValueError`` keeps working. The CLI prints a :class:`BayesPruneError`
as one line and lets every other exception -- a bug -- through with its traceback.

This module sits on the ground floor: it imports nothing from the package.

>>> try:
...     raise ConfigError("HALO: xi must be > 0, got 0")
... except ValueError as e:
...     print(type(e).__name__, isinstance(e, BayesPruneError))
ConfigError True
"""

from __future__ import annotations

__all__ = [
    "BayesPruneError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ExportMismatchError",
    "NonFiniteLossError",
    "SpecError",
    "UnsupportedError",
]


class BayesPruneError(Exception):
    """Base class: an input or state the user can fix; the message names the culprit."""


class ConfigError(BayesPruneError, ValueError):
    """An invalid argument or hyper-parameter (a prior's strength, ``fit``'s ``lr``...)."""


class SpecError(ConfigError):
    """A malformed TOML spec: the message names the file, section and key."""


class DataError(BayesPruneError, ValueError):
    """Training or validation data the network cannot take (shape, dtype, NaN, empty)."""


class CheckpointError(BayesPruneError, ValueError):
    """A checkpoint or saved network is missing, corrupt, or does not fit the model."""


class UnsupportedError(BayesPruneError, TypeError):
    """A layer, module or object of a type the operation does not support."""


class ExportMismatchError(BayesPruneError, ValueError):
    """An exported model's outputs differ from the eager module's beyond tolerance."""


class NonFiniteLossError(BayesPruneError, FloatingPointError):
    """The loss became NaN or infinite; the message says where and which checkpoint is intact."""
