"""Magnitude pruning: the baseline every Bayesian method is compared with.

>>> import torch.nn as nn
>>> net = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2))
>>> keep = magnitude_keep(net, keep=0.5)
>>> sum(k.n_kept for k in keep.values())
60
"""

from __future__ import annotations

import torch
import torch.nn as nn

from bayesprune.nn.selection import LayerSelector, select_layers
from bayesprune.pruning.keepset import KeepSet

_DEFAULT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def magnitude_keep(
    module: nn.Module, *, keep: float, layers: LayerSelector = None, scope: str = "global"
) -> dict[str, KeepSet]:
    """Unstructured keep-sets keeping the ``keep`` fraction of largest-|w| weights.

    :param module: a trained dense network.
    :param keep: fraction of weights kept, in ``(0, 1]``.
    :param layers: which layers are pruned (default: every Linear/Conv).
    :param scope: ``"global"`` (one threshold over all layers) or ``"layer"``.
    """
    if not (0 < keep <= 1):
        raise ValueError(f"magnitude_keep: keep must be in (0, 1], got {keep!r}")
    if scope not in ("global", "layer"):
        raise ValueError(f"magnitude_keep: scope must be 'global' or 'layer', got {scope!r}")
    names = select_layers(module, layers, default=_DEFAULT)
    weights = {n: module.get_submodule(n).weight.detach().abs() for n in names}
    result: dict[str, KeepSet] = {}
    if scope == "global":
        flat = torch.cat([w.flatten() for w in weights.values()])
        k = round(keep * flat.numel())
        mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        if k:
            mask[torch.topk(flat, k, sorted=False).indices] = True
        off = 0
        for n, w in weights.items():
            result[n] = KeepSet(weight_mask=mask[off : off + w.numel()].reshape(w.shape).cpu())
            off += w.numel()
    else:
        for n, w in weights.items():
            k = round(keep * w.numel())
            m = torch.zeros(w.numel(), dtype=torch.bool, device=w.device)
            if k:
                m[torch.topk(w.flatten(), k, sorted=False).indices] = True
            result[n] = KeepSet(weight_mask=m.reshape(w.shape).cpu())
    return result
