"""Validation metrics of a fitted model at its posterior point estimate.

>>> import torch, torch.nn as nn
>>> from bayesprune import sparsify
>>> from bayesprune.priors import HALO
>>> from bayesprune.guides import MAP
>>> from bayesprune.data import Split
>>> net = sparsify(nn.Linear(3, 2), HALO(), layers=nn.Linear)
>>> sorted(evaluate(net, MAP(net), Split(torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))))
['accuracy', 'nll']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bayesprune.data.batches import LoaderBatches, is_loader
from bayesprune.data.dataset import Split
from bayesprune.errors import DataError
from bayesprune.guides.base import Guide
from bayesprune.inference.distributed import Replicas
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.likelihoods import Categorical


@torch.inference_mode()
def evaluate(
    net: BayesianNet,
    guide: Guide,
    data: Split | tuple[Tensor, Tensor] | Iterable[Any],
    *,
    batch_size: int = 2048,
    replicas: Replicas | None = None,
) -> dict[str, float]:
    """Accuracy and per-example negative log-likelihood (classification) or RMSE
    (regression) of the network run with ``guide.point()`` in eval mode.

    :param data: a :class:`~bayesprune.data.Split`, an ``(x, y)`` pair or a loader of
        ``(x, y)`` batches. A loader with a ``DistributedSampler`` under data parallelism
        is scored in parts and the sums are added over the processes (``replicas``).
    """
    point = guide.point()
    if isinstance(data, (tuple, list)) and len(data) == 2 and not is_loader(data):
        data = Split(torch.as_tensor(data[0]), torch.as_tensor(data[1]))
    if isinstance(data, Split):
        batches: Iterable[tuple[Tensor, Tensor]] = [(data.x, data.y)]
        sharded = False
    else:
        src = LoaderBatches(data, device=net.device, who="evaluate", split="validation")
        batches, sharded = src.epoch(0, seed=0), src.sharded
    sums = torch.zeros(3, dtype=torch.float64, device=net.device)  # n, hits|sq. err., nll
    classify = isinstance(net.likelihood, Categorical)
    for x, y in batches:
        x, y = x.to(net.device), y.to(net.device)
        out = net.predict(point, x, batch_size=batch_size)
        if classify:
            hits = (out.argmax(-1) == y).sum()
            nll = F.cross_entropy(out, y, reduction="sum")
        else:
            out = out.squeeze(-1) if out.dim() > 1 and out.shape[-1] == 1 else out
            hits = (out - y).square().sum()
            nll = -net.likelihood.log_prob(out, y)
        sums += torch.stack([hits.new_tensor(y.shape[0]), hits, nll]).double()
    if sharded and replicas is not None and replicas.world > 1:
        sums = replicas.mean(sums) * replicas.world
    n, hits, nll = sums.tolist()
    if n == 0:
        raise DataError("evaluate: no examples to score")
    if classify:
        return {"accuracy": hits / n, "nll": nll / n}
    return {"rmse": (hits / n) ** 0.5, "nll": nll / n}
