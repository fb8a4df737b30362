"""``extract``: bake keep-sets into a plain, physically smaller ``nn.Module``.

Two steps, both on a deep copy (the user's network is never touched):

1. :func:`masked_copy` -- same shapes as the original: point estimates written
   into the layers (``KeepSet.values``), unstructured masks multiplied into the
   weights, and every parameter that produces a dropped unit zeroed (the layer's
   weight row and bias, and the matching channel of every module coupled to it,
   e.g. the BatchNorm after a conv or the other convs of a residual sum). This is
   the *collapsed model*.
2. Channel surgery with torch-pruning's dependency graph: the dropped units are
   removed from the layer and from every coupled module and consumer
   (BatchNorm, the next Conv/Linear, flatten→Linear, residual additions,
   concatenation, depthwise/grouped convs), in one pass: every coupled module is sliced
   once (:func:`bayesprune.dependency.prune_groups`).

Attention layers whose keep-sets keep heads are not channel surgery: the collapsed model
zeroes the out-projection columns of the dropped heads, and the extracted network has the
layer replaced by a smaller attention module with the kept heads only
(:mod:`bayesprune.pruning.head_surgery`).

Because a dropped unit's output is exactly zero in the collapsed model, removing
it changes nothing as long as the nonlinearities between a layer and its
consumers map 0 to 0 (ReLU and friends, pooling, identity) -- the extracted
network equals the collapsed one to float tolerance (tested).

>>> import torch, torch.nn as nn
>>> from bayesprune.pruning import KeepSet
>>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
>>> small = extract(net, {"0": KeepSet(units=torch.tensor([0, 3]), n_units=6)},
...                 example_input=torch.zeros(1, 4))
>>> small[0].out_features, small[2].in_features
(2, 2)
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch_pruning as tp
from torch import Tensor

from bayesprune.blocks import block_spec, to_shortcut
from bayesprune.dependency import (
    dependency_graph,
    eval_outputs,
    frozen,
    out_group,
    prune_groups,
    untraced_ops,
    zero_out_channels,
)
from bayesprune.errors import ConfigError, ExportMismatchError, UnsupportedError
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.pruning.head_surgery import head_keepsets, replace_heads, zero_heads
from bayesprune.pruning.keepset import KeepSet

_ZEROABLE = (nn.Linear, nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm)


def _plain(net: BayesianNet | nn.Module) -> nn.Module:
    return net.module if isinstance(net, BayesianNet) else net


def _check(module: nn.Module, keep: dict[str, KeepSet]) -> None:
    names = dict(module.named_modules())
    for name, ks in keep.items():
        if name not in names:
            raise ConfigError(
                f"extract: keep-set names layer {name!r}, which the network does not have"
            )
        if not isinstance(ks, KeepSet):
            raise UnsupportedError(
                f"extract: keep[{name!r}] must be a KeepSet, got {type(ks).__name__}"
            )
        layer = names[name]
        w = getattr(layer, "weight", None)
        if ks.weight_mask is not None and (
            w is None or tuple(ks.weight_mask.shape) != tuple(w.shape)
        ):
            raise ConfigError(
                f"extract: layer {name!r}: weight_mask shape {tuple(ks.weight_mask.shape)} does not "
                f"match the weight {None if w is None else tuple(w.shape)}"
            )
        for pname, v in ks.values.items():
            p = getattr(layer, pname, None)
            if not isinstance(p, Tensor) or tuple(p.shape) != tuple(v.shape):
                raise ConfigError(
                    f"extract: layer {name!r}: value for {pname!r} has shape {tuple(v.shape)}, "
                    f"the layer's is {None if p is None else tuple(p.shape)}"
                )


def _dropped(ks: KeepSet, n_out: int) -> list[int]:
    kept = set(ks.units.tolist()) if ks.units is not None else set(range(n_out))
    return [i for i in range(n_out) if i not in kept]


def _plan(
    module: nn.Module, dg: tp.DependencyGraph, keep: dict[str, KeepSet], who: str = "extract"
) -> list[tuple[nn.Module, list[int]]]:
    """``(layer, channels to drop)`` per coupled component, in the layer's own indexing.

    Layers whose output channels are coupled (e.g. convs feeding one residual sum) must
    drop the same channels: a channel is dropped only if *every* coupled layer that has
    a keep-set drops it, and each component is listed once.
    """
    with frozen(dg):  # index mappings computed once, each group once
        return _plan_frozen(module, dg, keep, who)


def _plan_frozen(
    module: nn.Module, dg: tp.DependencyGraph, keep: dict[str, KeepSet], who: str
) -> list[tuple[nn.Module, list[int]]]:
    structured = {n: k for n, k in keep.items() if k.units is not None}
    name_of = {m: n for n, m in module.named_modules()}
    n_outs: dict[str, int] = {}
    for name, ks in structured.items():  # check every keep-set, coupled ones included
        layer = module.get_submodule(name)
        if layer not in dg.module2node:
            raise ConfigError(
                f"{who}: cannot remove units of layer {name!r} ({type(layer).__name__}): it "
                "is not a layer of the network's traced forward pass on the example input"
            )
        pruner = dg.get_pruner_of_module(layer)
        n_out = dg.get_out_channels(layer) if pruner is not None else None
        if n_out is None:
            raise UnsupportedError(
                f"{who}: cannot remove units of layer {name!r} ({type(layer).__name__})"
            )
        ks.check_count(n_out, who, f"layer {name!r}")
        n_outs[name] = n_out
    plan: list[tuple[nn.Module, list[int]]] = []
    done: set[str] = set()
    for name, ks in structured.items():
        if name in done:
            continue
        layer = module.get_submodule(name)
        n_out = n_outs[name]
        drop = set(_dropped(ks, n_out))
        pruner = dg.get_pruner_of_module(layer)
        full = dg.get_pruning_group(layer, pruner.prune_out_channels, idxs=list(range(n_out)))
        for item in full.items:
            other = name_of.get(item.dep.target.module)
            if other is None or other == name or other not in structured:
                continue
            if not dg.is_out_channel_pruning_fn(item.dep.handler):
                continue
            kept_other = set(structured[other].units.tolist())
            for idx, root in zip(item.idxs, item.root_idxs, strict=True):
                if idx in kept_other:
                    drop.discard(root)
            done.add(other)
        if len(drop) >= n_out:
            raise ConfigError(f"{who}: the keep-set of layer {name!r} drops all {n_out} units")
        if drop:
            group = _group(dg, layer, sorted(drop))
            untraced = untraced_ops(dg, group)
            if untraced:
                raise UnsupportedError(
                    f"{who}: cannot remove units of layer {name!r}: its channels pass through "
                    f"{untraced[0]}, an op whose channel mapping torch-pruning cannot compute"
                )
            _check_grouped(dg, group, name, name_of, who)
            plan.append((layer, sorted(drop)))
    return plan


def _check_grouped(
    dg: tp.DependencyGraph,
    group: tp.DependencyGroup,
    root: str,
    name_of: dict[nn.Module, str],
    who: str = "extract",
) -> None:
    """Refuse channel surgery that torch-pruning would get wrong on grouped convolutions.

    torch-pruning slices depthwise convs (``groups == in == out``) correctly, but for
    other grouped convs it only handles removing the *same* in-group positions from
    every group (inputs) and the same number of units from every group (outputs); any
    other removal silently breaks the group structure.
    """
    for item in group.items:
        m = item.dep.target.module
        if not isinstance(m, nn.modules.conv._ConvNd) or m.groups == 1:
            continue
        if m.groups == m.in_channels == m.out_channels:
            continue  # depthwise: in and out channels are removed together
        out = dg.is_out_channel_pruning_fn(item.dep.handler)
        idxs = sorted(int(i) for i in item.idxs)
        g = m.groups
        per = (m.out_channels if out else m.in_channels) // g
        by_group = [{i % per for i in idxs if i // per == j} for j in range(g)]
        ok = not m.transposed and (
            len({len(s) for s in by_group}) == 1 if out else all(s == by_group[0] for s in by_group)
        )
        if not ok:
            side = "output units" if out else "input channels"
            raise ConfigError(
                f"{who}: removing units of layer {root!r} removes {side} {idxs} of the "
                f"grouped convolution {name_of.get(m, type(m).__name__)!r} (groups={g}), which "
                "cannot be sliced into equal groups; a grouped conv (other than depthwise) "
                "needs the same number of units removed from every group (outputs) and the "
                "same positions removed from every group (inputs)"
            )


def _group(dg: tp.DependencyGraph, layer: nn.Module, drop: list[int]) -> tp.DependencyGroup:
    return out_group(dg, layer, drop)


def _zero_out_channels(dg: tp.DependencyGraph, group: tp.DependencyGroup) -> None:
    zero_out_channels(dg, group)


def _zero_kept_units(module: nn.Module, dg: tp.DependencyGraph, keep: dict[str, KeepSet]) -> None:
    """Zero the outputs of kept units marked ``zeroed`` (and of what is coupled to them)."""
    for name, ks in keep.items():
        if ks.zeroed is not None:
            layer = module.get_submodule(name)
            _zero_out_channels(dg, _group(dg, layer, ks.zeroed.tolist()))


@torch.no_grad()
def _apply_values_and_masks(module: nn.Module, keep: dict[str, KeepSet]) -> None:
    for name, ks in keep.items():
        layer = module.get_submodule(name)
        for pname, v in ks.values.items():
            getattr(layer, pname).copy_(v)
        if ks.weight_mask is not None:
            layer.weight.mul_(ks.weight_mask.to(layer.weight.device, layer.weight.dtype))


@torch.no_grad()
def _identity_blocks(
    module: nn.Module, keep: dict[str, KeepSet], *, replace: bool = False, check_on: Any = None
) -> dict[str, KeepSet]:
    """Residual blocks whose keep-set says ``identity`` (block gates at 0): the branch's
    last module is zeroed so the branch adds exactly 0 (the collapsed model), and with
    ``replace`` the block is then swapped for its shortcut (:func:`bayesprune.blocks.to_shortcut`),
    checked on ``check_on`` if given. Returns the keep-sets still to apply: those of
    layers inside a removed branch are dropped (the shortcut keeps its names)."""
    removed: dict[str, str] = {}  # block -> prefix of its shortcut
    for name in sorted((n for n, k in keep.items() if k.identity), key=len):  # outer first
        if any(_in_branch(name, b, short) for b, short in removed.items()):
            continue
        block = module.get_submodule(name)
        spec = block_spec(block)
        if spec is None or not name:
            raise ConfigError(
                f"extract: keep[{name!r}] says identity, but {name!r} ({type(block).__name__}) is "
                "not a residual block inside the network (see bayesprune.blocks)"
            )
        end = block.get_submodule(spec.branch_end)
        if not isinstance(end, _ZEROABLE) or getattr(end, "weight", None) is None:
            raise UnsupportedError(
                f"extract: cannot zero the branch end {name}.{spec.branch_end} "
                f"({type(end).__name__}) of block {name!r}; supported: Linear, Conv, affine BatchNorm"
            )
        for t in (end.weight, end.bias):  # the branch's output is then exactly 0
            if t is not None:
                t.zero_()
        removed[name] = f"{name}.{spec.shortcut}"
    if not removed:
        return keep
    if replace:
        before = eval_outputs(module, check_on) if check_on is not None else None
        for name in removed:
            parent, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent), child, to_shortcut(module.get_submodule(name)))
        if before is not None:
            for a, b in zip(before, eval_outputs(module, check_on), strict=True):
                diff = float((a - b).abs().max())
                if not diff <= 1e-4 * (1.0 + float(a.abs().max())):
                    raise ConfigError(
                        f"extract: replacing blocks {list(removed)} by their shortcuts changes the "
                        f"output by {diff:.3g}: a block's output with its branch at 0 is not "
                        "relu(shortcut(x)); give its class an as_shortcut() method"
                    )
    return {
        n: k
        for n, k in keep.items()
        if n not in removed and not any(_in_branch(n, b, s) for b, s in removed.items())
    }


def _in_branch(name: str, block: str, shortcut: str) -> bool:
    return name.startswith(block + ".") and not (name + ".").startswith(shortcut + ".")


def _collapsed(
    net: BayesianNet | nn.Module,
    keep: dict[str, KeepSet],
    example_input: Tensor | None,
    *,
    replace_blocks: bool = False,
    check_blocks: bool = False,
) -> tuple[nn.Module, tp.DependencyGraph | None, list[tuple[nn.Module, list[int]]], list]:
    """The steps :func:`masked_copy` and :func:`extract` share: a deep copy of the network
    with values written, masks multiplied in, identity blocks zeroed (with
    ``replace_blocks`` swapped for their shortcuts, checked on the example input with
    ``check_blocks``) and every dropped unit's output zeroed. Returns the copy, its
    dependency graph, the plan and its groups (``None``, ``[]`` and ``[]`` when no keep-set
    removes units)."""
    if example_input is None and isinstance(net, BayesianNet):
        example_input = net.example_input
    module = copy.deepcopy(_plain(net))
    _check(module, keep)
    _apply_values_and_masks(module, keep)
    check_on = example_input if check_blocks else None
    keep = _identity_blocks(module, keep, replace=replace_blocks, check_on=check_on)
    keep = zero_heads(module, keep)  # heads: out-projection columns, no channel surgery
    if not any(k.units is not None for k in keep.values()):
        return module, None, [], []
    dg = dependency_graph(module, example_input)
    with frozen(dg):  # zeroing prunes nothing: every group is one of the unpruned network
        _zero_kept_units(module, dg, keep)
        plan = _plan(module, dg, keep)
        groups = [_group(dg, layer, drop) for layer, drop in plan]
    for group in groups:  # out-channels of planned layers are untouched by earlier groups
        _zero_out_channels(dg, group)
    return module, dg, plan, groups


def masked_copy(
    net: BayesianNet | nn.Module,
    keep: dict[str, KeepSet],
    *,
    example_input: Tensor | None = None,
) -> nn.Module:
    """The collapsed model: a deep copy of the network, same shapes, with values written,
    masks multiplied in and every dropped unit's output zeroed. See the module docstring.

    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> masked = masked_copy(net, {"0": KeepSet(units=torch.tensor([0, 3]), n_units=6)},
    ...                      example_input=torch.zeros(1, 4))
    >>> masked[0].weight.shape, int((masked[0].weight.abs().sum(1) > 0).sum())
    (torch.Size([6, 4]), 2)
    """
    module, _, _, _ = _collapsed(net, keep, example_input)
    return module


def extract(
    net: BayesianNet | nn.Module,
    keep: dict[str, KeepSet],
    *,
    example_input: Tensor | None = None,
    check: bool = True,
) -> nn.Module:
    """A plain ``nn.Module`` with the keep-sets baked in and dropped units removed.

    :param net: a :class:`BayesianNet` (its ``.module`` is copied) or an ordinary module.
    :param keep: ``{layer name: KeepSet}``, e.g. from :func:`bayesprune.collapse`.
    :param example_input: one input batch used to trace the network for channel surgery
        (default: the one the BayesianNet recorded when it was fitted).
    :param check: after removing units, run the example input through the collapsed and
        the extracted network (eval mode) and raise if they differ.
    :raises ValueError: for a keep-set naming a missing layer or of the wrong shape, or
        dropping every unit of a layer, or a removal torch-pruning cannot do correctly
        (grouped convs), or -- with ``check`` -- when the extracted network does not
        reproduce the collapsed one (e.g. an activation with ``f(0) != 0`` after a
        pruned layer).
    :raises TypeError: when a dropped unit feeds a layer that mixes channels
        (GroupNorm, LayerNorm, attention, ...), so removing it would change the output, or
        its channels pass through an op torch-pruning cannot map or slice (the message names
        the layer and the op; :func:`bayesprune.dependency.register_pruner` teaches it a
        module type).
    """
    if example_input is None and isinstance(net, BayesianNet):
        example_input = net.example_input
    module, dg, plan, groups = _collapsed(
        net, keep, example_input, replace_blocks=True, check_blocks=check
    )
    heads = head_keepsets(module, keep)
    checked = check and example_input is not None and (plan or heads)
    before = eval_outputs(module, example_input) if checked else None
    if groups:  # each coupled module sliced once, in the unpruned network's indexing
        prune_groups(dg, groups)
    replace_heads(module, heads)  # after the surgery: the graph was traced with them
    if before is not None:
        _compare(before, eval_outputs(module, example_input))
    return module


def _compare(before: list[Tensor], after: list[Tensor]) -> None:
    for i, (a, b) in enumerate(zip(before, after, strict=False)):
        if a.shape != b.shape or not a.is_floating_point():
            continue  # units of an output layer were removed: nothing to line up
        tol = 1e-4 * (1.0 + float(a.abs().max()))
        diff = float((a - b).abs().max())
        if not diff <= tol:
            raise ExportMismatchError(
                f"extract: on the example input the extracted network's output {i} differs "
                f"from the collapsed (masked) model's by {diff:.3g} (tolerance {tol:.3g}): a "
                "dropped unit's zero output does not reach its consumers as zero -- typically an "
                "activation with f(0) != 0 (Sigmoid, Softplus, ...) or an op that mixes "
                "channels between a pruned layer and its consumers. Pass check=False to "
                "extract anyway."
            )
