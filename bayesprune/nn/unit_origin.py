"""A net's record of the units removed from it while it was trained.

Live removal (:func:`bayesprune.pruning.remove_units`) writes it; everything downstream
reads it through these functions -- the fit loop to sign and resume checkpoints, diagnostics
and export to name units by their original indices -- without depending on the pruning code.

>>> import torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> net = sparsify(nn.Linear(3, 2), HALO())
>>> unit_origin(net) is None, removed_units(net), original_sites(net) == net.sites
(True, {}, True)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.sites import Site

#: attribute of a BayesianNet holding its :class:`UnitOrigin` after a removal
RECORD = "unit_origin"


@dataclass
class UnitOrigin:
    """What live removal has done to a net so far (kept on the net as ``net.unit_origin``).

    :ivar sites: the net's sites before its first removal (checkpoints are signed with them).
    :ivar n_units: units of each unit layer before the first removal.
    :ivar units: for each layer that has lost units, the original indices of its current units.
    """

    sites: tuple[Site, ...]
    n_units: dict[str, int]
    units: dict[str, Tensor]


def unit_origin(net: BayesianNet) -> UnitOrigin | None:
    """The net's removal record, ``None`` if no unit was ever removed."""
    return net.__dict__.get(RECORD)


def original_sites(net: BayesianNet) -> tuple[Site, ...]:
    """The net's sites as built, before any live removal."""
    rec = unit_origin(net)
    return rec.sites if rec is not None else net.sites


def removed_units(net: BayesianNet) -> dict[str, Tensor]:
    """The cumulative keep map in original indexing: for each layer that has lost units,
    the original indices of the units it still has (layers not listed are whole)."""
    rec = unit_origin(net)
    return {} if rec is None else {n: u.clone() for n, u in rec.units.items()}
