"""The channel surgery of a live unit removal, with indices riding along.

Before slicing, every tensor of the modules involved is replaced by its own flat element
indices (``arange`` in float32, exact up to 2**24 elements, float64 beyond); after
torch-pruning has sliced them, the values left *are* the surviving elements' indices. So
one surgery, whatever the layer types, tells which elements of each parameter survive; the
original values are then gathered with those indices, and the result is checked to be a
product of per-dimension selections, i.e. pure slicing.

Why not read the surviving indices from the dependency group, as
:func:`~bayesprune.extract` reads the channels to drop? The group says which *channels*
go, but which *elements* of each tensor that means (weight rows or columns, transposed and
grouped convs, flatten expanding a channel into many columns) is torch-pruning's per-layer
knowledge; riding indices through its own surgery reuses that knowledge instead of
rewriting it, and checks it.

>>> t = torch.arange(12.0).reshape(3, 4)
>>> flat = torch.tensor([[1, 3], [9, 11]])  # rows 0 and 2, columns 1 and 3
>>> Slice((3, 4), flat, [torch.tensor([0, 2]), torch.tensor([1, 3])]).take(t).tolist()
[[1.0, 3.0], [9.0, 11.0]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from bayesprune.errors import ConfigError
from bayesprune.pruning.extract import _group
from bayesprune.pruning.live_plan import Plan
from bayesprune.pruning.unit_indices import WHO
from bayesprune.sites import join


@dataclass
class Slice:
    """Which elements of a tensor of ``old_shape`` survive: ``flat`` (new shape) holds
    their flat indices, ``axes`` the kept indices along each dimension."""

    old_shape: tuple[int, ...]
    flat: Tensor
    axes: list[Tensor]

    def take(self, t: Tensor) -> Tensor:
        return t.reshape(-1)[self.flat.to(t.device)]


#: ``(old parameter, its sliced replacement, the slice)`` for every parameter replaced
Replaced = list[tuple[nn.Parameter, nn.Parameter, Slice]]


def _axes(flat: Tensor, old_shape: tuple[int, ...], where: str) -> list[Tensor]:
    strides = [math.prod(old_shape[d + 1 :]) for d in range(len(old_shape))]
    axes: list[Tensor] = []
    recon = torch.zeros_like(flat)
    for d, (n, st) in enumerate(zip(old_shape, strides, strict=True)):
        line = flat.movedim(d, 0).reshape(flat.shape[d], -1)[:, 0]
        a = torch.div(line, st, rounding_mode="floor") % n
        axes.append(a)
        shape = [1] * flat.dim()
        shape[d] = -1
        recon = recon + a.reshape(shape) * st
    if not torch.equal(recon, flat):
        raise RuntimeError(f"{WHO}: torch-pruning did more than slice {where}")
    return axes


@torch.no_grad()
def surgery(
    module: nn.Module, dg: tp.DependencyGraph, plan: Plan, touched: dict[str, nn.Module]
) -> tuple[dict[str, Slice], Replaced]:
    """Run the planned channel surgery on ``touched`` with indices in place of values (see
    the module docstring). Returns the slice of every tensor that changed (by full name) and
    ``(old, new, slice)`` for every parameter replaced."""
    found = [
        (mname, m, kind, store, attr, t)
        for mname, m in touched.items()
        for kind, store in (("param", m._parameters), ("buffer", m._buffers))
        for attr, t in store.items()
        if t is not None and t.is_floating_point() and t.dim() > 0
    ]
    ids = [id(t) for *_, t in found]
    if len(set(ids)) != len(ids):
        tied = sorted({join(n, a) for n, _, _, _, a, t in found if ids.count(id(t)) > 1})
        raise ConfigError(f"{WHO}: cannot slice tied (shared) tensors {tied}")
    saved: list[tuple[nn.Module, str, str, Tensor, Tensor, Tensor | None]] = []
    for mname, m, kind, store, attr, t in found:
        data = t.data
        # float32 holds integers exactly up to 2**24, float64 up to 2**53
        itype = torch.float32 if t.numel() <= 2**24 else torch.float64
        index = torch.arange(t.numel(), dtype=itype, device=t.device).reshape(t.shape)
        if kind == "param":
            grad, t.grad = t.grad, None  # sliced below, in its own dtype
            t.data = index
        else:
            grad = None
            store[attr] = index
        saved.append((m, mname, attr, t, data, grad))
    slices: dict[str, Slice] = {}
    replaced: Replaced = []
    done: set[int] = set()
    try:
        for layer, drop in plan:  # lazily, as extract does: each group sees earlier cuts
            _group(dg, layer, drop).prune(record_history=False)
        for i, (m, mname, attr, old, data, grad) in enumerate(saved):
            is_param = attr in m._parameters
            now = m._parameters[attr] if is_param else m._buffers[attr]
            full = join(mname, attr)
            if is_param and now is old and tuple(now.shape) == tuple(data.shape):
                old.data, old.grad = data, grad  # untouched
                done.add(i)
                continue
            flat = now.detach().to(torch.long)
            exact = torch.equal(flat.to(now.dtype), now.detach())
            if not exact or (flat.numel() and (flat.min() < 0 or flat.max() >= data.numel())):
                raise RuntimeError(f"{WHO}: torch-pruning changed the values of {full!r}")
            sl = Slice(tuple(data.shape), flat, _axes(flat, tuple(data.shape), repr(full)))
            if sl.flat.shape == data.shape and torch.equal(
                sl.flat.reshape(-1), torch.arange(data.numel(), device=flat.device)
            ):
                if is_param:  # a new object with all elements: keep the old one
                    m._parameters[attr] = old
                    old.data, old.grad = data, grad
                else:
                    m._buffers[attr] = data
                done.add(i)
                continue
            slices[full] = sl
            if is_param:
                new = nn.Parameter(sl.take(data), requires_grad=old.requires_grad)
                if grad is not None:
                    new.grad = sl.take(grad)
                m._parameters[attr] = new
                replaced.append((old, new, sl))
            else:
                m._buffers[attr] = sl.take(data)
            done.add(i)
    except Exception as e:
        for i, (m, _, attr, old, data, grad) in enumerate(saved):
            if i in done:
                continue
            if attr in m._parameters and m._parameters[attr] is old:
                old.data, old.grad = data, grad
            elif (buf := m._buffers.get(attr)) is not None and buf.shape == data.shape:
                m._buffers[attr] = data
        raise RuntimeError(
            f"{WHO}: channel surgery failed ({e}); the network may be left inconsistent"
        ) from e
    return slices, replaced
