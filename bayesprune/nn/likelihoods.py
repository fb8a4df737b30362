"""Observation models: how the network's output explains the targets.

A likelihood has two faces that must agree: :meth:`observe` is the Pyro
statement inside the model (a data plate scaled from the mini-batch to the
whole training set), :meth:`log_prob` is the same quantity computed directly
for the fused loss.

>>> import torch
>>> lik = Categorical()
>>> float(lik.log_prob(torch.zeros(2, 4), torch.tensor([0, 3])))  # 2 * log(1/4)
-2.772588...
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor

from bayesprune.errors import ConfigError, DataError


def check_batch(batch: int, n_data: int) -> None:
    """A mini-batch stands for ``n_data`` examples, so it cannot be larger."""
    if int(n_data) < batch:
        raise ConfigError(
            f"n_data={n_data} is smaller than the mini-batch ({batch}); n_data is the "
            "training-set size the batch is scaled up to"
        )


class Likelihood(ABC):
    """Base class: ``observe`` for the Pyro model, ``log_prob`` for the fused loss."""

    name = "likelihood"

    @abstractmethod
    def distribution(self, output: Tensor) -> dist.Distribution:
        """``p(y | output)`` for a mini-batch of network outputs."""

    def log_prob(self, output: Tensor, y: Tensor) -> Tensor:
        """``Σ_i log p(y_i | output_i)`` over the mini-batch (not scaled)."""
        return self.distribution(output).log_prob(y).sum()

    def observe(self, output: Tensor, y: Tensor | None, n_data: int) -> Tensor:
        """``pyro.sample("obs", ...)`` inside a data plate of size ``n_data``."""
        batch = output.shape[0]
        check_batch(batch, n_data)
        idx = torch.arange(batch, device=output.device)
        with pyro.plate("data", size=int(n_data), subsample=idx):
            return pyro.sample("obs", self.distribution(output), obs=y)

    def check_targets(self, y: Tensor, output_dim: int | None = None) -> None:  # noqa: B027 (optional hook)
        """Raise ``ValueError`` for targets this likelihood cannot explain."""

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


class Categorical(Likelihood):
    """Classification: ``y ~ Categorical(logits=output)``."""

    name = "categorical"

    def distribution(self, output: Tensor) -> dist.Distribution:
        return dist.Categorical(logits=output)

    def log_prob(self, output: Tensor, y: Tensor) -> Tensor:
        return -F.cross_entropy(output, y, reduction="sum")

    def check_targets(self, y: Tensor, output_dim: int | None = None) -> None:  # noqa: B027 (optional hook)
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise DataError(
                f"Categorical likelihood: targets must be integer labels, got {y.dtype}"
            )
        if y.numel() and int(y.min()) < 0:
            raise DataError("Categorical likelihood: targets must be >= 0")
        if output_dim is not None and y.numel() and int(y.max()) >= output_dim:
            raise DataError(
                f"Categorical likelihood: target label {int(y.max())} but the network has "
                f"only {output_dim} outputs"
            )


class Gaussian(Likelihood):
    """Regression: ``y ~ Normal(output, scale)`` with a fixed noise scale.

    :param scale: the observation noise standard deviation.
    """

    name = "gaussian"

    def __init__(self, scale: float = 1.0) -> None:
        if isinstance(scale, bool) or not (
            isinstance(scale, (int, float)) and 0 < scale < math.inf
        ):
            raise ConfigError(f"Gaussian likelihood: scale must be > 0, got {scale!r}")
        self.scale = float(scale)

    def distribution(self, output: Tensor) -> dist.Distribution:
        out = output.squeeze(-1) if output.dim() > 1 and output.shape[-1] == 1 else output
        d = dist.Normal(out, self.scale)
        return d.to_event(out.dim() - 1) if out.dim() > 1 else d

    def log_prob(self, output: Tensor, y: Tensor) -> Tensor:
        out = output.squeeze(-1) if output.dim() > 1 and output.shape[-1] == 1 else output
        n = out.numel()
        sq = (y - out).square().sum()
        return -0.5 * sq / self.scale**2 - n * (math.log(self.scale) + 0.5 * math.log(2 * math.pi))

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale}


def likelihood_from_config(config: dict[str, Any] | str) -> Likelihood:
    """Build a likelihood from ``"categorical"`` / ``{"name": "gaussian", "scale": 0.1}``."""
    cfg = {"name": config} if isinstance(config, str) else dict(config)
    name = cfg.pop("name", None)
    kinds = {"categorical": Categorical, "gaussian": Gaussian}
    if name not in kinds:
        raise ConfigError(f"likelihood: unknown name {name!r}; known: {sorted(kinds)}")
    try:
        return kinds[name](**cfg)
    except TypeError as e:
        raise ConfigError(f"likelihood {name!r}: bad options {sorted(cfg)}: {e}") from None
