"""Attention heads as the units of an attention layer.

An ``nn.MultiheadAttention`` layer with one packed in-projection (``in_proj_weight``, of
shape ``(3E, E)``: the query, key and value rows of head ``h`` are rows ``h·d:(h+1)·d`` of
each third, ``d = E / num_heads``) computes each head's output from its own rows alone and
mixes the heads only in the out-projection, whose columns ``h·d:(h+1)·d`` read head ``h``.
A head is therefore a unit in the same sense as a Linear layer's output unit: multiplying
those out-projection columns by 0 removes the head's contribution exactly, and the head
can be cut out of the layer (its q/k/v rows and biases, its out-projection columns).

Gate priors put one gate per head (:class:`~bayesprune.priors.UnitGates`), ``extract``
replaces the layer by a :class:`~bayesprune.pruning.pruned_attention.PrunedMultiheadAttention`
with the kept heads, and ``count_flops`` counts an attention layer's MACs per head
(:mod:`bayesprune.metrics.attention`).

This module sits on the ground floor: it imports nothing from the package but its errors.

>>> import torch.nn as nn
>>> mha = nn.MultiheadAttention(8, 2)
>>> is_head_layer(mha), head_dim(mha), is_head_layer(mha.out_proj)
(True, 4, False)
>>> out_projections(nn.Sequential(mha))
{'0.out_proj': '0'}
"""

from __future__ import annotations

import torch.nn as nn

from bayesprune.errors import UnsupportedError

__all__ = [
    "OUT_PROJ",
    "check_head_layer",
    "head_dim",
    "is_head_layer",
    "n_heads",
    "out_projections",
]

#: the parameter a head gate multiplies, relative to the attention layer
OUT_PROJ = "out_proj.weight"


def is_head_layer(layer: nn.Module) -> bool:
    """Whether ``layer``'s units are attention heads (an ``nn.MultiheadAttention``)."""
    return isinstance(layer, nn.MultiheadAttention)


def n_heads(layer: nn.Module) -> int:
    """The heads of an attention layer (its units)."""
    return int(layer.num_heads)


def head_dim(layer: nn.Module) -> int:
    """Features per head, ``embed_dim // num_heads``."""
    return int(layer.head_dim)


def check_head_layer(owner: str, name: str, layer: nn.Module) -> None:
    """Refuse, naming the layer, an ``nn.MultiheadAttention`` whose heads cannot be gated and
    removed exactly: separate q/k/v projection weights (``kdim``/``vdim`` differ from
    ``embed_dim``), ``add_bias_kv`` or ``add_zero_attn`` (both add a key every head attends
    to, kept outside the heads' rows).

    >>> check_head_layer("UnitGates", "attn", nn.MultiheadAttention(8, 2, kdim=4))
    Traceback (most recent call last):
    ...
    bayesprune.errors.UnsupportedError: UnitGates: attention layer 'attn' has separate ...
    """
    why = []
    if not layer._qkv_same_embed_dim:
        why.append(
            "separate q/k/v projection weights (kdim/vdim differ from embed_dim); only the "
            "packed in_proj_weight is supported"
        )
    if layer.bias_k is not None:
        why.append("add_bias_kv=True")
    if layer.add_zero_attn:
        why.append("add_zero_attn=True")
    if why:
        raise UnsupportedError(
            f"{owner}: attention layer {name!r} has {'; '.join(why)}: its heads cannot be "
            "gated and removed exactly. Build it with kdim=vdim=embed_dim, add_bias_kv=False "
            "and add_zero_attn=False, or leave it out of layers="
        )


def out_projections(module: nn.Module) -> dict[str, str]:
    """``{name of the out-projection Linear: name of its attention layer}`` for every
    ``nn.MultiheadAttention`` in ``module``. Those Linears are read as tensors by their
    layer (``F.multi_head_attention_forward``), never called: a unit gate or a forward hook
    on them would never run."""
    out: dict[str, str] = {}
    for name, m in module.named_modules():
        if is_head_layer(m):
            out[f"{name}.out_proj" if name else "out_proj"] = name
    return out
