"""Remove units from a network *while it is being trained*, so later epochs get cheaper.

:func:`remove_units` cuts units (output neurons / filters) out of a live
:class:`~bayesprune.nn.BayesianNet` in place -- the module, the guide, the
optimizer and the net's site description together -- so training continues on
the smaller network as if nothing had happened: on the same input the smaller
network computes what the larger one computed with the removed units' outputs
at 0 (e.g. their Bernoulli gates closed), and every surviving parameter keeps
its value, its optimizer state and its gradient.

How it works:

1. **Plan.** torch-pruning's dependency graph (the same planning and coupling
   rules as :func:`~bayesprune.extract`) lists, for every layer losing units, the
   coupled slices: the layer's rows, the matching BatchNorm channels, the input
   columns of every consumer (through ``flatten`` too), the other layers of a
   residual sum. A unit shared by coupled layers is removed only if every coupled
   layer with sites drops it (layers not named in ``keep`` keep all their units).
2. **Surgery, with indices riding along.** Before slicing, every tensor of the
   modules involved is replaced by its own flat element indices (``arange`` in
   float32, exact up to 2**24 elements, float64 beyond); after torch-pruning has
   sliced them, the values left *are* the surviving elements' indices. So one surgery, whatever
   the layer types, tells which elements of each parameter survive; the original
   values are then gathered with those indices (and the result checked to be a
   product of per-dimension selections, i.e. pure slicing).
3. **Everything else follows the same indices.** Guide parameters of a site
   that replaces a module parameter (MAP values, mean-field ``loc``/``rho``) are
   gathered like that parameter; sites shaped like the layer's weight (per-weight
   HALO scales) like the weight; per-unit sites (gate probabilities θ, per-unit
   scales) by the layer's surviving units. The net's sites are rebuilt from the
   new shapes by the prior (``prior.layer_sites``), with per-unit facts -- the gate
   prices ``meta["gamma"]`` -- sliced from the old sites, not recomputed.
4. **Optimizer.** Sliced parameters become new ``nn.Parameter`` objects; the
   optimizer's ``param_groups`` are pointed at them in the same positions and
   every per-parameter state tensor shaped like the parameter (Adam's
   ``exp_avg``/``exp_avg_sq``, SGD's ``momentum_buffer``, ...) is gathered with the
   same indices, so the next step equals the step the unpruned model would take,
   restricted to the survivors. Scalars (Adam's ``step``) are kept.

The net remembers what was removed (:func:`removed_units`: for each layer that
lost units, the *original* indices of its current units), so repeated removals
compose and a checkpoint can replay them on a freshly built net
(:func:`to_current`).

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import UnitGates
>>> from bayesprune.guides import MAP
>>> mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
>>> net = sparsify(mlp, UnitGates(), example_input=torch.zeros(1, 4))
>>> guide = MAP(net)
>>> kept = remove_units(net, guide, {"0": torch.tensor([0, 2, 5])})
>>> kept["0"].tolist(), net.module[2].in_features, guide.gate_probs["0/gate"].shape
([0, 2, 5], 3, torch.Size([3]))
>>> kept = remove_units(net, guide, {"0": torch.tensor([1, 2])})  # indices of the current net
>>> kept["0"].tolist()  # original indices
[2, 5]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.guides.base import Guide, check_pair, key
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.unit_origin import RECORD, UnitOrigin, original_sites, removed_units, unit_origin
from bayesprune.pruning.extract import _group, _plan, dependency_graph
from bayesprune.pruning.keepset import KeepSet
from bayesprune.sites import Site, join

__all__ = [
    "UnitOrigin",
    "original_sites",
    "remove_units",
    "removed_units",
    "replay_removals",
    "to_current",
    "to_original",
]

WHO = "remove_units"
_NORMS = (nn.modules.batchnorm._BatchNorm,)


# --- translating indices ------------------------------------------------------------------
def to_current(net: BayesianNet, keep: Mapping[str, Any]) -> dict[str, Tensor]:
    """Translate a keep map in *original* indexing (e.g. from :func:`removed_units` of a
    checkpointed fit) into the indexing of ``net``'s current units.

    :raises ValueError: naming the layer, for an unknown layer, an index out of the
        original range, or a unit ``net`` has already removed.
    """
    rec = unit_origin(net)
    out: dict[str, Tensor] = {}
    for name, idx in keep.items():
        n_now = _units_of(net, name)
        n_orig = rec.n_units.get(name, n_now) if rec is not None else n_now
        units = _as_index(name, idx, n_orig)
        current = (
            rec.units.get(name) if rec is not None and name in rec.units else torch.arange(n_now)
        )
        pos = torch.searchsorted(current, units)
        found = (pos < current.numel()) & (current[pos.clamp_max(current.numel() - 1)] == units)
        if not bool(found.all()):
            gone = units[~found].tolist()
            raise ConfigError(
                f"{WHO}: layer {name!r}: units {gone} (original indexing) were already removed "
                "from this network"
            )
        out[name] = pos
    return out


def to_original(net: BayesianNet, keep: Mapping[str, Any]) -> dict[str, Tensor]:
    """Translate a keep map in the indexing of ``net``'s *current* units (e.g. the units of
    a :func:`~bayesprune.collapse` keep-set after ``fit(remove_dead=True)``) into the
    indexing of the network as built -- the inverse of :func:`to_current`. Layers that never
    lost units are unchanged; indices come back sorted, without repeats.

    :raises ValueError: naming the layer, for an unknown layer or an index out of the
        current range.
    :raises TypeError: for non-integer indices.

    >>> import torch, torch.nn as nn
    >>> from bayesprune import sparsify
    >>> from bayesprune.priors import UnitGates
    >>> from bayesprune.guides import MAP
    >>> mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> net = sparsify(mlp, UnitGates(), example_input=torch.zeros(1, 4))
    >>> _ = remove_units(net, MAP(net), {"0": [1, 3, 4]})  # units 0, 2, 5 are gone
    >>> to_original(net, {"0": [0, 2]})["0"].tolist()  # current units 0 and 2
    [1, 4]
    """
    rec = unit_origin(net)
    out: dict[str, Tensor] = {}
    for name, idx in keep.items():
        units = _as_index(name, idx, _units_of(net, name))
        if rec is not None and name in rec.units:
            units = rec.units[name][units]
        out[name] = units
    return out


# --- checks -------------------------------------------------------------------------------
def _units_of(net: BayesianNet, name: str) -> int:
    if name not in net.layer_names:
        raise ConfigError(
            f"{WHO}: unknown layer {name!r}; the layers with sites are {list(net.layer_names)}"
        )
    n = _n_units(net.module.get_submodule(name))
    if n is None:
        layer = net.module.get_submodule(name)
        raise ConfigError(
            f"{WHO}: layer {name!r} ({type(layer).__name__}) has no units to remove (only "
            "Linear and Conv layers with a weight)"
        )
    return n


def _n_units(layer: nn.Module) -> int | None:
    w = getattr(layer, "weight", None)
    if not isinstance(w, Tensor) or w.dim() < 2:
        return None
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return None  # units along dim 1, in groups: not a layer priors put sites on
    return int(w.shape[0])


def _as_index(name: str, idx: Any, n: int) -> Tensor:
    t = torch.as_tensor(idx)
    if t.numel() and (t.dtype == torch.bool or t.is_floating_point() or t.is_complex()):
        raise UnsupportedError(
            f"{WHO}: keep[{name!r}] must hold integer unit indices, got {t.dtype} "
            "(for a boolean mask over units use mask.nonzero().flatten())"
        )
    t = t.detach().to("cpu", torch.long).flatten()
    if t.numel() == 0:
        raise ConfigError(f"{WHO}: keep[{name!r}] keeps none of the {n} units of layer {name!r}")
    if int(t.min()) < 0 or int(t.max()) >= n:
        raise ConfigError(
            f"{WHO}: keep[{name!r}] has units out of range [0, {n}) of layer {name!r}: "
            f"{t[(t < 0) | (t >= n)].tolist()}"
        )
    return torch.unique(t)


def _classify(net: BayesianNet, guide: Guide, name: str) -> dict[str, str]:
    """How each site of layer ``name`` follows a removal: ``"param"`` (like the module
    parameter it replaces), ``"weight"`` (shaped like the weight), ``"unit"`` (one entry
    per unit) or ``"fixed"`` (scalar); checked before anything is changed."""
    layer = net.module.get_submodule(name)
    wshape = tuple(layer.weight.shape)
    n = wshape[0]
    kinds: dict[str, str] = {}
    for s in net.layer_sites[name]:
        if s.replaces is not None:
            kinds[s.name] = "param"
        elif s.shape == wshape:
            kinds[s.name] = "weight"
        elif s.shape == (n,):
            kinds[s.name] = "unit"
        elif math.prod(s.shape) <= 1:
            kinds[s.name] = "fixed"
        else:
            raise ConfigError(
                f"{WHO}: cannot tell how site {s.name!r} of shape {s.shape} follows a removal "
                f"of units of layer {name!r} (weight {wshape}): a site must replace a module "
                "parameter, or be shaped like the weight or like the units"
            )
        for pd in _param_dicts(guide):
            p = pd.get(key(s.name))
            if p is not None and tuple(p.shape) != s.shape:
                raise ConfigError(
                    f"{WHO}: the guide's parameter for site {s.name!r} has shape "
                    f"{tuple(p.shape)}, not the site's {s.shape}; cannot slice it"
                )
    return kinds


def _param_dicts(guide: Guide) -> list[nn.ParameterDict]:
    return [m for _, m in guide.named_children() if isinstance(m, nn.ParameterDict)]


def _touched(
    net: BayesianNet, dg: tp.DependencyGraph, groups: list[tp.DependencyGroup]
) -> dict[str, nn.Module]:
    """The modules the planned groups slice; refuses removals that would change what the
    network computes beyond the removed units."""
    names = {m: n for n, m in net.module.named_modules()}
    site_layers = set(net.layer_names)
    touched: dict[str, nn.Module] = {}
    for group in groups:
        root = names.get(group.items[0].dep.target.module, "?")
        for item in group.items:
            m = item.dep.target.module
            if not isinstance(m, nn.Module):
                raise ConfigError(
                    f"{WHO}: removing units of layer {root!r} would slice a bare parameter "
                    f"({type(m).__name__}); only modules are supported"
                )
            name = names.get(m)
            out = dg.is_out_channel_pruning_fn(item.dep.handler)
            node = dg.module2node.get(m)
            if out and node is not None and not node.outputs:
                raise ConfigError(
                    f"{WHO}: units of layer {root!r} reach the network's output (through "
                    f"{name or type(m).__name__!r}); removing them would change its shape"
                )
            if name is None:
                continue  # torch-pruning's own op wrappers (reshape, add, ...): no tensors
            if out:
                owns = any(True for _ in m.parameters(recurse=False))
                if owns and name not in site_layers and not isinstance(m, _NORMS):
                    raise ConfigError(
                        f"{WHO}: removing units of layer {root!r} also removes output channels "
                        f"of {name!r} ({type(m).__name__}), which has no sites: the two are "
                        "coupled (e.g. added in a residual sum); put the prior on both"
                    )
            touched[name] = m
    return touched


# --- surgery ------------------------------------------------------------------------------
@dataclass
class _Slice:
    """Which elements of a tensor of ``old_shape`` survive: ``flat`` (new shape) holds
    their flat indices, ``axes`` the kept indices along each dimension."""

    old_shape: tuple[int, ...]
    flat: Tensor
    axes: list[Tensor]

    def take(self, t: Tensor) -> Tensor:
        return t.reshape(-1)[self.flat.to(t.device)]


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
def _surgery(
    module: nn.Module, dg: tp.DependencyGraph, plan: list, touched: dict[str, nn.Module]
) -> tuple[dict[str, _Slice], list[tuple[nn.Parameter, nn.Parameter, _Slice]]]:
    """Run the planned channel surgery with indices in place of values (see the module
    docstring). Returns the slice of every tensor that changed (by full name) and
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
    slices: dict[str, _Slice] = {}
    replaced: list[tuple[nn.Parameter, nn.Parameter, _Slice]] = []
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
            sl = _Slice(tuple(data.shape), flat, _axes(flat, tuple(data.shape), repr(full)))
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


def _slice_info(old: Site, new: Site, units: Tensor, n_old: int) -> Site:
    """``new`` with the per-unit facts of ``old`` (tuples with one entry per unit) sliced."""
    if old.shape != (n_old,):
        return new
    per_unit = {
        k: tuple(v[i] for i in units.tolist())
        for k, v in old.info
        if isinstance(v, tuple) and len(v) == n_old
    }
    if not per_unit:
        return new
    info = dict(new.info)
    info.update(per_unit)
    return dataclasses.replace(new, info=tuple(info.items()))


@torch.no_grad()
def _remap_optimizer(
    opt: torch.optim.Optimizer, replaced: list[tuple[nn.Parameter, nn.Parameter, _Slice]]
) -> None:
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


# --- the function -------------------------------------------------------------------------
def remove_units(
    net: BayesianNet,
    guide: Guide,
    keep: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    example_input: Tensor | None = None,
) -> dict[str, Tensor]:
    """Cut units out of a live network, its guide and its optimizer, in place.

    :param net: the model being trained.
    :param guide: its guide (its parameters are sliced too).
    :param keep: ``{layer name: indices of the units to KEEP}`` in the layer's *current*
        indexing (1-D integer tensors or lists), for layers of ``net.layer_names``; layers
        not named keep all their units. Coupled units (e.g. the convs feeding one residual
        sum) are removed only where every coupled layer drops them.
    :param optimizer: the ``torch.optim`` optimizer over the net's and guide's parameters
        (Adam, AdamW, SGD, ... ): its param groups are pointed at the new parameters and
        its per-parameter state is sliced alike.
    :param example_input: one input batch to trace the network (default
        ``net.example_input``).
    :returns: the cumulative keep map in the *original* indexing (as :func:`removed_units`):
        for each layer that has lost units so far, the original indices of its units.
    :raises ValueError: naming the layer, for an unknown layer, indices out of range,
        a keep-set keeping no unit, or a removal that would change more than the removed
        units (coupled to a layer without sites, reaching the network's output); nothing
        is modified then.
    :raises TypeError: for non-integer indices.

    Sliced parameters become new ``nn.Parameter`` objects (untouched ones stay the same
    objects); gradients are sliced along. The removed units are assumed to contribute
    nothing (their gates closed); the activations between a layer and its consumers must
    map 0 to 0, as for :func:`~bayesprune.extract`.
    """
    check_pair(WHO, net, guide)
    module = net.module
    wanted = {name: _as_index(name, idx, _units_of(net, name)) for name, idx in keep.items()}
    n_units = {n: _n_units(module.get_submodule(n)) for n in net.layer_names}
    if all(wanted[n].numel() == n_units[n] for n in wanted):
        return removed_units(net)
    if example_input is None:
        example_input = net.example_input
    if example_input is None:
        raise ConfigError(
            f"{WHO}: needs an example input to trace the network; pass example_input= "
            "(fit records one in net.example_input)"
        )
    dg = dependency_graph(module, example_input, WHO)
    keepsets: dict[str, KeepSet] = {}
    for n in net.layer_names:  # every unit layer takes part in the coupling rule
        if n in wanted:
            keepsets[n] = KeepSet(units=wanted[n], n_units=n_units[n])
        elif n_units[n] is not None and module.get_submodule(n) in dg.module2node:
            keepsets[n] = KeepSet(units=torch.arange(n_units[n]), n_units=n_units[n])
    plan = _plan(module, dg, keepsets, WHO)
    if not plan:
        return removed_units(net)
    touched = _touched(net, dg, [_group(dg, layer, drop) for layer, drop in plan])
    layers = [n for n in net.layer_names if n in touched]
    kinds = {n: _classify(net, guide, n) for n in layers}
    old_weights = {n: tuple(module.get_submodule(n).weight.shape) for n in layers}

    slices, replaced = _surgery(module, dg, plan, touched)

    # sites and guide parameters
    record = unit_origin(net)
    if record is None:
        record = UnitOrigin(
            sites=net.sites,
            n_units={n: k for n, k in n_units.items() if k is not None},
            units={},
        )
        net.__dict__[RECORD] = record
    pdicts = _param_dicts(guide)
    layer_sites = dict(net.layer_sites)
    for n in layers:
        wname = join(n, "weight")
        wslice = slices.get(wname)
        if wslice is None and not any(s.replaces in slices for s in net.layer_sites[n]):
            continue
        n_old = old_weights[n][0]
        units = wslice.axes[0].cpu() if wslice is not None else torch.arange(n_old)
        rebuilt = {s.name: s for s in net.prior.layer_sites(n, module.get_submodule(n))}
        new_sites: list[Site] = []
        for s in net.layer_sites[n]:
            kind = kinds[n][s.name]
            if kind == "param":
                sl = slices.get(s.replaces)
            elif kind == "weight":
                sl = wslice
            elif kind == "unit" and units.numel() < n_old:
                flat = units.to(wslice.flat.device)
                sl = _Slice(s.shape, flat, [flat])
            else:
                sl = None
            expected = tuple(sl.flat.shape) if sl is not None else s.shape
            ns = rebuilt.get(s.name)
            if ns is None or ns.role != s.role or ns.shape != expected:
                raise RuntimeError(
                    f"{WHO}: after the surgery the prior describes site {s.name!r} as "
                    f"{None if ns is None else ns.shape}, expected {expected}"
                )
            new_sites.append(_slice_info(s, ns, units, n_old))
            if sl is None:
                continue
            for pd in pdicts:
                k = key(s.name)
                old = pd.get(k)
                if old is None:
                    continue
                new = nn.Parameter(sl.take(old.detach()), requires_grad=old.requires_grad)
                if old.grad is not None:
                    new.grad = sl.take(old.grad)
                pd[k] = new
                replaced.append((old, new, sl))
        layer_sites[n] = new_sites
        if units.numel() < n_old:
            base = record.units.get(n, torch.arange(n_old))
            record.units[n] = base[units]

    net.layer_sites = layer_sites
    net.sites = tuple(s for n in net.layer_names for s in layer_sites[n])
    net.replacing = tuple(s for s in net.sites if s.replaces is not None)
    net.gates = tuple(s for s in net.sites if s.role == "gate")
    guide.sites = net.sites
    if optimizer is not None:
        _remap_optimizer(optimizer, replaced)
    return removed_units(net)


def replay_removals(
    net: BayesianNet,
    guide: Guide,
    removed: Mapping[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    example_input: Tensor | None = None,
) -> dict[str, Tensor]:
    """Cut ``net`` (e.g. freshly built from a spec) down to a recorded state, before loading
    a checkpoint or saved state dicts into it: ``removed`` is a keep map in original
    indexing (:func:`removed_units` of the fitted net, ``checkpoint["removed"]``); what
    ``net`` has already removed is taken into account. Returns :func:`removed_units`.

    :raises ValueError: naming the layer, when ``removed`` keeps units ``net`` no longer
        has, or names a layer it lacks.
    """
    keep = to_current(net, removed)
    if not keep:
        return removed_units(net)
    return remove_units(net, guide, keep, optimizer, example_input=example_input)
