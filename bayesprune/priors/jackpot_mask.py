"""The lottery-jackpot prior's distribution: a frozen weight times a Bernoulli mask.

:class:`MaskedWeight` is ``w0 ⊙ z`` with ``z_i ~ Bernoulli(p)`` independently: a discrete
distribution over the ``2^n`` tensors whose entries are ``0`` or ``w0_i``. Its log mass is
``Σ_i [z_i log p + (1 - z_i) log(1 - p)]`` where ``z_i = 1`` for an entry equal to ``w0_i``
and ``0`` for an entry equal to 0 (an entry with ``w0_i = 0`` is 0 under both outcomes and
contributes ``log 1 = 0``); any other value has log mass ``-inf``. When no ``w0_i`` is
exactly 0, every mask with exactly ``k`` ones has the same log mass
``k log p + (n - k) log(1 - p)`` -- the prior ranks no mask of the target size above
another; only the likelihood does. (Each exact zero of ``w0`` replaces its term by 0, so
masks that differ there differ by ``log p`` against ``log(1 - p)``.)

:data:`MASK_SUFFIX` names the extra point entries a jackpot guide adds for ``collapse``
(``"fc1.weight" + MASK_SUFFIX``: the current 0/1 mask).

>>> import torch
>>> d = MaskedWeight(torch.tensor([2.0, -1.0, 0.5]), probs=0.5)
>>> round(float(d.log_prob(torch.tensor([2.0, 0.0, 0.5]))), 4)  # 3 log(1/2)
-2.0794
>>> float(d.log_prob(torch.tensor([1.0, 0.0, 0.5])))  # 1.0 is neither 0 nor w0[0]
-inf
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from bayesprune.errors import ConfigError

#: suffix of the point entries holding a jackpot guide's current mask (see the module docstring)
MASK_SUFFIX = "$mask"


def mask_key(site_name: str) -> str:
    """The point-dict key of the mask of ``site_name`` (``"fc1.weight$mask"``)."""
    return site_name + MASK_SUFFIX


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


class MaskedWeight(TorchDistribution):
    """``w0 ⊙ z`` with ``z_i ~ Bernoulli(probs)`` i.i.d. (see the module docstring).

    :param w0: the frozen weight (its shape is the event shape; not copied).
    :param probs: the probability ``p`` that an entry is kept, in ``[0, 1]``.
    """

    arg_constraints: dict = {}
    support = constraints.real  # the values are real tensors; log_prob is -inf off {0, w0_i}
    has_rsample = False

    def __init__(self, w0: Tensor, probs: float, validate_args: bool | None = None) -> None:
        if not 0 <= probs <= 1:
            raise ConfigError(f"MaskedWeight: probs must be in [0, 1], got {probs!r}")
        self.w0 = w0
        self.probs = float(probs)
        super().__init__(torch.Size(), w0.shape, validate_args=validate_args)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.w0.shape
        z = torch.rand(shape, device=self.w0.device) < self.probs
        return self.w0.detach() * z.to(self.w0.dtype)

    def log_prob(self, value: Tensor) -> Tensor:
        w0 = self.w0.detach()
        on, off = value == w0, value == 0
        lp = torch.full_like(value, -math.inf)
        lp = torch.where(off, _log(1.0 - self.probs), lp)
        lp = torch.where(on, _log(self.probs), lp)
        lp = torch.where(on & off, 0.0, lp)
        return lp.flatten(value.dim() - w0.dim()).sum(-1) if w0.dim() else lp
