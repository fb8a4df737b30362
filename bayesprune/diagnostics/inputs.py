"""Checking what :func:`bayesprune.diagnose` is given; every error names the argument.

>>> import torch
>>> from bayesprune.data import synthetic_classification
>>> x, y, split = resolve_data(synthetic_classification(8, 4, 2, input_shape=(3,)))
>>> split, tuple(x.shape)
('test', (2, 3))
>>> resolve_data([1, 2])
Traceback (most recent call last):
...
bayesprune.errors.UnsupportedError: diagnose: data must be an (x, y) pair of tensors, a bayesprune.data.Split, a Dataset or a DataLoader, got list
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor

from bayesprune.data import Dataset, Split
from bayesprune.data.batches import LoaderBatches, is_loader
from bayesprune.errors import ConfigError, DataError, UnsupportedError

WHO = "diagnose"


def resolve_data(data: Any, limit: int | None = None) -> tuple[Tensor, Tensor, str]:
    """``(x, y, split name)``: a Dataset's test split if it has one, else val, else train;
    ``"given"`` for an ``(x, y)`` pair, a Split or a loader. A loader's batches (in its own
    order) are gathered in memory, up to ``limit`` examples -- the draws' log-likelihoods
    are held per example anyway.

    :raises TypeError: for anything else.
    :raises ValueError: when ``y`` does not have one target per input, or there are no examples.
    """
    if isinstance(data, Dataset):
        for name in ("test", "val", "train"):
            part = getattr(data, name)
            if part is not None and len(part) > 0:
                x, y, split = part.x, part.y, name
                break
        else:
            raise DataError(f"{WHO}: data (a Dataset) has no split with examples")
    elif isinstance(data, Split):
        x, y, split = data.x, data.y, "given"
    elif (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        (x, y), split = data, "given"
    elif is_loader(data):
        x, y, split = *_gather(LoaderBatches(data, who=WHO, split="given"), limit), "given"
    else:
        raise UnsupportedError(
            f"{WHO}: data must be an (x, y) pair of tensors, a bayesprune.data.Split, a "
            f"Dataset or a DataLoader, got {type(data).__name__}"
        )
    if x.dim() == 0 or y.dim() == 0 or y.shape[0] != x.shape[0]:
        raise DataError(
            f"{WHO}: y must hold one target per input: x has shape {tuple(x.shape)}, "
            f"y has shape {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        raise DataError(f"{WHO}: data has no examples")
    return x, y, split


def _gather(source: LoaderBatches, limit: int | None) -> tuple[Tensor, Tensor]:
    xs, ys, n = [], [], 0
    for x, y in source.epoch(0, seed=0):
        xs.append(x)
        ys.append(y)
        n += x.shape[0]
        if limit is not None and n >= limit:
            break
    return torch.cat(xs), torch.cat(ys)


def check_int(name: str, value: Any, low: int, *, optional: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer ``>= low``."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        extra = " or None" if optional else ""
        raise ConfigError(f"{WHO}: {name} must be an integer >= {low}{extra}, got {value!r}")
