"""Head surgery: removing the pruned heads of attention layers (``extract``'s part for them).

A keep-set of an ``nn.MultiheadAttention`` layer keeps *heads* (its ``units`` are head
indices, ``n_units`` its number of heads; :mod:`bayesprune.heads`). That is not channel
surgery: the layer's inputs and outputs keep their width, so torch-pruning's dependency
graph is not involved. Instead

1. the collapsed model (:func:`~bayesprune.pruning.masked_copy`) zeroes the
   out-projection columns of every dropped head (and of kept heads marked ``zeroed``):
   those heads then contribute exactly 0, whatever they attend to;
2. the extracted network (:func:`~bayesprune.extract`) has the layer replaced by a
   :class:`~bayesprune.pruning.pruned_attention.PrunedMultiheadAttention` holding the kept
   heads only; dropped heads are gone, so the two compute the same to float tolerance.
   A layer that keeps every head stays an ``nn.MultiheadAttention``.

>>> import torch, torch.nn as nn
>>> from bayesprune.pruning import KeepSet
>>> net = nn.Sequential(nn.MultiheadAttention(8, 4))
>>> keep = {"0": KeepSet(units=torch.tensor([1, 2]), n_units=4)}
>>> rest = zero_heads(net, keep)
>>> rest, int((net[0].out_proj.weight.abs().sum(0) > 0).sum())  # 2 heads of 2 features
({}, 4)
>>> replace_heads(net, head_keepsets(net, keep))
>>> type(net[0]).__name__, net[0].heads.tolist()
('PrunedMultiheadAttention', [1, 2])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from bayesprune.errors import ConfigError
from bayesprune.heads import check_head_layer, head_dim, is_head_layer, n_heads
from bayesprune.pruning.keepset import KeepSet
from bayesprune.pruning.pruned_attention import PrunedMultiheadAttention

__all__ = ["head_keepsets", "replace_heads", "zero_heads"]


def head_keepsets(module: nn.Module, keep: Mapping[str, KeepSet]) -> dict[str, KeepSet]:
    """The keep-sets of ``keep`` that keep heads: those naming an ``nn.MultiheadAttention``
    of ``module`` with ``units`` set (names ``module`` no longer has are left out, e.g.
    inside a residual branch replaced by its shortcut)."""
    names = dict(module.named_modules())
    return {
        n: k
        for n, k in keep.items()
        if n in names and is_head_layer(names[n]) and k.units is not None
    }


def _check(name: str, layer: nn.Module, ks: KeepSet, who: str) -> None:
    check_head_layer(who, name, layer)
    h = n_heads(layer)
    ks.check_count(h, who, f"attention layer {name!r}", unit="head")


@torch.no_grad()
def zero_heads(
    module: nn.Module, keep: Mapping[str, KeepSet], who: str = "extract"
) -> dict[str, KeepSet]:
    """Zero, in place, the out-projection columns of every head a keep-set of ``keep``
    drops or marks ``zeroed``; return the other keep-sets (those left to channel surgery).

    :raises ConfigError: naming the layer, for a keep-set whose heads do not fit the layer.
    :raises UnsupportedError: for an attention layer whose heads cannot be separated.
    """
    heads = head_keepsets(module, keep)
    for name, ks in heads.items():
        layer = module.get_submodule(name)
        _check(name, layer, ks, who)
        off = torch.ones(n_heads(layer), dtype=torch.bool)
        off[ks.units] = False
        if ks.zeroed is not None:
            off[ks.zeroed] = True
        w = layer.out_proj.weight
        cols = off.repeat_interleave(head_dim(layer)).to(w.device)
        w.masked_fill_(cols[None, :], 0.0)
    return {n: k for n, k in keep.items() if n not in heads}


@torch.no_grad()
def replace_heads(module: nn.Module, heads: Mapping[str, KeepSet]) -> None:
    """Swap every attention layer named in ``heads`` for a
    :class:`~bayesprune.pruning.pruned_attention.PrunedMultiheadAttention` with the kept
    heads (their current values, so call it on the collapsed copy), in place; a layer
    keeping every head is left as it is. A
    ``nn.TransformerEncoder`` holding such a layer stops using nested tensors (its fused
    path needs whole attention layers)."""
    for name, ks in heads.items():
        if not name:
            raise ConfigError(
                "extract: the network itself is the attention layer; wrap it in a module "
                "(e.g. nn.Sequential) to have its heads removed"
            )
        layer = module.get_submodule(name)
        _check(name, layer, ks, "extract")
        if ks.units.numel() == n_heads(layer):
            continue  # every head kept: the layer stays as it is (its fused path too)
        new = PrunedMultiheadAttention.from_attention(layer, ks.units.tolist())
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent), child, new)
    if any(isinstance(m, PrunedMultiheadAttention) for m in module.modules()):
        for m in module.modules():
            if isinstance(m, nn.TransformerEncoder) and any(
                isinstance(sub, PrunedMultiheadAttention) for sub in m.modules()
            ):
                m.use_nested_tensor = False
