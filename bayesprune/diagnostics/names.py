"""Names of the ``InferenceData`` dimensions, after the user's own modules.

A layer named ``L`` (the module path, ``""`` for the root module) gets the tag
``L`` with ``.`` replaced by ``_`` (``"net"`` for the root); its units live on the
dimension ``"<tag>_unit"`` whose coordinates are the units' *original* indices,
also after units were cut out during the fit (``fit(..., remove_dead=True)``).

>>> tag("features.0"), unit_dim(""), weight_dims("conv1", 4)
('features_0', 'net_unit', ('conv1_out', 'conv1_in', 'conv1_kh', 'conv1_kw'))
"""

from __future__ import annotations

import torch
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.unit_origin import removed_units

#: names of the kernel dimensions of a weight, by the number of kernel dimensions
_KERNEL = {0: (), 1: ("k",), 2: ("kh", "kw"), 3: ("kd", "kh", "kw")}


def tag(layer: str) -> str:
    """``"features.0" -> "features_0"``; the root module ``""`` -> ``"net"``."""
    return layer.replace(".", "_") if layer else "net"


def unit_dim(layer: str) -> str:
    """The per-unit dimension of ``layer``: ``"<tag>_unit"``."""
    return f"{tag(layer)}_unit"


def weight_dims(layer: str, ndim: int) -> tuple[str, ...]:
    """Dimensions of a weight of ``layer`` with ``ndim`` axes: ``out``, ``in`` and the kernel
    axes (``k`` for Conv1d, ``kh, kw`` for Conv2d, ``kd, kh, kw`` for Conv3d).

    :raises ValueError: for a weight with fewer than 1 or more than 5 axes.
    """
    if not 1 <= ndim <= 5:
        raise ConfigError(f"layer {layer!r}: cannot name the axes of a {ndim}-d weight")
    names = ("out", "in", *_KERNEL[max(ndim - 2, 0)])[:ndim]
    return tuple(f"{tag(layer)}_{n}" for n in names)


def unit_coords(net: BayesianNet, layer: str, n_units: int) -> Tensor:
    """Original indices of the ``n_units`` current units of ``layer`` (``arange`` unless
    units were removed during the fit).

    :raises ValueError: if the removal record does not match the layer's current size.
    """
    kept = removed_units(net).get(layer)
    if kept is None:
        return torch.arange(n_units)
    if kept.numel() != n_units:
        raise ConfigError(
            f"layer {layer!r}: the removal record lists {kept.numel()} units but the layer "
            f"has {n_units}"
        )
    return kept.clone()
