"""Point a ``torch.optim`` optimizer at sliced parameters, with its state sliced alike.

After a live unit removal some parameters are new, smaller ``nn.Parameter`` objects. The
optimizer's ``param_groups`` are pointed at them in the same positions, and every
per-parameter state tensor shaped like the old parameter (Adam's ``exp_avg`` /
``exp_avg_sq``, SGD's ``momentum_buffer``, ...) is gathered with the same indices, so the
next step equals the step the unpruned model would take, restricted to the survivors.
Scalars (Adam's ``step``) are kept.

>>> import torch, torch.nn as nn
>>> from bayesprune.pruning.live_surgery import Slice
>>> old = nn.Parameter(torch.ones(4))
>>> opt = torch.optim.Adam([old])
>>> old.grad = torch.arange(4.0); opt.step()
>>> keep = torch.tensor([1, 3])
>>> new = nn.Parameter(old.detach()[keep])
>>> remap_optimizer(opt, [(old, new, Slice((4,), keep, [keep]))])
>>> opt.param_groups[0]["params"][0] is new, opt.state[new]["exp_avg"].shape
(True, torch.Size([2]))
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayesprune.pruning.live_surgery import Replaced


@torch.no_grad()
def remap_optimizer(opt: torch.optim.Optimizer, replaced: Replaced) -> None:
    """Replace each ``old`` parameter by ``new`` in ``opt`` and slice its state (see the
    module docstring)."""
    by_id = {id(old): (old, new, sl) for old, new, sl in replaced}
    for group in opt.param_groups:
        group["params"] = [by_id[id(p)][1] if id(p) in by_id else p for p in group["params"]]
    for old, new, sl in by_id.values():
        state = opt.state.pop(old, None)
        if state is None:
            continue
        opt.state[new] = {
            k: sl.take(v) if isinstance(v, Tensor) and tuple(v.shape) == sl.old_shape else v
            for k, v in state.items()
        }
