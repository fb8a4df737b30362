"""The fit's one ``torch.optim`` optimizer: a parameter group per site role.

Guide parameters are grouped by the role of their site (``weight``, ``scale``, ``gate``,
...) so that each role can have its own learning rate; the network's deterministic
parameters (biases, BatchNorm, layers without a prior) form the ``deterministic`` group.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MAP
>>> net = sparsify(nn.Linear(3, 2), HALO())
>>> opt = make_optimizer(net, MAP(net), "adam", lr=1e-3, role_lr={"scale": 1e-2})
>>> [(g["role"], g["lr"]) for g in opt.param_groups]
[('scale', 0.01), ('weight', 0.001), ('deterministic', 0.001)]
"""

from __future__ import annotations

from typing import Any

import torch

from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def make_optimizer(
    net: BayesianNet,
    guide: Guide,
    name: str,
    *,
    lr: float,
    role_lr: dict[str, float] | None = None,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """An optimizer over every trained tensor of ``guide`` and ``net``, grouped by role."""
    if name not in OPTIMIZERS:
        raise ValueError(f"fit: unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    role_lr = role_lr or {}
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()
    for role, params in guide.parameters_by_role().items():
        params = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        if params:
            groups.append({"params": params, "lr": role_lr.get(role, lr), "role": role})
    rest = [p for p in guide.parameters() if p.requires_grad and id(p) not in seen]
    rest += [p for _, p in net.deterministic_parameters() if p.requires_grad]
    if rest:
        groups.append({"params": rest, "lr": lr, "role": "deterministic"})
    if not groups:
        raise ValueError(
            "fit: nothing to train: the guide has no parameters and every parameter of the "
            "network has requires_grad=False"
        )
    kw: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if name == "sgd":
        kw["momentum"] = 0.9
    else:
        kw["fused"] = True  # one kernel per step for all parameters (CPU and CUDA)
    return OPTIMIZERS[name](groups, **kw)


def trained_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor the optimizer updates, in group order."""
    return [p for g in optimizer.param_groups for p in g["params"]]
