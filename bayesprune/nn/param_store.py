"""Expose an ``nn.Module``'s parameters to Pyro's param store.

Pyro's ``SVI`` optimises the parameters its ``param`` statements record while it
traces the model and the guide. Our guides and the network's deterministic
parameters (biases, BatchNorm, layers without a prior) are ordinary
``nn.Parameter``\\ s, trained by :func:`bayesprune.fit` with one ``torch.optim``
optimizer; :func:`expose` issues a ``pyro.param`` statement for each of them
*with the parameter object itself*, so Pyro's own ``SVI``, ``Predictive`` and
ELBOs see and train exactly the same tensors.

The module is the source of truth: an entry of the param store under the same
name that holds another tensor (a stale one from an earlier module, or a
parameter replaced by live unit removal) is overwritten with the module's
parameter. So the param store mirrors the modules; to save or restore a fit use
the modules' ``state_dict``, not ``pyro.get_param_store().save``.

>>> import pyro, torch.nn as nn
>>> layer = nn.Linear(2, 1)
>>> expose("net", layer.named_parameters())
>>> pyro.get_param_store()["net$$$bias"] is layer.bias
True
"""

from __future__ import annotations

from collections.abc import Iterable

import pyro
import torch.nn as nn
from pyro.params import param_with_module_name

__all__ = ["expose"]


def expose(prefix: str, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
    """``pyro.param(f"{prefix}$$${name}", p)`` for every trainable parameter, ``p`` itself
    stored (see the module docstring).

    :param prefix: namespace in the param store (``"guide"``, ``"net"``).
    :param named_parameters: ``(name, parameter)`` pairs, e.g. ``module.named_parameters()``.
    """
    store = pyro.get_param_store()
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        full = param_with_module_name(prefix, name)
        if full in store and store._params[full] is not p:
            del store[full]  # stale: another tensor under this name
        pyro.param(full, p)
