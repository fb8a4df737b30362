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

import torch
import torch.nn.functional as F

from bayesprune.data.dataset import Split
from bayesprune.guides.base import Guide
from bayesprune.nn.bayesian_net import BayesianNet
from bayesprune.nn.likelihoods import Categorical


@torch.inference_mode()
def evaluate(
    net: BayesianNet, guide: Guide, split: Split, *, batch_size: int = 2048
) -> dict[str, float]:
    """Accuracy and per-example negative log-likelihood (classification) or RMSE
    (regression) of the network run with ``guide.point()`` in eval mode."""
    out = net.predict(guide.point(), split.x, batch_size=batch_size)
    if isinstance(net.likelihood, Categorical):
        acc = (out.argmax(-1) == split.y).float().mean()
        nll = F.cross_entropy(out, split.y)
        return {"accuracy": float(acc), "nll": float(nll)}
    out = out.squeeze(-1) if out.dim() > 1 and out.shape[-1] == 1 else out
    rmse = (out - split.y).square().mean().sqrt()
    nll = -net.likelihood.log_prob(out, split.y) / split.y.shape[0]
    return {"rmse": float(rmse), "nll": float(nll)}
