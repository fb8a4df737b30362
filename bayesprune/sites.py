"""Sample sites that a prior adds to a layer.

A :class:`Site` is the static description of one ``pyro.sample`` statement of a
:class:`~bayesprune.nn.BayesianNet`: its name (the user's module path plus the
parameter, e.g. ``"fc1.weight"``), its shape and support, and which module
parameter it replaces when the network runs (``None`` for latent-only sites
such as shrinkage scales or gates).

>>> from torch.distributions import constraints
>>> s = Site("fc1.weight", layer="fc1", role="weight", shape=(3, 4),
...          support=constraints.real, replaces="fc1.weight")
>>> s.numel
12
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import constraints
from torch.distributions.constraints import Constraint


def is_real(c: Constraint) -> bool:
    """``c`` is the real line (by kind, so deep-copied constraints still match)."""
    return type(c) is type(constraints.real)


def is_positive(c: Constraint) -> bool:
    """``c`` is ``(0, ∞)`` (by kind and bound, so deep-copied constraints still match)."""
    return type(c) is type(constraints.positive) and float(c.lower_bound) == 0.0


def join(layer: str, attr: str) -> str:
    """``"fc1", "weight" -> "fc1.weight"``; the root module (``""``) gives ``"weight"``."""
    return f"{layer}.{attr}" if layer else attr


@dataclass(frozen=True)
class Site:
    """One latent variable of the model. See the module docstring."""

    name: str
    layer: str
    role: str
    shape: tuple[int, ...]
    support: Constraint = constraints.real
    replaces: str | None = None
    info: tuple[tuple[str, Any], ...] = ()

    @property
    def meta(self) -> dict[str, Any]:
        """Prior-specific static facts about the site (e.g. how many weights share a scale)."""
        return dict(self.info)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def event_dim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class Context:
    """What a prior needs to know about the run: the training-set size ``n_data``
    that scales per-example hyper-parameters, and the device and dtype of the values."""

    n_data: int
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def full(self, shape: tuple[int, ...], value: float) -> torch.Tensor:
        return torch.full(shape, float(value), device=self.device, dtype=self.dtype)
