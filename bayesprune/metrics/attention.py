"""Multiply-accumulates of one call of an attention layer, counted per head.

``nn.MultiheadAttention`` never calls its ``out_proj`` module (it reads the weight) and
in eval mode often runs as one fused kernel, so neither the Linear hooks nor
``FlopCounterMode`` of :func:`~bayesprune.metrics.count_flops` see its work. It is counted
here from its tensors and the shapes of the call: with ``N`` sequences of ``L`` queries and
``S`` keys, ``k`` heads of ``d`` features (``k·d = E`` unless heads were removed) and model
dimension ``E``,

- query projection ``N·L·E·k·d``, key and value projections ``2·N·S·E·k·d``,
- attention scores ``N·k·L·S·d`` and the weighted sum of values ``N·k·L·S·d``,
- out-projection ``N·L·k·d·E``;

biases, the softmax and dropout are not counted (as for the other layers). Every term is
``k`` times one head's, so removing a head saves exactly ``1/k`` of the layer's MACs. The
sparse count puts the nonzero weights of each projection in place of its dense size
(scores and weighted sum stay dense).

Modules counted: ``nn.MultiheadAttention`` with a packed in-projection and any module whose
class sets ``counts_as_attention = True`` and has the same tensors (``in_proj_weight`` of
shape ``(3·k·d, E)``, ``out_proj.weight``, ``batch_first``), e.g.
:class:`~bayesprune.pruning.pruned_attention.PrunedMultiheadAttention`. The key length is
read from the second positional argument; a call passing ``key`` by keyword is counted as
self-attention (``S = L``).

>>> import torch, torch.nn as nn
>>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
>>> x = torch.zeros(3, 5, 8)  # N = 3, L = S = 5, E = 8
>>> attention_call_macs(mha, (x, x, x), mha(x, x, x))  # 3 * (5*8*8*3 + 2*5*5*8 + 5*8*8)
(5040, 5040)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["attention_call_macs", "is_attention"]


def is_attention(mod: nn.Module) -> bool:
    """Whether :func:`attention_call_macs` counts ``mod`` (see the module docstring)."""
    if isinstance(mod, nn.MultiheadAttention):
        return bool(mod._qkv_same_embed_dim)
    return bool(getattr(type(mod), "counts_as_attention", False))


def attention_call_macs(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> tuple[int, int]:
    """(dense MACs, sparse MACs) of one call of attention layer ``mod`` over its whole
    batch, from its positional ``inputs`` and its ``output`` (``(out, weights)``)."""
    out = output[0] if isinstance(output, tuple | list) else output
    w_in = mod.in_proj_weight.detach()
    w_out = mod.out_proj.weight.detach()
    inner, e_out = w_in.shape[0] // 3, w_out.shape[0]
    if inner == 0:  # no head left: the output is the bias
        return 0, 0
    e_in = w_in.shape[1]
    rows = out.numel() // e_out  # N·L
    if out.dim() == 2:
        n = 1
    else:
        n = out.shape[0] if getattr(mod, "batch_first", False) else out.shape[1]
    key = inputs[1] if len(inputs) > 1 and isinstance(inputs[1], Tensor) else None
    key_rows = key.numel() // key.shape[-1] if key is not None else rows  # N·S
    pairs = rows * (key_rows // max(n, 1))  # N·L·S
    scores = 2 * pairs * inner
    dense = rows * e_in * inner + 2 * key_rows * e_in * inner + scores + rows * inner * e_out
    w_q, w_k, w_v = w_in.chunk(3)
    nnz = [int(torch.count_nonzero(t)) for t in (w_q, w_k, w_v, w_out)]
    sparse = rows * nnz[0] + key_rows * (nnz[1] + nnz[2]) + scores + rows * nnz[3]
    return dense, sparse
