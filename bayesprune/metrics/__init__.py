"""Honest size, compute and speed of plain (extracted) networks.

- :func:`count_parameters`: stored and nonzero parameters, per layer.
- :func:`count_flops`: dense and sparse multiply-accumulates per example.
- :func:`measure_latency`, :func:`compare_latency`, :func:`paired_latency`: wall time per
  forward (the last two interleave two networks).
- :func:`summarize`: all of the above in one JSON-ready dict.

Sparse MACs are what an ideal sparse kernel would do; real speed-ups come
from physically smaller layers, which is why latency is measured, not derived.

>>> import torch
>>> from torch import nn
>>> s = summarize(nn.Linear(4, 2), torch.zeros(1, 4), measure=False)
>>> s["params"], s["macs"], s["flops"]
(10, 8, 16)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bayesprune.errors import ConfigError
from bayesprune.metrics.flops import _as_args, count_flops
from bayesprune.metrics.latency import compare_latency, measure_latency, paired_latency
from bayesprune.metrics.params import count_parameters, format_table, layer_table

__all__ = [
    "compare_latency",
    "count_flops",
    "count_parameters",
    "format_table",
    "layer_table",
    "measure_latency",
    "paired_latency",
    "summarize",
]


def summarize(
    module: nn.Module,
    example_input: Any,
    *,
    latency_batches: Sequence[int] = (1, 256),
    measure: bool = True,
    device: str | torch.device | None = None,
    **latency_options: Any,
) -> dict[str, Any]:
    """Parameters, MACs and (optionally) latency of ``module`` in one dict.

    :param module: the network.
    :param example_input: a batch (tensor or tuple of positional arguments);
        MACs are per example. For each latency batch size ``b`` the examples
        are cycled along dim 0 to make a batch of ``b``.
    :param latency_batches: batch sizes at which to measure latency.
    :param measure: if false, skip latency (``"latency"`` is then ``[]``).
    :param device: passed to :func:`measure_latency`.
    :param latency_options: other keywords for :func:`measure_latency`
        (``repeats``, ``warmup``, ``threads``, ``min_time``).
    :returns: ``params``, ``nonzeros``, ``density``, ``macs``, ``flops``
        (``2 * macs``), ``sparse_macs``, ``macs_by_kind`` and ``latency``: a
        list with one :func:`measure_latency` result per batch size (each
        carries its ``batch_size``), without the raw ``samples``.

    >>> import torch
    >>> from torch import nn
    >>> s = summarize(nn.Linear(4, 2), torch.zeros(3, 4), latency_batches=(1, 2), repeats=2)
    >>> [r["batch_size"] for r in s["latency"]]
    [1, 2]
    """
    params = count_parameters(module)
    flops = count_flops(module, example_input)
    latency = []
    if measure:
        for b in latency_batches:
            stats = measure_latency(
                module, _batch_of(example_input, b), device=device, **latency_options
            )
            stats.pop("samples")
            latency.append(stats)
    return {
        "params": params["params"],
        "nonzeros": params["nonzeros"],
        "density": params["density"],
        "macs": flops["macs"],
        "flops": flops["flops"],
        "sparse_macs": flops["sparse_macs"],
        "macs_by_kind": flops["macs_by_kind"],
        "latency": latency,
    }


def _batch_of(example_input: Any, batch_size: int) -> Any:
    """Cycle the examples of every tensor argument along dim 0 to ``batch_size`` rows."""
    if batch_size < 1:
        raise ConfigError(f"latency batch sizes must be >= 1, got {batch_size}")

    def resize(x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[0] == 0:
            return x
        reps = math.ceil(batch_size / x.shape[0])
        return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch_size].contiguous()

    args = _as_args(example_input)
    if isinstance(example_input, tuple | list):
        return tuple(resize(a) for a in args)
    return resize(example_input)
