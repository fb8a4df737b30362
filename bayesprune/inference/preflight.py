"""What :func:`bayesprune.fit` checks before its first step (and before any checkpoint is
touched): the data source, non-finite data, and that the network takes the inputs and the
likelihood the targets -- each error naming the culprit.

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MAP
>>> net = sparsify(nn.Linear(3, 2), HALO())
>>> src = training_source((torch.randn(8, 3), torch.zeros(8).long()), batch_size=4,
...                       device=torch.device("cpu"))
>>> src.n_data, len(src)
(8, 2)
>>> check_network(net, MAP(net), torch.randn(2, 4), torch.zeros(2).long())
Traceback (most recent call last):
...
bayesprune.errors.DataError: fit: the network cannot take the training inputs: a batch of shape (2, 4) ...
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bayesprune.data.batches import LoaderBatches, TensorBatches, is_loader
from bayesprune.data.dataset import Dataset, Split
from bayesprune.errors import DataError, UnsupportedError
from bayesprune.guides.base import Guide
from bayesprune.inference.distributed import Replicas
from bayesprune.nn.bayesian_net import BayesianNet


def training_source(
    data: Any,
    *,
    batch_size: int,
    device: torch.device,
    replicas: Replicas | None = None,
    n_data: int | None = None,
) -> TensorBatches | LoaderBatches:
    """The fit's batches: in-memory tensors (a ``Dataset``'s train split or an ``(x, y)``
    pair) or a loader; checked for non-finite values (tensors: all; loaders: the first
    batch) and structure."""
    rep = replicas or Replicas()
    if isinstance(data, Dataset):
        split = data.train
    elif is_loader(data):
        src = LoaderBatches(data, n_data=n_data, device=device, rank=rep.rank, world=rep.world)
        src.n_data  # noqa: B018 -- raises when the size is unknown
        check_split("train", *src.first())
        return src
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        try:
            split = Split(torch.as_tensor(data[0]), torch.as_tensor(data[1]))
        except (TypeError, ValueError, RuntimeError) as e:
            raise UnsupportedError(f"fit: data must be an (x, y) pair of tensors: {e}") from None
    elif hasattr(data, "__next__"):
        raise UnsupportedError(
            f"fit: data is a {type(data).__name__}, an iterator that would be used up after "
            "one epoch; pass the DataLoader (or another re-iterable) itself"
        )
    else:
        raise UnsupportedError(
            "fit: data must be a bayesprune Dataset, an (x, y) pair of tensors or a "
            f"DataLoader of (x, y) batches, got {type(data).__name__}"
        )
    if n_data is not None and n_data != len(split):
        raise DataError(f"fit: n_data={n_data} but the training tensors hold {len(split)} rows")
    check_split("train", split.x, split.y)
    return TensorBatches(split, batch_size, device=device, rank=rep.rank, world=rep.world)


def validation_data(data: Any, val: Any) -> Any:
    """What each epoch is scored on: ``val`` if given, else the ``Dataset``'s val split."""
    if val is None:
        val = data.val if isinstance(data, Dataset) else None
        if val is None:
            return None
    if isinstance(val, Split):
        check_split("val", val.x, val.y)
        return val
    if is_loader(val):
        return val
    if isinstance(val, (tuple, list)) and len(val) == 2:
        split = Split(torch.as_tensor(val[0]), torch.as_tensor(val[1]))
        check_split("val", split.x, split.y)
        return split
    raise UnsupportedError(
        "fit: val must be a Split, an (x, y) pair or a DataLoader of (x, y) batches, got "
        f"{type(val).__name__}"
    )


def check_split(name: str, x: Tensor, y: Tensor) -> None:
    """Non-empty, finite inputs and targets (a host sync: before training only)."""
    if x.shape[0] == 0:
        raise DataError(f"fit: the {name} split is empty")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise DataError(f"fit: the {name} split has NaN/Inf inputs in {bad} examples")
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        raise DataError(f"fit: the {name} split has NaN/Inf targets")


def check_network(
    net: BayesianNet, guide: Guide, x: Tensor, y: Tensor, split: str = "training"
) -> None:
    """The network takes a batch of inputs and the likelihood takes its targets (``split``
    names them in the error)."""
    with torch.no_grad():
        try:
            out = net.predict(guide.point(), x[:2])
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            first = next((m for m in net.module.modules() if hasattr(m, "weight")), None)
            expects = f"; its first layer is {first}" if first is not None else ""
            raise DataError(
                f"fit: the network cannot take the {split} inputs: a batch of shape "
                f"{tuple(x[:2].shape)} fails with {type(e).__name__}: {e}{expects}"
            ) from None
    try:
        net.likelihood.check_targets(y, out.shape[-1])
    except DataError as e:
        raise DataError(f"fit: the {split} targets: {e}") from None
