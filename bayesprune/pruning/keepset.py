"""What survives of one layer after collapse.

A :class:`KeepSet` is the hand-off between *deciding* what to drop (priors,
guides, baselines) and *doing* it (:func:`bayesprune.extract`). It can say
four things about a layer, any combination of them:

- ``weight_mask``: an unstructured boolean mask over the layer's weight;
- ``units``: the output units / filters kept (structured, physically removed);
- ``values``: point estimates for the layer's parameters (e.g. the posterior
  median of the weight) to write into the extracted network; parameters not
  named keep the module's own values;
- ``identity``: for a residual block, that the whole block is removed and
  replaced by its shortcut (block gates; ``n_units=1`` counts the block as one
  element);
- ``zeroed``: kept units whose output is zeroed rather than removed -- a unit
  whose gate is closed but that is kept so its layer is not emptied
  (``collapse(min_units=1)``): the network keeps its shape and computes what the
  collapsed model computes, with that unit at 0.

>>> import torch
>>> k = KeepSet(units=torch.tensor([0, 2]), n_units=3)
>>> k.n_kept, k.fraction_kept
(2, 0.6666666666666666)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bayesprune.errors import ConfigError, UnsupportedError


@dataclass
class KeepSet:
    """Per-layer pruning decision. See the module docstring."""

    weight_mask: Tensor | None = None
    units: Tensor | None = None
    n_units: int | None = None
    values: dict[str, Tensor] = field(default_factory=dict)
    identity: bool = False  # a whole block removed: it becomes its shortcut
    #: posterior inclusion probability of every prunable element of the layer (shaped like
    #: its collapse scores), when the keep-set came from ``collapse(rule="inclusion")``
    p_keep: Tensor | None = None
    #: kept units (a subset of ``units``) whose outputs are zeroed, not removed
    zeroed: Tensor | None = None

    def __post_init__(self) -> None:
        if self.weight_mask is not None and (
            not isinstance(self.weight_mask, Tensor) or self.weight_mask.dtype != torch.bool
        ):
            got = getattr(self.weight_mask, "dtype", type(self.weight_mask).__name__)
            raise UnsupportedError(f"KeepSet.weight_mask must be a bool tensor, got {got}")
        if self.n_units is not None:
            n = self.n_units
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise ConfigError(f"KeepSet.n_units must be a positive integer, got {n!r}")
            self.n_units = int(n)
        if self.units is not None:
            u = torch.as_tensor(self.units)
            if u.numel() and (u.dtype == torch.bool or u.is_floating_point() or u.is_complex()):
                raise UnsupportedError(
                    f"KeepSet.units must be integer unit indices, got {u.dtype} "
                    "(for a boolean mask over units use mask.nonzero().flatten())"
                )
            u = u.to(torch.long).flatten()
            if u.numel() and (
                u.min() < 0 or (self.n_units is not None and u.max() >= self.n_units)
            ):
                raise ConfigError(f"KeepSet.units out of range [0, {self.n_units}): {u.tolist()}")
            self.units = torch.unique(u)  # sorted, no repeats
        if self.zeroed is not None:
            z = torch.unique(torch.as_tensor(self.zeroed, dtype=torch.long).flatten())
            if self.units is None or bool((~torch.isin(z, self.units)).any()):
                raise ConfigError(
                    f"KeepSet.zeroed must be a subset of the kept units, got {z.tolist()}"
                )
            self.zeroed = z if z.numel() else None

    def check_count(self, n: int, who: str, where: str, unit: str = "unit") -> None:
        """Raise a :class:`ConfigError` naming ``where`` (e.g. ``"layer 'fc1'"``) when this
        keep-set's ``n_units`` is not ``n`` or it keeps a ``unit`` index ``>= n``.

        >>> KeepSet(units=torch.tensor([0, 2]), n_units=3).check_count(3, "extract", "layer 'a'")
        """
        if self.n_units is not None and self.n_units != n:
            raise ConfigError(f"{who}: {where} has {n} {unit}s, its keep-set says {self.n_units}")
        if self.units is not None and self.units.numel() and int(self.units.max()) >= n:
            raise ConfigError(
                f"{who}: {where} has {n} {unit}s, its keep-set keeps {unit} {int(self.units.max())}"
            )

    @property
    def n_kept(self) -> int:
        """Units kept (structured) or weights kept (unstructured); for a whole block
        (``identity`` and ``n_units`` only) 0 if it became its shortcut, else ``n_units``."""
        if self.units is not None:
            return int(self.units.numel())
        if self.weight_mask is not None:
            return int(self.weight_mask.sum())
        if self.identity:
            return 0
        if self.n_units is not None:
            return self.n_units
        raise ConfigError("KeepSet has neither units nor weight_mask")

    @property
    def fraction_kept(self) -> float:
        if self.units is None and self.weight_mask is None and (self.identity or self.n_units):
            return self.n_kept / (self.n_units or 1)
        if self.units is not None:
            if self.n_units is None:
                raise ConfigError("KeepSet.n_units is needed for a fraction of units")
            return self.n_kept / self.n_units
        if self.weight_mask is not None:
            return self.n_kept / self.weight_mask.numel()
        raise ConfigError("KeepSet has neither units nor weight_mask")
