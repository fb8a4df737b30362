"""Learning-rate schedules stepped once per optimizer step.

>>> import torch
>>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
>>> s = make_schedule(opt, "cosine", total_steps=4)
>>> lrs = []
>>> for _ in range(3):
...     opt.step(); s.step(); lrs.append(round(opt.param_groups[0]["lr"], 3))
>>> lrs
[0.854, 0.5, 0.146]
"""

from __future__ import annotations

import math

import torch

from bayesprune.errors import ConfigError


def make_schedule(
    optimizer: torch.optim.Optimizer, name: str | None, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``None``/``"constant"`` (no schedule) or ``"cosine"`` (from the base lr to zero)."""
    if name in (None, "constant"):
        return None
    if name == "cosine":
        t = max(int(total_steps), 1)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, t) / t))
        )
    raise ConfigError(f"unknown schedule {name!r}; use None, 'constant' or 'cosine'")
