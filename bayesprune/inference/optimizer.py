"""The fit's one ``torch.optim`` optimizer: a parameter group per site role.

Guide parameters are grouped by the role of their site (``weight``, ``scale``, ``gate``,
...) so that each role can have its own learning rate; the network's deterministic
parameters (biases, BatchNorm, layers without a prior) form the ``deterministic`` group.

``weight_decay`` is the optimizer's L2 penalty, an extra Gaussian prior the model does not
declare; it is therefore put only on network weights -- the guide's location of every
``weight`` site and the network's ``deterministic`` parameters -- and never on gate
probabilities θ, shrinkage scales λ, jackpot scores or a mean-field guide's standard
deviations (their groups get ``weight_decay=0``; a mean-field ``weight`` role has a second
group of that name for its spreads).

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MAP
>>> net = sparsify(nn.Linear(3, 2), HALO())
>>> opt = make_optimizer(net, MAP(net), "adam", lr=1e-3, role_lr={"scale": 1e-2}, weight_decay=0.1)
>>> [(g["role"], g["lr"], g["weight_decay"]) for g in opt.param_groups]
[('scale', 0.01, 0.0), ('weight', 0.001, 0.1), ('deterministic', 0.001, 0.1)]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from bayesprune.errors import ConfigError
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}

#: the groups ``weight_decay`` applies to: network weights (never θ, λ or scores)
DECAYED_ROLES = ("weight", "deterministic")


def make_optimizer(
    net: BayesianNet,
    guide: Guide,
    name: str,
    *,
    lr: float,
    role_lr: dict[str, float] | None = None,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """An optimizer over every trained tensor of ``guide`` and ``net``, grouped by role;
    ``weight_decay`` on the network weights only (see the module docstring)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"fit: unknown optimizer {name!r}; known: {sorted(OPTIMIZERS)}")
    role_lr = role_lr or {}
    spreads = _spreads(guide) if weight_decay else set()
    groups: list[dict[str, Any]] = []
    seen: set[int] = set()

    def add(role: str, params: list[nn.Parameter], lr_: float, decay: bool) -> None:
        if params:
            wd = weight_decay if decay else 0.0
            groups.append({"params": params, "lr": lr_, "role": role, "weight_decay": wd})

    for role, params in guide.parameters_by_role().items():
        params = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in params)
        decay = role in DECAYED_ROLES
        add(role, [p for p in params if id(p) not in spreads], role_lr.get(role, lr), decay)
        add(role, [p for p in params if id(p) in spreads], role_lr.get(role, lr), False)
    rest = [p for p in guide.parameters() if p.requires_grad and id(p) not in seen]
    rest += [p for _, p in net.deterministic_parameters() if p.requires_grad]
    add("deterministic", rest, lr, True)
    if not groups:
        raise ConfigError(
            "fit: nothing to train: the guide has no parameters and every parameter of the "
            "network has requires_grad=False"
        )
    kw: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if name == "sgd":
        kw["momentum"] = 0.9
    else:
        kw["fused"] = True  # one kernel per step for all parameters (CPU and CUDA)
    return OPTIMIZERS[name](groups, **kw)


def _spreads(guide: Guide) -> set[int]:
    """The guide's standard-deviation parameters (a mean-field guide's ``rho``): they share
    their site's role but are not weights, so they are never decayed."""
    rho = getattr(guide, "rho", None)
    return {id(p) for p in rho.values()} if isinstance(rho, nn.ParameterDict) else set()


def trained_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor the optimizer updates, in group order."""
    return [p for g in optimizer.param_groups for p in g["params"]]
