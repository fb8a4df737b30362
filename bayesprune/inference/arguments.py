"""The checks of :func:`bayesprune.fit`'s keyword arguments, each naming the argument.

>>> check_fit_arguments(epochs=2, batch_size=0, lr=1e-3)
Traceback (most recent call last):
...
bayesprune.errors.ConfigError: fit: batch_size must be a positive integer, got 0
"""

from __future__ import annotations

import math
from typing import Any

from bayesprune.errors import ConfigError


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"fit: {name} must be a positive integer, got {value!r}")


def _positive_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < math.inf):
        raise ConfigError(f"fit: {name} must be a finite number > 0, got {value!r}")


def check_fit_arguments(
    *,
    epochs: Any,
    batch_size: Any = 128,
    lr: Any = 1e-3,
    role_lr: dict[str, Any] | None = None,
    log_every: Any = 50,
    checkpoint: Any = None,
    checkpoint_every: Any = None,
    resume: Any = False,
    remove_dead: Any = False,
    n_data: Any = None,
) -> None:
    """Raise :class:`~bayesprune.errors.ConfigError` (a ``ValueError``) naming the first invalid argument."""
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ConfigError(f"fit: epochs must be an integer >= 0, got {epochs!r}")
    _positive_int("batch_size", batch_size)
    _positive_number("lr", lr)
    for role, v in (role_lr or {}).items():
        _positive_number(f"role_lr[{role!r}]", v)
    _positive_int("log_every", log_every)
    if checkpoint_every is not None:
        _positive_int("checkpoint_every", checkpoint_every)
    if n_data is not None:
        _positive_int("n_data", n_data)
    if resume and checkpoint is None:
        raise ConfigError("fit: resume=True needs checkpoint=<folder>")
    if not isinstance(remove_dead, bool) and not (
        isinstance(remove_dead, int) and remove_dead >= 1
    ):
        raise ConfigError(
            f"fit: remove_dead must be True, False or a number of steps >= 1, got {remove_dead!r}"
        )
