"""What removing one head of an attention layer saves: parameters and MACs.

A head owns its query, key and value rows of the in-projection (``3·d`` rows of ``E``
weights, and ``3·d`` biases) and its ``d`` columns of the out-projection (``E·d``
weights); the out-projection's bias stays. Its MACs are ``1/k`` of the layer's
(:mod:`bayesprune.metrics.attention`: projections, scores and weighted sum, at the sequence
lengths of the example input). Unlike a Linear unit, a head changes nothing outside its
layer: the layer's input and output keep their width, so its cost does not depend on which
other units are kept.

>>> import torch, torch.nn as nn
>>> mha = nn.MultiheadAttention(8, 2)  # d = 4
>>> c = head_costs(mha, macs=1680.0)
>>> c["params"].tolist(), c["flops"].tolist()  # 3*4*8 + 3*4 + 8*4; 1680 / 2
([140.0, 140.0], [840.0, 840.0])
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from bayesprune.heads import n_heads


def head_costs(layer: nn.Module, macs: float) -> dict[str, Tensor]:
    """Per head of ``layer``: ``params`` and ``flops`` (MACs per example) saved by removing
    it, given the layer's MACs per example (``count_flops``'s row for it)."""
    k = n_heads(layer)
    params = layer.in_proj_weight.numel() + layer.out_proj.weight.numel()
    if layer.in_proj_bias is not None:
        params += layer.in_proj_bias.numel()
    return {
        "params": torch.full((k,), params / k),
        "flops": torch.full((k,), float(macs) / k),
    }
