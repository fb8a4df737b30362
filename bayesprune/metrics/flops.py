"""Multiply-accumulates of one forward pass, dense and counting only nonzero weights.

:func:`count_flops` runs the module once on an example input with forward
hooks and counts, per module *call* (a module called twice counts twice):

- ``Conv1d/2d/3d`` (any ``groups``): ``weight.numel()`` MACs per output
  position, i.e. ``out_channels * in_channels / groups * prod(kernel_size)``;
  sparse: ``count_nonzero(weight)`` per output position. That is exact for
  unstructured zeros, since every weight element is used once at every output
  position.
- ``ConvTranspose1d/2d/3d``: every input element is scattered through
  ``out_channels / groups * prod(kernel_size)`` weights, so ``weight.numel()``
  MACs (sparse: nonzero weights) per *input* position.
- ``Linear``: ``in_features * out_features`` per output row (sparse: nonzero
  weights per row); extra leading dimensions count as extra rows.
- ``BatchNorm``: one multiply-add per element (eval-mode batch norm is
  ``y = a * x + b`` per channel once the running statistics are folded in);
  sparse equals dense.
- ``MultiheadAttention`` (packed in-projection) and pruned attention layers
  (kind ``"attention"``): projections, attention scores and the weighted sum,
  counted per head from the call's shapes (:mod:`bayesprune.metrics.attention`);
  its ``out_proj`` Linear is read, not called, so it is not counted twice.

Bias additions, activations, pooling, residual additions and anything done by
functional calls (``torch.add``, ``F.relu``) are *not* counted; the leaf module
types that ran without being counted are listed under ``uncounted``.

Matrix products and convolutions done by functional calls outside those modules
(``x @ w``, ``F.linear``, attention scores) are counted apart, by
:class:`torch.utils.flop_counter.FlopCounterMode` during the same forward, as
``functional_macs`` (its FLOPs halved: it counts 2 per MAC); they are not part of
``macs``. The module hooks stay the source of ``macs`` because FlopCounterMode has no
BatchNorm (which we count), knows nothing of the weights (no sparse count), and misses
fused kernels (e.g. the inference fast path of ``nn.TransformerEncoderLayer``); on
Conv/Linear layers the two agree exactly (``tests/metrics/test_flops.py``).

Differences from ``torch_pruning.utils.count_ops_and_params`` (which mixes
MACs and single operations): it adds one op per output element for a bias of
a Conv/Linear, counts BatchNorm as ``2 * numel`` ops (our ``flops`` for a
BatchNorm row; our ``macs`` is half of it), counts ReLU and pooling, adds a
Linear bias once per call rather than once per example, and uses output
positions for transposed convolutions. On the weights of Conv/Linear layers
without bias the two agree exactly.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
>>> r = count_flops(net, torch.zeros(8, 1, 6, 6))
>>> r["macs"], r["flops"], r["sparse_macs"] == r["macs"]
(448, 896, True)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bayesprune.errors import ConfigError, UnsupportedError
from bayesprune.metrics.attention import attention_call_macs, is_attention

__all__ = ["count_flops"]

logger = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_COUNTED = _CONV + _CONV_T + (nn.Linear,) + _BN


def count_flops(
    module: nn.Module, example_input: Any, *, batch_size: int | None = None
) -> dict[str, Any]:
    """Count the multiply-accumulates (MACs) of one forward pass, per example.

    The module is run once in eval mode under ``torch.no_grad()``; its
    training flags are restored and all hooks removed afterwards, even if the
    forward raises. See the module docstring for what is counted.

    :param module: any ``nn.Module``.
    :param example_input: a tensor, or a tuple/list of positional arguments.
    :param batch_size: examples in ``example_input``; default: size of dim 0 of
        its first tensor. Every count is divided by it.
    :returns: a dict with totals ``macs`` (dense multiply-accumulates per
        example), ``flops`` (``2 * macs``: one multiply plus one add per MAC),
        ``sparse_macs`` (MACs whose weight is nonzero), ``macs_by_kind``
        (``conv``, ``conv_transpose``, ``linear``, ``batchnorm``, ``attention``),
        ``functional_macs`` (matrix products and convolutions outside the counted
        modules, not in ``macs``; see the module docstring),
        ``batch_size``, ``uncounted`` (types of leaf modules that ran but are
        not counted) and ``layers``: one row per counted module that ran, in
        ``named_modules`` order, with ``name``, ``type``, ``kind``, ``calls``,
        ``macs``, ``flops``, ``sparse_macs``. Counts are ``int`` unless the
        total is not divisible by ``batch_size``.

    >>> import torch
    >>> from torch import nn
    >>> conv = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)  # depthwise
    >>> count_flops(conv, torch.zeros(2, 4, 5, 5))["macs"]  # 4 * 9 weights * 25 positions
    900
    """
    if not isinstance(module, nn.Module):
        raise UnsupportedError(f"count_flops expects an nn.Module, got {type(module).__name__}")
    args = _as_args(example_input)
    if batch_size is None:
        batch_size = _infer_batch_size(args)
    if batch_size < 1:
        raise ConfigError(f"count_flops: batch_size must be >= 1, got {batch_size}")

    names = {m: name for name, m in module.named_modules()}
    totals: dict[nn.Module, list[int]] = {}  # module -> [calls, macs, sparse_macs], whole batch
    uncounted: set[str] = set()
    counter = FlopCounterMode(display=False)
    inside = {"depth": 0, "start": 0, "flops": 0}  # counter's FLOPs within counted modules

    def enter(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
        if _counted(mod):
            if inside["depth"] == 0:
                inside["start"] = counter.get_total_flops()
            inside["depth"] += 1

    def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if _counted(mod):
            inside["depth"] -= 1
            if inside["depth"] == 0:
                inside["flops"] += counter.get_total_flops() - inside["start"]
        counted = _count_call(mod, inputs, output)
        if counted is None:
            if not any(True for _ in mod.children()):
                uncounted.add(type(mod).__name__)
            return
        acc = totals.setdefault(mod, [0, 0, 0])
        acc[0] += 1
        acc[1] += counted[0]
        acc[2] += counted[1]

    handles = []
    try:
        for m in names:
            handles.append(m.register_forward_pre_hook(enter))
            handles.append(m.register_forward_hook(hook))
        with _eval_mode(module), torch.no_grad(), counter:
            module(*args)
    finally:
        for h in handles:
            h.remove()

    rows = []
    by_kind: dict[str, int | float] = {}
    for m, name in names.items():
        if m not in totals:
            continue
        calls, macs, sparse = totals[m]
        kind = _kind(m)
        row_macs = _per_example(macs, batch_size)
        rows.append(
            {
                "name": name,
                "type": type(m).__name__,
                "kind": kind,
                "calls": calls,
                "macs": row_macs,
                "flops": 2 * row_macs,
                "sparse_macs": _per_example(sparse, batch_size),
            }
        )
        by_kind[kind] = by_kind.get(kind, 0) + macs
    total_macs = _per_example(sum(t[1] for t in totals.values()), batch_size)
    if uncounted:
        logger.debug("count_flops: not counted: %s", ", ".join(sorted(uncounted)))
    functional = (counter.get_total_flops() - inside["flops"]) // 2
    if functional:
        logger.debug("count_flops: %d MACs in functional calls, not in macs", functional)
    return {
        "macs": total_macs,
        "flops": 2 * total_macs,
        "sparse_macs": _per_example(sum(t[2] for t in totals.values()), batch_size),
        "macs_by_kind": {k: _per_example(v, batch_size) for k, v in by_kind.items()},
        "functional_macs": _per_example(functional, batch_size),
        "batch_size": batch_size,
        "uncounted": sorted(uncounted),
        "layers": rows,
    }


def _count_call(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> tuple[int, int] | None:
    """(dense MACs, sparse MACs) of one call over its whole batch, or None if not counted."""
    if is_attention(mod):
        return attention_call_macs(mod, inputs, output)
    if isinstance(mod, _CONV + (nn.Linear,)):
        weight = mod.weight
        out_units = weight.shape[0]
        positions = output.numel() // out_units  # batch x spatial positions (x rows for Linear)
    elif isinstance(mod, _CONV_T):
        weight = mod.weight
        positions = inputs[0].numel() // weight.shape[0]  # weight is (in, out / groups, *k)
    elif isinstance(mod, _BN):
        n = inputs[0].numel()
        return n, n
    else:
        return None
    nnz = int(torch.count_nonzero(weight.detach()))
    return positions * weight.numel(), positions * nnz


def _counted(mod: nn.Module) -> bool:
    return isinstance(mod, _COUNTED) or is_attention(mod)


def _kind(mod: nn.Module) -> str:
    if is_attention(mod):
        return "attention"
    if isinstance(mod, _CONV):
        return "conv"
    if isinstance(mod, _CONV_T):
        return "conv_transpose"
    if isinstance(mod, nn.Linear):
        return "linear"
    return "batchnorm"


def _per_example(total: int, batch_size: int) -> int | float:
    q, r = divmod(total, batch_size)
    return q if r == 0 else total / batch_size


def _as_args(example_input: Any) -> tuple[Any, ...]:
    if isinstance(example_input, tuple | list):
        return tuple(example_input)
    return (example_input,)


def _infer_batch_size(args: tuple[Any, ...]) -> int:
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.dim() == 0:
                raise ConfigError("cannot infer the batch size from a 0-d tensor; pass batch_size=")
            return int(a.shape[0])
    raise ConfigError(
        "example_input holds no tensor to infer the batch size from; pass batch_size="
    )


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode and restore every submodule's own flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training
